"""Tests of miue.data: the real Fashion-MNIST and digits data, and synthetic files of every format
written here into tmp_path (idx, CIFAR pickles incl. a malicious one, ImageFolder, .npz, .mat)."""

import gzip
import os
import pickle

import numpy as np
import pytest

from miue.data import loaders as D
from miue.data import DatasetError, ImageData, class_balanced_subset, load_dataset

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"
has_debian_fmnist = os.path.isfile(os.path.join(DEBIAN_FMNIST, "train-images-idx3-ubyte.gz"))


def _check_invariants(d: ImageData):
    assert isinstance(d.images, np.ndarray) and d.images.dtype == np.uint8 and d.images.ndim == 4
    assert d.images.flags["C_CONTIGUOUS"]
    assert d.labels.dtype == np.int64 and d.labels.shape == (len(d.images),)
    assert len(d) == len(d.images)
    assert 0 <= d.labels.min() and d.labels.max() < d.num_classes == len(d.classes)
    assert d.shape == d.images.shape[1:] and d.channels == d.images.shape[1] and d.image_size == d.images.shape[2]


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not has_debian_fmnist, reason=f"Fashion-MNIST not installed at {DEBIAN_FMNIST} "
                    "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_debian(monkeypatch):
    monkeypatch.delenv("MIUE_DATA", raising=False)
    assert D.fashion_mnist_dir() == DEBIAN_FMNIST
    train = load_dataset("fashion-mnist")
    _check_invariants(train)
    assert train.images.shape == (60000, 1, 28, 28) and train.name == "fashion-mnist/train"
    assert np.array_equal(np.bincount(train.labels), np.full(10, 6000))
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert train.images.max() == 255 and train.images.min() == 0
    test = load_dataset("fmnist", "test")
    assert test.images.shape == (10000, 1, 28, 28) and test.name == "fashion-mnist/test"
    assert np.array_equal(np.bincount(test.labels), np.full(10, 1000))


def test_fashion_mnist_dir_env(tmp_path, monkeypatch):
    """$MIUE_DATA/fashion-mnist wins when it holds idx files; otherwise it is not used."""
    monkeypatch.setenv("MIUE_DATA", str(tmp_path))
    (tmp_path / "fashion-mnist").mkdir()
    _write_idx_pair(tmp_path / "fashion-mnist", "train", np.zeros((2, 4, 4), np.uint8), np.array([0, 9]))
    assert D.fashion_mnist_dir() == str(tmp_path / "fashion-mnist")
    d = load_dataset("fashion_mnist")
    assert d.images.shape == (2, 1, 4, 4) and d.classes[9] == "Ankle boot"
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", str(tmp_path / "nowhere"))
    monkeypatch.setenv("MIUE_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        D.fashion_mnist_dir()


def test_digits():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    for d in (train, test):
        _check_invariants(d)
        assert d.shape == (1, 8, 8) and d.channels == 1 and d.num_classes == 10
        assert d.images.min() == 0 and d.images.max() == 255
    assert len(train) == 1437 and len(test) == 360
    # Stratified: every class is split about 80/20.
    ratio = np.bincount(test.labels) / (np.bincount(train.labels) + np.bincount(test.labels))
    assert np.all(np.abs(ratio - 0.2) < 0.02)
    # Values are round(v * 255 / 16) of the 0..16 originals.
    assert set(np.unique(train.images)) <= {round(v * 255 / 16) for v in range(17)}
    again = load_dataset("digits")
    assert np.array_equal(again.images, train.images) and np.array_equal(again.labels, train.labels)


# --------------------------------------------------------------------------- idx


def _idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x0800 | arr.ndim
    return magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape) + arr.astype(np.uint8).tobytes()


def _write_idx_pair(directory, split, images, labels, gz=False):
    prefix = "train" if split == "train" else "t10k"
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        path = os.path.join(directory, f"{prefix}-{kind}-ubyte" + (".gz" if gz else ""))
        with (gzip.open if gz else open)(path, "wb") as f:
            f.write(_idx_bytes(np.asarray(arr)))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    x_tr, y_tr = rng.integers(0, 256, (7, 5, 6), dtype=np.uint8), np.array([0, 1, 2, 3, 4, 5, 2])
    x_te, y_te = rng.integers(0, 256, (3, 5, 6), dtype=np.uint8), np.array([1, 0, 2])
    _write_idx_pair(tmp_path, "train", x_tr, y_tr, gz)
    _write_idx_pair(tmp_path, "test", x_te, y_te, gz)
    train, test = load_dataset(str(tmp_path)), load_dataset(str(tmp_path), "test")
    _check_invariants(train)
    assert np.array_equal(train.images[:, 0], x_tr) and np.array_equal(train.labels, y_tr)
    assert np.array_equal(test.images[:, 0], x_te) and np.array_equal(test.labels, y_te)
    assert train.classes == ["0", "1", "2", "3", "4", "5"]
    # The named loader with root= uses the dataset's own class names.
    mnist = load_dataset("mnist", root=str(tmp_path))
    assert mnist.classes == [str(i) for i in range(10)] and mnist.name == "mnist/train"
    fm = load_dataset("fashion-mnist", "test", root=str(tmp_path))
    assert fm.classes[0] == "T-shirt/top" and np.array_equal(fm.labels, y_te)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path, gz):
    _write_idx_pair(tmp_path, "train", np.zeros((4, 3, 3), np.uint8), np.arange(4), gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    raw = _idx_bytes(np.zeros((4, 3, 3), np.uint8))[:-5]  # 5 pixels short of what the header says
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DatasetError, match="truncated") as e:
        load_dataset(str(tmp_path))
    assert str(path) in str(e.value)


def test_idx_cut_gzip_stream(tmp_path):
    _write_idx_pair(tmp_path, "train", np.zeros((4, 3, 3), np.uint8), np.arange(4), gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-6])  # the compressed stream itself is cut
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset(str(tmp_path))


def test_idx_truncated_header(tmp_path):
    _write_idx_pair(tmp_path, "train", np.zeros((4, 3, 3), np.uint8), np.arange(4))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + b"\x00\x00")
    with pytest.raises(DatasetError, match="truncated.*header"):
        load_dataset(str(tmp_path))


def test_idx_bad_magic_and_mismatch(tmp_path):
    _write_idx_pair(tmp_path, "train", np.zeros((4, 3, 3), np.uint8), np.arange(4))
    # Labels file swapped for an images file: wrong magic number.
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros((4, 3, 3), np.uint8)))
    with pytest.raises(DatasetError, match="magic number 2051, expected 2049"):
        load_dataset(str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(5)))
    with pytest.raises(DatasetError, match="labels has 5 entries but images has 4"):
        load_dataset(str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([0, 1, 2, 12])))
    with pytest.raises(DatasetError, match=r"must lie in \[0, classes=10\)"):
        load_dataset("mnist", root=str(tmp_path))
    # Extra bytes after the data are malformed, too.
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(4)) + b"xx")
    with pytest.raises(DatasetError, match="malformed"):
        load_dataset(str(tmp_path))


def test_idx_missing_split_file(tmp_path):
    _write_idx_pair(tmp_path, "train", np.zeros((2, 3, 3), np.uint8), np.arange(2))
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte"):
        load_dataset(str(tmp_path), "test")


# --------------------------------------------------------------------------- CIFAR


def _dump(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _fake_cifar10(directory, n_batches=2, per_batch=4):
    directory.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    batches = []
    for i in range(n_batches):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        # Alternate protocols: 2 is what Python-2 era files look like, 5 uses numpy's _frombuffer.
        _dump(directory / f"data_batch_{i + 1}", {b"batch_label": b"x", b"data": x, b"labels": y},
              protocol=2 if i % 2 == 0 else 5)
        batches.append((x, y))
    x_te = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    _dump(directory / "test_batch", {b"data": x_te, b"labels": [3, 9, 0]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(directory / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return batches, x_te


def test_cifar10_round_trip(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    batches, x_te = _fake_cifar10(d)
    for src in (load_dataset(str(d)), load_dataset("cifar10", root=str(tmp_path)), load_dataset("cifar-10", root=str(d))):
        _check_invariants(src)
        assert src.images.shape == (8, 3, 32, 32) and src.classes[1] == "automobile"
        assert np.array_equal(src.images.reshape(8, -1), np.concatenate([b[0] for b in batches]))
        assert src.labels.tolist() == batches[0][1] + batches[1][1]
    test = load_dataset(str(d), "test")
    assert test.labels.tolist() == [3, 9, 0] and np.array_equal(test.images.reshape(3, -1), x_te)
    # Channel-first layout: the first 1024 bytes of a row are the red plane.
    assert np.array_equal(test.images[0, 0].ravel(), x_te[0, :1024])


def test_cifar100_round_trip(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    x = np.random.default_rng(2).integers(0, 256, (5, 3072), dtype=np.uint8)
    _dump(d / "train", {b"data": x, b"fine_labels": [0, 99, 5, 5, 42], b"coarse_labels": [0, 1, 2, 3, 4]})
    _dump(d / "test", {b"data": x[:2], b"fine_labels": [1, 2]})
    _dump(d / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []})
    train = load_dataset(str(d))
    assert train.num_classes == 100 and train.labels.tolist() == [0, 99, 5, 5, 42] and train.classes[99] == "c99"
    assert np.array_equal(train.images.reshape(5, -1), x)
    assert len(load_dataset("cifar100", "test", root=str(tmp_path))) == 2


def test_cifar_numpy1_pickle(tmp_path):
    """Real CIFAR files were written by numpy 1 (globals under numpy.core, protocol 2)."""
    d = tmp_path / "c"
    _fake_cifar10(d, n_batches=1)
    x = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    raw = pickle.dumps({b"data": x, b"labels": [4, 7]}, protocol=2)
    assert b"numpy._core.multiarray" in raw  # numpy 2 spelling; rewrite it as numpy 1 did
    (d / "test_batch").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    t = load_dataset(str(d), "test")
    assert t.labels.tolist() == [4, 7] and np.array_equal(t.images.reshape(2, -1), x)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_Payload, _EvalPayload])
def test_cifar_malicious_pickle_does_not_run(tmp_path, payload):
    d = tmp_path / "cifar"
    _fake_cifar10(d)
    marker = tmp_path / "pwned"
    _dump(d / "data_batch_1", {b"data": payload(str(marker)), b"labels": [0]})
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        load_dataset(str(d))
    assert not marker.exists()
    # Same payload hidden in the meta file.
    _fake_cifar10(d)
    _dump(d / "batches.meta", {b"label_names": [payload(str(marker))]})
    with pytest.raises(DatasetError, match="refusing"):
        load_dataset(str(d), "test")
    assert not marker.exists()


def test_cifar_malformed(tmp_path):
    d = tmp_path / "c"
    _fake_cifar10(d)
    _dump(d / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetError, match=r"\(N, 3072\)"):
        load_dataset(str(d), "test")
    _dump(d / "test_batch", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DatasetError, match="missing key b'labels'"):
        load_dataset(str(d), "test")
    _dump(d / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]})
    with pytest.raises(DatasetError, match="labels has 3 entries but images has 2"):
        load_dataset(str(d), "test")
    (d / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:50])
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset(str(d), "test")
    os.remove(d / "batches.meta")
    with pytest.raises(DatasetError, match="batches.meta"):
        load_dataset(str(d))


# --------------------------------------------------------------------------- ImageFolder


def _png(path, size=(6, 5), color=(10, 20, 30), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def test_image_folder(tmp_path):
    for c, color in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
        for i in range(3):
            _png(tmp_path / "flat" / c / f"{i}.png", color=color)
    d = load_dataset(str(tmp_path / "flat"))
    _check_invariants(d)
    assert d.shape == (3, 5, 6) and d.classes == ["cat", "dog"] and d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.images[0, :, 0, 0].tolist() == [200, 0, 0] and d.images[5, :, 0, 0].tolist() == [0, 0, 200]
    with pytest.raises(DatasetError, match="only a 'train' split"):
        load_dataset(str(tmp_path / "flat"), "test")
    # Grayscale everywhere -> one channel.
    for c in ("a", "b"):
        for i in range(3):
            _png(tmp_path / "gray" / c / f"{i}.png", color=(77,), mode="L")
    g = load_dataset(str(tmp_path / "gray"))
    assert g.shape == (1, 5, 6) and np.all(g.images == 77)


def test_image_folder_splits(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c in ("x", "y"):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png")
    assert len(load_dataset(str(tmp_path))) == 6
    test = load_dataset(str(tmp_path), "test")
    assert len(test) == 4 and test.classes == ["x", "y"] and test.name.endswith("/test")


def test_image_folder_errors(tmp_path):
    for c in ("a", "b"):
        for i in range(3):
            _png(tmp_path / c / f"{i}.png")
    _png(tmp_path / "b" / "odd.png", size=(7, 5))
    with pytest.raises(DatasetError, match="odd.png.*7x5") as e:
        load_dataset(str(tmp_path))
    assert "same size" in str(e.value)
    os.remove(tmp_path / "b" / "odd.png")
    (tmp_path / "b" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png"):
        load_dataset(str(tmp_path))


# --------------------------------------------------------------------------- .npz


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "float", "NHWC1"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)  # N, C, H, W
    labels = np.array([0, 2, 1, 2])
    if layout == "NHW":
        ref = ref[:, :1]
        x = ref[:, 0]
    elif layout == "NHWC":
        x = ref.transpose(0, 2, 3, 1)
    elif layout == "NHWC1":
        ref = ref[:, :1]
        x = ref.transpose(0, 2, 3, 1)
    elif layout == "NCHW":
        x = ref
    else:
        x = ref.astype(np.float32) / 255.0
    path = tmp_path / "d.npz"
    np.savez(path, images=x, labels=labels)
    d = load_dataset(str(path))
    _check_invariants(d)
    assert np.array_equal(d.images, ref) and d.labels.tolist() == [0, 2, 1, 2] and d.classes == ["0", "1", "2"]


def test_npz_split_keys_and_classes(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((3, 4, 4), np.uint8), y_train=np.array([0, 1, 1]),
             x_test=np.full((2, 4, 4), 0.5), y_test=np.array([1, 0]), classes=np.array(["neg", "pos"]))
    tr, te = load_dataset(str(path)), load_dataset(str(path), "test")
    assert len(tr) == 3 and len(te) == 2 and te.classes == ["neg", "pos"] and np.all(te.images == 128)


@pytest.mark.parametrize("arrays,match", [
    ({"images": np.zeros((3, 4, 4), np.uint8)}, "expected arrays 'images' and 'labels'"),
    ({"pixels": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(3, int)}, "expected arrays"),
    ({"images": np.zeros((3, 4), np.uint8), "labels": np.zeros(3, int)}, "shape"),
    ({"images": np.zeros((3, 4, 4), np.complex64), "labels": np.zeros(3, int)}, "dtype"),
    ({"images": np.full((3, 4, 4), 1.5), "labels": np.zeros(3, int)}, r"\[0, 1\]"),
    ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(3)}, "integers"),
    ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0, -1, 0])}, ">= 0"),
    ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(2, int)}, "labels has 2 entries but images has 3"),
    ({"images": np.zeros((0, 4, 4), np.uint8), "labels": np.zeros(0, int)}, "empty"),
    ({"images": np.zeros((3, 5, 6, 7), np.uint8), "labels": np.zeros(3, int)}, "channel axis"),
])
def test_npz_invalid(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset(str(path))
    assert str(path) in str(e.value)


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="x.npz"):
        load_dataset(str(tmp_path / "x.npz"))
    np.savez(tmp_path / "obj.npz", images=np.array([object()] * 3), labels=np.zeros(3, int))
    with pytest.raises(DatasetError, match="obj.npz"):
        load_dataset(str(tmp_path / "obj.npz"))


# --------------------------------------------------------------------------- SVHN .mat


def test_svhn_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    x = np.random.default_rng(4).integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    scipy_io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [9], [10], [3]], np.uint8)})
    for d in (load_dataset("svhn", root=str(tmp_path)), load_dataset(str(tmp_path / "train_32x32.mat"))):
        _check_invariants(d)
        assert d.shape == (3, 32, 32) and d.labels.tolist() == [0, 1, 9, 0, 3] and d.classes[0] == "0"
        assert np.array_equal(d.images[2], x[:, :, :, 2].transpose(2, 0, 1))
    with pytest.raises(DatasetError, match="test_32x32.mat"):
        load_dataset("svhn", "test", root=str(tmp_path))
    scipy_io.savemat(tmp_path / "bad.mat", {"X": x})
    with pytest.raises(DatasetError, match="missing variable 'y'"):
        load_dataset(str(tmp_path / "bad.mat"))


# --------------------------------------------------------------------------- paths, names, splits


def test_missing_and_unknown(tmp_path, monkeypatch):
    missing = str(tmp_path / "nope")
    with pytest.raises(DatasetError, match="nope.*no such file"):
        load_dataset(missing)
    with pytest.raises(DatasetError, match="nope"):
        load_dataset("cifar10", root=missing)
    with pytest.raises(DatasetError, match="nope"):
        load_dataset("mnist", root=missing)
    monkeypatch.delenv("MIUE_DATA", raising=False)
    with pytest.raises(DatasetError, match="root="):
        load_dataset("cifar100")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the dataset format"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_dataset(str(tmp_path / "f.txt"))
    assert issubclass(DatasetError, ValueError)


@pytest.mark.parametrize("split", ["val", "Train", "", None])
def test_bad_split(split):
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split)


# --------------------------------------------------------------------------- class_balanced_subset


def _toy(n_per=(5, 7, 4)):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per)])
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1).repeat(2, 2).repeat(2, 3)
    return ImageData(images, labels, ["a", "b", "c"], "toy/train")


def test_class_balanced_subset():
    data = _toy()
    s = class_balanced_subset(data, 3, seed=0)
    _check_invariants(s)
    assert np.array_equal(np.bincount(s.labels, minlength=3), [3, 3, 3]) and s.classes == data.classes
    # Images still match their labels (the index is encoded in the pixel value).
    assert np.array_equal(data.labels[s.images[:, 0, 0, 0]], s.labels)
    assert len(set(s.images[:, 0, 0, 0].tolist())) == 9
    s2 = class_balanced_subset(data, 3, seed=0)
    assert np.array_equal(s.images, s2.images) and np.array_equal(s.labels, s2.labels)
    s3 = class_balanced_subset(data, 3, seed=1)
    assert not np.array_equal(s.images, s3.images)
    # The order is shuffled, not grouped by class.
    assert any(not np.array_equal(class_balanced_subset(data, 4, seed=k).labels, np.sort(class_balanced_subset(data, 4, seed=k).labels))
               for k in range(5))
    with pytest.raises(ValueError, match="per_class=5.*'c'"):
        class_balanced_subset(data, 5)
    with pytest.raises(ValueError, match="per_class"):
        class_balanced_subset(data, 0)


def test_class_balanced_subset_digits():
    d = load_dataset("digits", "test")
    s = class_balanced_subset(d, 30, seed=7)
    assert len(s) == 300 and np.all(np.bincount(s.labels) == 30)
    # Every selected image is one of the originals with its own label.
    rows = {img.tobytes(): lab for img, lab in zip(d.images, d.labels)}
    assert all(rows[img.tobytes()] == lab for img, lab in zip(s.images, s.labels))


def test_image_data_validates():
    with pytest.raises(ValueError, match="uint8"):
        ImageData(np.zeros((2, 1, 3, 3), np.float32), np.zeros(2, int), ["a"], "x")
    with pytest.raises(ValueError, match="labels"):
        ImageData(np.zeros((2, 1, 3, 3), np.uint8), np.array([0, 1]), ["a"], "x")
