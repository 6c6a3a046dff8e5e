"""Image folders as users hold them (issue 26): scanning, decoding at any size, the on-disk cache,
the mirrored release with its manifest, native-size release, and ``miue protect``.

Every folder is generated here in tmp_path. Stated conversions: EXIF orientation applied
(Pillow's exif_transpose), grayscale output only when every image is grayscale, palette and
alpha images converted with ``convert("RGB")`` (alpha dropped, as torchvision's ImageFolder)."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from miue.data import DatasetError, class_balanced_subset, load_dataset
from miue.data.folder import Preprocess, cached_folder, decode_folder, scan_folder
from miue.data.release import MANIFEST, MARKER, native_delta, release_paths, write_release

pytestmark = pytest.mark.usefixtures("epoch_rounds")  # crafting tests: one epoch per round (conftest)

RNG = np.random.default_rng(0)


def _img(path, size, mode="RGB", fmt=None, seed=0, exif_orientation=None):
    rng = np.random.default_rng(seed)
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    elif mode == "RGBA":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    elif mode == "P":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P", palette=Image.ADAPTIVE)
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    kw = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    im.save(path, format=fmt, **kw)
    return path


def _photos(root, n_per_class=4, seed=0):
    """Mixed sizes (40..90 px), JPEG and PNG (upper-case extensions too), nested sub-folders,
    spaces and non-ASCII names, plus a text file and an empty class folder."""
    rng = np.random.default_rng(seed)
    made = []
    for c in ("bird", "cat", "dög"):
        for i in range(n_per_class):
            sub = root / c / ("sub folder" if i % 3 == 0 else "") / ("deep" if i % 4 == 3 else "")
            ext, fmt = ((".JPG", "JPEG"), (".png", "PNG"), (".jpeg", "JPEG"), (".PNG", "PNG"))[i % 4]
            name = f"ïmg {i}{ext}"
            size = tuple(int(v) for v in rng.integers(40, 91, 2))
            made.append(_img(sub / name, size, fmt=fmt, seed=int(rng.integers(1 << 30))))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return made


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _arr(path):
    a = np.asarray(Image.open(path))
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


# --------------------------------------------------------------------------- scanning and decoding


def test_scan_lists_nested_files_and_skips_with_reasons(tmp_path):
    made = _photos(tmp_path / "photos")
    (tmp_path / "photos" / "bird" / ".DS_Store").write_bytes(b"\0")
    scan = scan_folder(tmp_path / "photos")
    assert scan.classes == ["bird", "cat", "dög"]
    assert sorted(scan.files) == sorted(os.path.relpath(p, tmp_path / "photos").replace(os.sep, "/") for p in made)
    reasons = {s["path"]: s["reason"] for s in scan.skipped}
    assert reasons["cat/notes.txt"].startswith("not an image")
    assert reasons["empty/"].startswith("empty class folder")
    assert reasons["bird/.DS_Store"] == "hidden"
    assert all(scan.classes[lab] == f.split("/")[0] for f, lab in zip(scan.files, scan.labels))


def test_mixed_sizes_refused_with_hint_then_resized(tmp_path):
    _photos(tmp_path / "p")
    with pytest.raises(DatasetError, match="differs from") as e:
        load_dataset(str(tmp_path / "p"))
    assert "--image-size" in str(e.value)
    d = load_dataset(str(tmp_path / "p"), image_size=24)
    assert d.images.shape == (12, 3, 24, 24) and d.classes == ["bird", "cat", "dög"]
    assert len(d.source["files"]) == 12 and len(d.source["sizes"]) == 12
    assert {s["path"] for s in d.source["skipped"]} == {"cat/notes.txt", "empty/"}


@pytest.mark.parametrize("resize", ["crop", "stretch"])
def test_resize_rule_is_torchvision_resize_and_center_crop(tmp_path, resize):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    p = _img(tmp_path / "d" / "a" / "x.png", (61, 37), seed=3)
    _img(tmp_path / "d" / "b" / "y.png", (20, 50), seed=4)
    d = decode_folder(tmp_path / "d", image_size=16, resize=resize)
    im = Image.open(p).convert("RGB")
    if resize == "crop":
        ref = TF.center_crop(TF.resize(im, 16, interpolation=InterpolationMode.BILINEAR, antialias=True), [16, 16])
    else:
        ref = TF.resize(im, [16, 16], interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert np.array_equal(d.images[0], np.asarray(ref).transpose(2, 0, 1))


def test_modes_converted(tmp_path):
    """Grayscale only if all are; palette and RGBA become RGB via convert("RGB")."""
    root = tmp_path / "m"
    paths = [_img(root / "a" / "gray.png", (9, 7), mode="L", seed=1), _img(root / "a" / "pal.png", (9, 7), mode="P", seed=2),
             _img(root / "b" / "rgba.png", (9, 7), mode="RGBA", seed=3), _img(root / "b" / "rgb.png", (9, 7), seed=4)]
    d = load_dataset(str(root))
    assert d.images.shape == (4, 3, 7, 9)
    assert sorted(d.source["files"]) == sorted(os.path.relpath(p, root) for p in paths)
    for i, rel in enumerate(d.source["files"]):
        ref = np.asarray(Image.open(root / rel).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(d.images[i], ref), rel
    gray = tmp_path / "g"
    _img(gray / "a" / "1.png", (5, 5), mode="L", seed=5)
    _img(gray / "b" / "2.png", (5, 5), mode="L", seed=6)
    assert load_dataset(str(gray)).images.shape == (2, 1, 5, 5)


def test_exif_rotation_applied(tmp_path):
    from PIL import ImageOps

    p = _img(tmp_path / "e" / "a" / "rot.jpg", (30, 12), fmt="JPEG", seed=7, exif_orientation=6)
    _img(tmp_path / "e" / "b" / "plain.jpg", (12, 30), fmt="JPEG", seed=8)
    d = load_dataset(str(tmp_path / "e"))  # rotated 90°: 12 wide, 30 high, like the other
    assert d.images.shape == (2, 3, 30, 12) and d.source["sizes"][0] == [12, 30]
    ref = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(d.images[0], ref)


def test_bad_files_stop_or_are_skipped(tmp_path):
    root = tmp_path / "b"
    for i in range(3):
        _img(root / "a" / f"{i}.png", (8, 8), seed=i)
        _img(root / "b" / f"{i}.png", (8, 8), seed=10 + i)
    (root / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = _img(tmp_path / "tmp.jpg", (8, 8), fmt="JPEG")
    (root / "b" / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    with pytest.raises(DatasetError, match="corrupt.png") as e:
        load_dataset(str(root))
    assert "--skip-bad" in str(e.value)
    d = load_dataset(str(root), skip_bad=True)
    assert len(d) == 6
    skipped = {s["path"] for s in d.source["skipped"]}
    assert skipped == {"a/corrupt.png", "b/truncated.jpg"}
    c = cached_folder(str(root), str(tmp_path / "cache"), skip_bad=True, workers=0)
    assert np.array_equal(np.asarray(c.images), d.images) and {s["path"] for s in c.source["skipped"]} == skipped
    with pytest.raises(DatasetError, match="truncated.jpg|corrupt.png"):
        cached_folder(str(root), str(tmp_path / "cache2"), workers=0)
    assert not [f for f in os.listdir(tmp_path / "cache2") if f.endswith(".u8")]  # nothing half-built kept


def test_symlinked_class_folder_and_loop(tmp_path):
    real = tmp_path / "elsewhere" / "cats"
    for i in range(2):
        _img(real / f"{i}.png", (6, 6), seed=i)
        _img(tmp_path / "d" / "dogs" / f"{i}.png", (6, 6), seed=5 + i)
    os.symlink(real, tmp_path / "d" / "cats")
    os.symlink(tmp_path / "d" / "dogs", tmp_path / "d" / "dogs" / "loop")
    scan = scan_folder(tmp_path / "d")
    assert scan.classes == ["cats", "dogs"] and scan.files.count("cats/0.png") == 1 and len(scan.files) == 4
    assert any("loop" in s["reason"] for s in scan.skipped)


def test_folder_options_need_a_folder(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", image_size=8)
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="image_size.*image folders"):
        load_dataset(str(tmp_path / "x.npz"), image_size=8)
    with pytest.raises(ValueError, match="image_size"):
        Preprocess(image_size=0)
    with pytest.raises(ValueError, match="resize"):
        Preprocess(image_size=4, resize="squash")


def test_subset_keeps_sources(tmp_path):
    _photos(tmp_path / "p", n_per_class=4)
    d = load_dataset(str(tmp_path / "p"), image_size=16)
    s = class_balanced_subset(d, 2, seed=1)
    for img, f in zip(s.images, s.source["files"]):
        assert np.array_equal(img, d.images[d.source["files"].index(f)])


# --------------------------------------------------------------------------- the on-disk cache


def test_cache_is_memory_mapped_checksummed_and_reused(tmp_path):
    _photos(tmp_path / "p")
    mem = load_dataset(str(tmp_path / "p"), image_size=20)
    c1 = cached_folder(str(tmp_path / "p"), str(tmp_path / "c"), image_size=20, workers=2)
    assert isinstance(c1.images, np.memmap) or isinstance(getattr(c1.images, "base", None), np.memmap)
    assert np.array_equal(np.asarray(c1.images), mem.images) and c1.source["files"] == mem.source["files"]
    assert not c1.cache["reused"]
    c2 = cached_folder(str(tmp_path / "p"), str(tmp_path / "c"), image_size=20, workers=0)
    assert c2.cache["reused"] and np.array_equal(np.asarray(c2.images), mem.images)
    # a corrupted cache is detected by its checksum and rebuilt
    with open(c1.cache["path"], "r+b") as fh:
        fh.seek(5)
        fh.write(b"\xff\x00\xff")
    c3 = cached_folder(str(tmp_path / "p"), str(tmp_path / "c"), image_size=20, workers=0)
    assert not c3.cache["reused"] and np.array_equal(np.asarray(c3.images), mem.images)
    # another preprocessing, or a changed source file, is another cache
    c4 = cached_folder(str(tmp_path / "p"), str(tmp_path / "c"), image_size=12, workers=0)
    assert c4.cache["path"] != c1.cache["path"] and c4.images.shape[2:] == (12, 12)


# --------------------------------------------------------------------------- the mirrored release


def _craft_folder(data, tmp_path, **kw):
    import miue

    kw = {"preset": "cnn", "rounds": 1, "pgd_steps": 2, "device": "cpu", "progress": False, **kw}
    return miue.craft_fast(data.images, data.labels, num_classes=data.num_classes, **kw)


def _crafted_photos(tmp_path, n_per_class=4):
    """The mixed photo folder, loaded at 16 px, and a tiny MI-UE craft of it."""
    src = tmp_path / "photos"
    _photos(src, n_per_class=n_per_class)
    data = load_dataset(str(src), image_size=16)
    return src, data, _craft_folder(data, tmp_path)


def _check_manifest(dst, src, n):
    m = json.load(open(os.path.join(dst, MANIFEST)))
    assert m["n_files"] == n == len(m["files"])
    on_disk = sorted(os.path.relpath(os.path.join(dp, f), dst).replace(os.sep, "/")
                     for dp, _, fs in os.walk(dst) for f in fs if f != MANIFEST)
    assert on_disk == sorted(r["released"] for r in m["files"])  # exactly the listed files, nothing half-written
    for r in m["files"]:
        assert r["released"] == os.path.splitext(r["source"])[0] + ".png"
        assert _sha(os.path.join(dst, r["released"])) == r["sha256_released"]
        assert _sha(os.path.join(src, r["source"])) == r["sha256_source"]
        assert r["class"] == r["source"].split("/")[0]
    return m


def test_release_mirrors_names_with_manifest(tmp_path):
    src, data, res = _crafted_photos(tmp_path)
    dst = str(tmp_path / "released")
    write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config)
    m = _check_manifest(dst, str(src), 12)
    assert m["eps"] == pytest.approx(8 / 255) and len(m["config_hash"]) == 16 and m["config"]["objective"] == "miue"
    assert {s["path"] for s in m["skipped"]} == {"cat/notes.txt", "empty/"} and m["n_skipped"] == 2
    for i, r in enumerate(m["files"]):
        assert np.array_equal(_arr(os.path.join(dst, r["released"])), res.images[i].numpy())
        assert r["released_size"] == [16, 16] and r["original_size"] == data.source["sizes"][i]
    # refusals: into the source tree, over an existing release; overwrite replaces it
    with pytest.raises(ValueError, match="source tree"):
        write_release(str(src / "out"), data.source, res.images, res.labels, data.classes, eps=8 / 255, config={})
    with pytest.raises(FileExistsError, match="already holds a release"):
        write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config)
    write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config,
                  overwrite=True)
    _check_manifest(dst, str(src), 12)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already holds files"):
        write_release(str(other), data.source, res.images, res.labels, data.classes, eps=8 / 255, config={})


def test_release_name_collisions():
    assert release_paths(["a/x.jpg", "a/x.PNG", "a/y.jpg", "b/x.jpg"]) == ["a/x.jpg.png", "a/x.PNG.png", "a/y.png",
                                                                          "b/x.png"]


def test_release_interrupted_then_rerun(tmp_path):
    src, data, res = _crafted_photos(tmp_path)
    dst = str(tmp_path / "rel")

    def stop(i):
        if i == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config,
                      on_file=stop)
    assert not os.path.exists(os.path.join(dst, MANIFEST)) and os.path.exists(os.path.join(dst, MARKER))
    # a stale temporary as a SIGKILL during a PNG write leaves it
    open(os.path.join(dst, "bird", ".tmp-999-ïmg 1.png"), "wb").write(b"half")
    with pytest.raises(FileExistsError, match="another run"):  # another configuration may not continue it
        write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config={"x": 1})
    write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config)
    _check_manifest(dst, str(src), 12)
    assert not os.path.exists(os.path.join(dst, MARKER))


@pytest.mark.slow
def test_release_killed_by_sigkill_then_rerun(tmp_path):
    """A real SIGKILL in the middle of the release (a child process), then the same release again."""
    import signal
    import time

    src, data, res = _crafted_photos(tmp_path, n_per_class=10)
    res.save(str(tmp_path / "r.npz"))
    dst = str(tmp_path / "rel")
    script = f"""
import json, time, torch
from miue.craft import CraftResult
from miue.data import load_dataset
from miue.data.release import write_release
d = load_dataset({str(src)!r}, image_size=16)
r = CraftResult.load({str(tmp_path / 'r.npz')!r})
write_release({dst!r}, d.source, r.images, r.labels, d.classes, eps=8/255, config=r.config,
              on_file=lambda i: time.sleep(0.2))
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while time.time() < deadline:
        n = sum(len(fs) for _, _, fs in os.walk(dst)) if os.path.isdir(dst) else 0
        if n >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(dst, MANIFEST))
    write_release(dst, data.source, res.images, res.labels, data.classes, eps=8 / 255, config=res.config)
    _check_manifest(dst, str(src), 30)


# --------------------------------------------------------------------------- native size


@given(w0=st.integers(1, 70), h0=st.integers(1, 70), n=st.integers(1, 24),
       resize=st.sampled_from(["crop", "stretch"]), c=st.sampled_from([1, 3]))
def test_native_delta_shape_and_bound(w0, h0, n, resize, c):
    eps = 8 / 255
    d = (torch.rand(c, n, n, dtype=torch.float64) * 2 - 1).float() * eps
    d[:, 0, 0] = eps
    out = native_delta(d, w0, h0, Preprocess(n, resize))
    assert out.shape == (c, h0, w0) and out.abs().max().item() <= eps + 1e-7


@pytest.mark.parametrize("resize", ["crop", "stretch"])
def test_native_size_release_within_eps_of_original(tmp_path, resize):
    src = tmp_path / "photos"
    made = _photos(src)
    _img(src / "cat" / "rot.jpg", (50, 30), fmt="JPEG", seed=9, exif_orientation=8)
    data = load_dataset(str(src), image_size=16, resize=resize)
    eps = 6 / 255
    res = _craft_folder(data, tmp_path, eps=eps, pgd_steps=4, alpha_start=4 / 255, alpha_end=4 / 255)
    dst = str(tmp_path / "native")
    write_release(dst, data.source, res.images, res.labels, data.classes, eps=eps, config=res.config,
                  delta=res.delta, native_size=True)
    m = _check_manifest(dst, str(src), len(made) + 1)
    from PIL import ImageOps

    moved = 0
    for r in m["files"]:
        out = _arr(os.path.join(dst, r["released"])).astype(int)
        orig = np.asarray(ImageOps.exif_transpose(Image.open(os.path.join(src, r["source"]))).convert("RGB"))
        orig = orig.transpose(2, 0, 1).astype(int)
        assert out.shape == orig.shape and list(out.shape[:0:-1]) == r["original_size"] == r["released_size"]
        assert np.abs(out - orig).max() <= 6
        moved += int((out != orig).any())
    assert moved == len(m["files"])


# --------------------------------------------------------------------------- disk storage and protect


def test_disk_storage_equals_memory(tmp_path):
    import miue

    x = torch.randint(0, 256, (40, 1, 10, 10), dtype=torch.uint8)
    y = torch.arange(40) % 4
    kw = {"preset": "cnn", "rounds": 2, "pgd_steps": 2, "device": "cpu", "progress": False, "seed": 3}
    a = miue.craft_fast(x, y, **kw)
    b = miue.craft_fast(x, y, storage="disk", checkpoint_dir=str(tmp_path / "ck"), **kw)
    assert torch.equal(a.delta, b.delta) and torch.equal(a.images, b.images)
    assert os.path.exists(tmp_path / "ck" / "delta.bin")
    with pytest.raises(ValueError, match="checkpoint_dir"):
        miue.craft_fast(x, y, storage="disk", **kw)


def test_protect_cli_end_to_end(tmp_path, capsys):
    from miue.cli import main

    src = tmp_path / "photos"
    _photos(src)
    dst = str(tmp_path / "out")
    argv = ["protect", str(src), dst, "--image-size", "16", "--preset", "cnn", "--rounds", "1", "--pgd-steps", "1",
            "--train-steps", "2", "--quiet", "--workers", "0", "--result", str(tmp_path / "r.npz")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "protected 12 images of 3 classes" in out and "manifest.json" in out and "2 source paths skipped" in out
    m = _check_manifest(dst, str(src), 12)
    assert os.path.isdir(dst + ".miue-work") and not os.path.exists(os.path.join(dst, ".miue-work"))
    from miue.craft import CraftResult

    r = CraftResult.load(str(tmp_path / "r.npz"))
    for i, rec in enumerate(m["files"]):
        assert np.array_equal(_arr(os.path.join(dst, rec["released"])), r.images[i].numpy())
    # rerun: refused (a release is there) before any crafting; the work dir inside SRC is refused too
    assert main(argv) == 1 and "already holds a release" in capsys.readouterr().err
    assert main(argv[:3] + ["--work-dir", str(src / "w")] + argv[3:]) == 1
    assert "source tree" in capsys.readouterr().err
    # mixed sizes without --image-size: the clear refusal with its hint
    assert main(["protect", str(src), str(tmp_path / "o2"), "--quiet"]) == 1
    assert "--image-size" in capsys.readouterr().err


def test_craft_png_dir_mirrors_folder(tmp_path, capsys):
    from miue.cli import main

    src = tmp_path / "photos"
    _photos(src)
    out = str(tmp_path / "png")
    assert main(["craft", str(src), "--out", str(tmp_path / "p.npz"), "--png-dir", out, "--image-size", "16",
                 "--preset", "cnn", "--rounds", "1", "--pgd-steps", "1", "--quiet"]) == 0
    _check_manifest(out, str(src), 12)
    assert main(["craft", str(src), "--out", str(tmp_path / "p.npz"), "--native-size", "--image-size", "16",
                 "--preset", "cnn", "--rounds", "1", "--quiet"]) == 1
    assert "--png-dir" in capsys.readouterr().err


def test_craft_folder_with_checkpoint_dir_and_png_dir_is_protect(tmp_path, monkeypatch):
    """`miue craft FOLDER --checkpoint-dir D --png-dir P` is `protect(FOLDER, P, work_dir=D)`:
    the same call, and the same released files as `miue protect` with that work folder."""
    import miue.data.protect
    from miue.cli import main

    src = tmp_path / "photos"
    _photos(src)
    common = ["--image-size", "16", "--preset", "cnn", "--rounds", "1", "--pgd-steps", "1", "--quiet"]
    calls = []
    real = miue.data.protect.protect
    monkeypatch.setattr(miue.data.protect, "protect", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    ck, out = tmp_path / "ck", str(tmp_path / "png")
    assert main(["craft", str(src), "--out", str(tmp_path / "a.npz"), "--checkpoint-dir", str(ck), "--png-dir", out,
                 *common]) == 0
    (args, kw), = calls
    assert args == (str(src), out) and kw["work_dir"] == kw["checkpoint_dir"] == str(ck)
    assert (ck / "delta.bin").exists()  # the checkpoints stay in the given directory
    monkeypatch.undo()
    assert main(["protect", str(src), str(tmp_path / "png2"), "--work-dir", str(tmp_path / "w2"), *common]) == 0
    m1, m2 = (json.load(open(os.path.join(d, MANIFEST))) for d in (out, str(tmp_path / "png2")))
    assert [r["sha256_released"] for r in m1["files"]] == [r["sha256_released"] for r in m2["files"]]
    with pytest.raises(ValueError, match="result_path"):  # no release and no result: nothing would be kept
        real(str(src), None, work_dir=str(ck))


def test_craft_folder_with_checkpoint_dir_uses_the_disk_cache(tmp_path):
    from miue.cli import main
    from miue.craft import CraftResult

    src = tmp_path / "photos"
    _photos(src)
    ck = tmp_path / "ck"
    args = ["craft", str(src), "--image-size", "16", "--preset", "cnn", "--rounds", "1", "--pgd-steps", "1", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a.npz"), "--checkpoint-dir", str(ck)]) == 0
    assert [f for f in os.listdir(ck / "cache") if f.endswith(".u8")] and (ck / "delta.bin").exists()
    assert main(args + ["--out", str(tmp_path / "b.npz")]) == 0  # in memory: the same result
    a, b = CraftResult.load(str(tmp_path / "a.npz")), CraftResult.load(str(tmp_path / "b.npz"))
    assert torch.equal(a.images, b.images) and torch.equal(a.delta, b.delta)
