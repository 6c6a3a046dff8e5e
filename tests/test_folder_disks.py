"""What real disks hold (issue 47): file names that are not UTF-8, colliding names, images of more
than 8 bits, and write stages that run out of space or meet a failing or read-only device. Each
failure is injected at the stage it names, must give one clear StorageError naming the stage, the
folder and the bytes, must leave nothing half-written under a final name, and the rerun must
resume to the same release."""

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

import miue.data.release as release_mod
from miue._io import StorageError
from miue._names import printable_name
from miue.data.folder import Preprocess, cached_folder, decode_one, to_8bit
from miue.data.release import MANIFEST, MARKER, release_paths, write_release

pytestmark = pytest.mark.usefixtures("epoch_rounds")  # crafting tests: one epoch per round (conftest)


def _tree(root, n=3, size=12, seed=0):
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(root, c, f"{i}.png"))


def _craft(data):
    import miue

    return miue.craft_fast(data.images, data.labels, num_classes=data.num_classes, preset="cnn", rounds=1,
                           pgd_steps=1, device="cpu", progress=False)


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


# ----------------------------------------------------------------------------- names


def test_name_that_is_not_utf8_is_released_escaped_with_its_bytes(tmp_path):
    src = str(tmp_path / "src")
    _tree(src)
    raw = os.fsencode(os.path.join(src, "a")) + b"/caf\xe9\xff.png"
    try:
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(os.fsdecode(raw))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    data = cached_folder(src, str(tmp_path / "cache"))
    res = _craft(data)
    dst = str(tmp_path / "rel")
    m = write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config)
    rec = next(r for r in m["files"] if r["source"].startswith("a/caf"))
    assert rec["source"] == "a/caf%E9%FF.png" and rec["released"] == "a/caf%E9%FF.png"
    assert bytes.fromhex(rec["source_bytes_hex"]) == b"a/caf\xe9\xff.png"  # lossless
    assert os.path.exists(os.path.join(dst, "a", "caf%E9%FF.png"))
    text = open(os.path.join(dst, MANIFEST), encoding="utf-8").read()  # valid UTF-8 JSON
    assert json.loads(text)["n_files"] == 7
    assert printable_name("ok ünïcode.png") == "ok ünïcode.png"


def test_collisions_are_listed_with_their_sources():
    assert release_paths(["a/x.jpg", "a/x.PNG", "a/y.jpg", "b/x.jpg"]) == ["a/x.jpg.png", "a/x.PNG.png", "a/y.png",
                                                                          "b/x.png"]
    with pytest.raises(ValueError, match=r"'a/x.jpg' and 'a/x.jpg.png' -> 'a/x.jpg.png'"):
        release_paths(["a/x.jpg", "a/x.png", "a/x.jpg.png"])
    # differing only in case, or in Unicode normalisation (NFC vs NFD): one name on macOS and Windows
    with pytest.raises(ValueError, match=r"2 group\(s\).*'a/Photo.png' and 'a/photo.png'.*'a/\u00e9.png' and "
                                         r"'a/e\u0301.png'"):
        release_paths(["a/Photo.png", "a/photo.png", "a/\u00e9.png", "a/e\u0301.png"])


# ----------------------------------------------------------------------------- bit depth


def test_to_8bit_scales_each_mode_as_documented():
    def run(arr, mode):
        im = Image.fromarray(arr)
        assert im.mode == mode
        return np.asarray(to_8bit(im)).tolist()

    assert run(np.array([[0, 257, 65535, 1000]], np.uint16), "I;16") == [[0, 1, 255, 4]]  # round(v / 257)
    assert run(np.array([[0, 32768, 65535]], np.int32), "I") == [[0, 128, 255]]  # 16-bit values in mode I
    assert run(np.array([[-5, 0, 5]], np.int32), "I") == [[0, 128, 255]]  # outside 0..65535: min..max
    assert run(np.array([[0.0, 0.5, 1.0]], np.float32), "F") == [[0, 128, 255]]  # [0, 1]: round(v * 255)
    assert run(np.array([[-1.0, 0.0, 3.0]], np.float32), "F") == [[0, 64, 255]]  # outside: min..max
    assert run(np.array([[7, 7]], np.int32), "I") == [[0, 0]]
    im = Image.fromarray(np.array([[1, 2]], np.uint8), "L")
    assert to_8bit(im) is im  # 8-bit modes as they are


def test_16_bit_png_keeps_its_content(tmp_path):
    rng = np.random.default_rng(1)
    a16 = rng.integers(0, 65536, (20, 20), dtype=np.uint16)
    path = str(tmp_path / "deep.png")
    Image.fromarray(a16).save(path)
    assert Image.open(path).mode.startswith("I")
    got = decode_one(path, gray=True, pre=Preprocess())
    assert np.array_equal(got[0], np.rint(a16 / 257).astype(np.uint8))  # not white: mean 127, not 253
    rgb = decode_one(path, gray=False, pre=Preprocess())  # in a colour set: the same gray on three channels
    assert np.array_equal(rgb[1], got[0])


# ----------------------------------------------------------------------------- full disks


def test_decoded_cache_on_a_full_disk_is_a_clear_error_then_resumes(tmp_path, monkeypatch):
    src = str(tmp_path / "src")
    _tree(src)
    cache = str(tmp_path / "cache")
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    with pytest.raises(StorageError, match=r"the decoded cache: writing to .*cache.* failed .*MiB are needed"):
        cached_folder(src, cache)
    assert not [f for f in os.listdir(cache) if f.endswith(".partial") or f.endswith(".u8")]
    monkeypatch.undo()
    monkeypatch.setattr("miue._io._free", lambda d: 1000)  # the check before any byte is written
    with pytest.raises(StorageError, match=r"the decoded cache: .* has 0.0 MiB free"):
        cached_folder(src, cache)
    monkeypatch.undo()
    assert len(cached_folder(src, cache).labels) == 6


def test_release_on_a_full_disk_is_a_clear_error_then_resumes(tmp_path, monkeypatch):
    src = str(tmp_path / "src")
    _tree(src)
    data = cached_folder(src, str(tmp_path / "cache"))
    res = _craft(data)
    clean = str(tmp_path / "clean")
    want = write_release(clean, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config)
    dst = str(tmp_path / "rel")
    real, calls = release_mod._png, []

    def png_then_full(path, chw):
        calls.append(path)
        if len(calls) == 3:  # the third file: half of it written, then the disk is full
            tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
            open(tmp, "wb").write(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, chw)

    monkeypatch.setattr(release_mod, "_png", png_then_full)
    with pytest.raises(StorageError, match=r"the release: writing to .*rel.* failed \(No space left on device\)"):
        write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config)
    assert not os.path.exists(os.path.join(dst, MANIFEST)) and os.path.exists(os.path.join(dst, MARKER))
    monkeypatch.undo()
    got = write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config)
    assert [r["sha256_released"] for r in got["files"]] == [r["sha256_released"] for r in want["files"]]
    assert not [f for _, _, fs in os.walk(dst) for f in fs if f.startswith(".tmp-")]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_manifest_write_failure_is_a_clear_error_then_resumes(tmp_path, monkeypatch, err):
    src = str(tmp_path / "src")
    _tree(src, n=2)
    data = cached_folder(src, str(tmp_path / "cache"))
    res = _craft(data)
    dst = str(tmp_path / "rel")

    real = release_mod.atomic_write

    def fail_on_manifest(path, fn):
        if path.endswith(MANIFEST):
            raise OSError(err, os.strerror(err))
        return real(path, fn)

    monkeypatch.setattr(release_mod, "atomic_write", fail_on_manifest)
    with pytest.raises(StorageError, match=r"the release's manifest: writing to .*rel"):
        write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config)
    assert not os.path.exists(os.path.join(dst, MANIFEST))
    monkeypatch.undo()
    m = write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config)
    assert m["n_files"] == 4 and os.path.exists(os.path.join(dst, MANIFEST))


def test_release_refused_before_writing_when_the_space_is_not_there(tmp_path, monkeypatch):
    src = str(tmp_path / "src")
    _tree(src, n=2)
    data = cached_folder(src, str(tmp_path / "cache"))
    res = _craft(data)
    monkeypatch.setattr("miue._io._free", lambda d: 10)
    with pytest.raises(StorageError, match=r"the release: .* MiB are needed"):
        write_release(str(tmp_path / "rel"), data.source, res.images, res.labels, data.classes, eps=8 / 255,
                      config=res.config)
    assert not [f for _, _, fs in os.walk(tmp_path / "rel") for f in fs if f.endswith(".png")]


def test_checkpoint_write_failure_is_a_clear_error(tmp_path, monkeypatch):
    import miue
    import miue.craft.checkpoint as ck

    x = np.random.default_rng(0).integers(0, 256, (16, 1, 8, 8), dtype=np.uint8)
    y = np.arange(16) % 2
    monkeypatch.setattr(ck, "atomic_save", _enospc)
    with pytest.raises(StorageError, match=r"the checkpoint: writing to .*ckpt.* failed"):
        miue.craft_fast(x, y, preset="cnn", rounds=1, pgd_steps=1, device="cpu", progress=False,
                        checkpoint_dir=str(tmp_path / "ckpt"))


def test_result_file_write_failure_is_a_clear_error(tmp_path, monkeypatch):
    import torch

    from miue._io import write_result_file

    d = torch.zeros(4, 1, 4, 4)
    args = (d, torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.arange(4), {"eps": 0.03}, [])
    monkeypatch.setattr("miue._io._free", lambda d: 100)
    with pytest.raises(StorageError, match=r"the result file: .* MiB are needed"):
        write_result_file(str(tmp_path / "r.npz"), *args)
    monkeypatch.undo()
    monkeypatch.setattr("miue._io.atomic_write", _enospc)
    with pytest.raises(StorageError, match=r"the result file: writing to .* failed"):
        write_result_file(str(tmp_path / "r.npz"), *args)
    assert not os.path.exists(tmp_path / "r.npz")


# ----------------------------------------------------------------------------- one route


def test_craft_of_a_root_with_train_and_test_records_the_root_and_evaluates(tmp_path, capsys):
    from miue.cli import main

    root = tmp_path / "root"
    _tree(str(root / "train"), n=4, size=16)
    _tree(str(root / "test"), n=2, size=16, seed=1)
    out = str(tmp_path / "r.npz")
    common = ["--image-size", "16", "--preset", "cnn", "--rounds", "1", "--pgd-steps", "1", "--quiet"]
    assert main(["craft", str(root), "--out", out, *common]) == 0
    from miue.craft import CraftResult

    cfg = CraftResult.load(out).config
    assert cfg["dataset"] == os.path.abspath(root) and cfg["preprocess"]["image_size"] == 16
    assert main(["craft", str(root), "--out", str(tmp_path / "r2.npz"), "--checkpoint-dir", str(tmp_path / "ck"),
                 *common]) == 0
    cfg2 = CraftResult.load(str(tmp_path / "r2.npz")).config
    same = ("dataset", "preprocess", "classes", "objective", "preset")
    assert {k: cfg[k] for k in same} == {k: cfg2[k] for k in same}  # one route, one configuration
    capsys.readouterr()
    assert main(["evaluate", out, "--preset", "quick", "--epochs", "1", "--quiet"]) == 0


def test_one_run_protects_a_folder_of_everything_odd(tmp_path, capsys):
    """A name that is not UTF-8, a 16-bit PNG, a 32-bit float TIFF, a palette image, a text file
    and a hidden file in one tree: one `miue protect` run releases or lists every file."""
    from miue.cli import main

    src = tmp_path / "src"
    _tree(str(src), n=3, size=16)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 65536, (16, 16), dtype=np.uint16)).save(src / "b" / "deep.png")
    Image.fromarray(rng.random((16, 16), dtype=np.float32)).save(src / "b" / "float.tif")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("P").save(src / "a" / "pal.png")
    (src / "a" / "notes.txt").write_text("x")
    (src / "a" / ".DS_Store").write_bytes(b"\0")
    odd = True
    try:
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(os.fsdecode(os.fsencode(str(src / "a")) + b"/\xff.png"))
    except OSError:
        odd = False
    dst = str(tmp_path / "rel")
    assert main(["protect", str(src), dst, "--preset", "cnn", "--rounds", "1", "--pgd-steps", "1",
                 "--train-steps", "2", "--quiet", "--workers", "0"]) == 0
    m = json.load(open(os.path.join(dst, MANIFEST)))
    listed = {r["source"] for r in m["files"]} | {s["path"] for s in m["skipped"]}
    on_disk = {os.path.relpath(os.path.join(dp, f), src).replace(os.sep, "/")
               for dp, _, fs in os.walk(src) for f in fs}
    assert {printable_name(p) for p in on_disk} == listed  # every file released or listed
    assert m["n_files"] == 6 + 3 + odd
    deep = next(r for r in m["files"] if r["source"] == "b/deep.png")
    assert 100 < np.asarray(Image.open(os.path.join(dst, deep["released"]))).mean() < 155  # not white


def test_craft_of_a_folder_and_protect_record_the_same_configuration(tmp_path):
    from miue.cli import main
    from miue.craft import CraftResult

    src = tmp_path / "src"
    _tree(str(src), n=3, size=16)
    common = ["--image-size", "16", "--preset", "cnn", "--rounds", "1", "--pgd-steps", "1", "--train-steps", "2",
              "--quiet"]
    assert main(["protect", str(src), str(tmp_path / "rel"), "--result", str(tmp_path / "p.npz"), *common]) == 0
    assert main(["craft", str(src), "--out", str(tmp_path / "c.npz"), *common]) == 0
    p, c = (CraftResult.load(str(tmp_path / f)) for f in ("p.npz", "c.npz"))
    assert p.config == c.config
    assert np.array_equal(p.images.numpy(), c.images.numpy())
