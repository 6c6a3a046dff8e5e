"""Dataset loaders: every source becomes an :class:`ImageData` of uint8 ``(N, C, H, W)`` images.

Sources (see :func:`load_dataset`):

* names: ``fashion-mnist`` (Debian's ``dataset-fashion-mnist`` or ``$MIUE_DATA``), ``mnist``,
  ``cifar10``, ``cifar100``, ``svhn`` (read from a local ``root`` in their standard formats) and
  ``digits`` (scikit-learn's bundled 8×8 digits, always available);
* paths: a directory of idx files, a CIFAR python-pickle directory, an ImageFolder tree of class
  sub-folders, a ``.npz`` archive or an SVHN-style ``.mat`` file.

Every loader checks what it reads and reports any problem as a :class:`DatasetError` that names the
file and what was expected; no bare ``KeyError``/``IndexError``/``struct.error`` reaches the caller.
CIFAR batches are pickles: they are read with a restricted unpickler that only rebuilds numpy arrays,
so a malicious file cannot run code.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import zlib
import numpy as np

log = logging.getLogger("miue.data")

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageData",
    "class_balanced_subset",
    "fashion_mnist_dir",
    "load_dataset",
]

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "digits")
_ALIASES = {
    "fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10", "cifar_10": "cifar10", "cifar-100": "cifar100", "cifar_100": "cifar100",
}
_SPLITS = ("train", "test")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_DIGIT_CLASSES = tuple(str(i) for i in range(10))


from miue._imagedata import DatasetError, ImageData, image_layout  # noqa: E402  (defined there for miue.data.folder too)
from miue._labels import label_array  # noqa: E402


# --------------------------------------------------------------------------- shared checks


def _check_labels(labels, n: int, where: str, num_classes: int | None = None) -> np.ndarray:
    """A file's labels as int64 ``(n,)`` under the one label rule (:mod:`miue._labels`), or a
    DatasetError naming the file. A stored (N, 1) or (1, N) vector is a file format's
    layout (MATLAB), flattened here before the rule runs."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and 1 in labels.shape:
        labels = labels.reshape(-1)
    try:
        return label_array(labels, "labels", n=n, of="images", num_classes=num_classes, what="classes")
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: {exc}") from None


def _nonempty(images: np.ndarray, where: str) -> None:
    if images.shape[0] == 0:
        raise DatasetError(f"{where}: the dataset is empty (0 images)")
    if 0 in images.shape[1:]:
        raise DatasetError(f"{where}: images have an empty dimension, shape {images.shape}")


def _numeric_classes(labels: np.ndarray) -> list[str]:
    """Class names "0".."K-1" for data that carries no names (K = max label + 1)."""
    return [str(i) for i in range(int(labels.max()) + 1)]


def _find_file(directory: str, candidates: list[str], what: str) -> str:
    for name in candidates:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise DatasetError(f"{directory}: no {what} file found (expected one of {', '.join(candidates)})")


# --------------------------------------------------------------------------- idx (MNIST family)


def _idx_names(split: str, kind: str) -> list[str]:
    """File names tried for one idx file, e.g. train-images-idx3-ubyte[.gz] / train-images.idx3-ubyte."""
    prefix = "train" if split == "train" else "t10k"
    dims = "idx3" if kind == "images" else "idx1"
    bases = [f"{prefix}-{kind}-{dims}-ubyte", f"{prefix}-{kind}.{dims}-ubyte"]
    return [b + ext for b in bases for ext in ("", ".gz")]


def _read_idx(path: str, magic: int) -> np.ndarray:
    """One idx file of unsigned bytes: check its magic number, header and length."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except EOFError as e:  # a gzip stream cut short
        raise DatasetError(f"{path}: truncated compressed file ({e})") from None
    except (OSError, zlib.error) as e:  # includes gzip.BadGzipFile
        raise DatasetError(f"{path}: cannot read idx file ({e})") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated idx file ({len(raw)} bytes, no magic number)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetError(f"{path}: bad magic number {found}, expected {magic} "
                           f"(idx{ndim} unsigned-byte {'images' if ndim == 3 else 'labels'})")
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated idx file ({len(raw)} bytes, header needs {header})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=object))
    if len(raw) < expected:
        raise DatasetError(f"{path}: truncated idx file: header says {dims} -> {expected} bytes, file has {len(raw)}")
    if len(raw) > expected:
        raise DatasetError(f"{path}: malformed idx file: header says {dims} -> {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _has_idx(directory: str) -> bool:
    names = _idx_names("train", "images") + _idx_names("test", "images")
    return any(os.path.isfile(os.path.join(directory, n)) for n in names)


def _load_idx(directory: str, split: str, name: str, classes=None) -> ImageData:
    if not os.path.isdir(directory):
        raise DatasetError(f"{directory}: no such directory (expected idx files {', '.join(_idx_names(split, 'images')[::2])} ...)")
    img_path = _find_file(directory, _idx_names(split, "images"), f"{split} images idx")
    lab_path = _find_file(directory, _idx_names(split, "labels"), f"{split} labels idx")
    images = _read_idx(img_path, 2051)
    labels = _read_idx(lab_path, 2049)
    _nonempty(images, img_path)
    labels = _check_labels(labels, len(images), lab_path, len(classes) if classes else None)
    return ImageData(images[:, None], labels, list(classes or _numeric_classes(labels)), name)


def fashion_mnist_dir() -> str:
    """Directory of the Fashion-MNIST idx files: ``$MIUE_DATA/fashion-mnist`` if set and present,
    else the Debian package's ``/usr/share/datasets/fashion-mnist``."""
    env = os.environ.get("MIUE_DATA")
    candidates = ([os.path.join(env, "fashion-mnist")] if env else []) + [DEBIAN_FASHION_MNIST]
    for d in candidates:
        if os.path.isdir(d) and _has_idx(d):
            return d
    raise DatasetError(
        f"Fashion-MNIST not found (looked in {', '.join(candidates)}): install it with "
        "`apt-get install dataset-fashion-mnist`, or put the idx files in $MIUE_DATA/fashion-mnist, "
        "or pass root=<directory with train-images-idx3-ubyte.gz ...>")


# --------------------------------------------------------------------------- CIFAR (restricted pickle)


def _allowed_pickle_globals() -> dict:
    """The only globals a CIFAR batch may reference: what numpy needs to rebuild arrays (numpy 1
    writes ``numpy.core``, numpy 2 ``numpy._core``; both names map to the same objects)."""
    import _codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _codecs.encode}  # py2-compatible protocols encode bytes this way
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):  # protocol 5 pickles
            allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global outside :func:`_allowed_pickle_globals` (no code can run)."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_pickle_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DatasetError(f"{self._path}: refusing to unpickle {module}.{name}: a CIFAR batch may "
                               "only contain numpy arrays, lists and dicts") from None


def _load_pickle(path: str) -> dict:
    """A CIFAR pickle as a dict with bytes keys."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except DatasetError:
        raise
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    except Exception as e:  # malformed pickles raise many kinds (UnpicklingError, EOFError, TypeError, ...)
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


def _get(d: dict, key: bytes, path: str):
    if key not in d:
        raise DatasetError(f"{path}: missing key {key!r} (has {sorted(map(repr, d))})")
    return d[key]


def _cifar_names(meta_path: str, key: bytes) -> list[str]:
    names = _get(_load_pickle(meta_path), key, meta_path)
    if not isinstance(names, (list, tuple)) or not names:
        raise DatasetError(f"{meta_path}: {key!r} must be a non-empty list of class names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def _cifar_batch(path: str, label_key: bytes, num_classes: int):
    d = _load_pickle(path)
    data = _get(d, b"data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise DatasetError(f"{path}: {b'data'!r} must be a uint8 array of shape (N, 3072), got "
                           f"{getattr(data, 'dtype', '')} {shape}")
    labels = _get(d, label_key, path)
    try:
        labels = np.asarray(labels)
    except Exception:
        raise DatasetError(f"{path}: {label_key!r} is not a list of integers") from None
    labels = _check_labels(labels, len(data), path, num_classes)
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_root(root: str, sub: str) -> str:
    """Accept either the batches directory itself or its parent (torchvision's layout)."""
    nested = os.path.join(root, sub)
    return nested if os.path.isdir(nested) else root


def _load_cifar(directory: str, split: str, name: str, hundred: bool) -> ImageData:
    if not os.path.isdir(directory):
        files = "train, test, meta" if hundred else "data_batch_1..5, test_batch, batches.meta"
        raise DatasetError(f"{directory}: no such directory (expected a CIFAR-{100 if hundred else 10} "
                           f"python directory with {files})")
    meta = _find_file(directory, ["meta" if hundred else "batches.meta"], "CIFAR meta")
    classes = _cifar_names(meta, b"fine_label_names" if hundred else b"label_names")
    if hundred:
        files = [_find_file(directory, [split], f"CIFAR-100 {split}")]
    elif split == "test":
        files = [_find_file(directory, ["test_batch"], "CIFAR-10 test batch")]
    else:  # data_batch_1, data_batch_2, ... up to the first one missing
        files = [_find_file(directory, ["data_batch_1"], "CIFAR-10 train batch")]
        while os.path.isfile(os.path.join(directory, f"data_batch_{len(files) + 1}")):
            files.append(os.path.join(directory, f"data_batch_{len(files) + 1}"))
    parts = [_cifar_batch(f, b"fine_labels" if hundred else b"labels", len(classes)) for f in files]
    images = np.concatenate([p[0] for p in parts])
    _nonempty(images, directory)
    return ImageData(images, np.concatenate([p[1] for p in parts]), classes, name)


# --------------------------------------------------------------------------- SVHN (.mat)


def _load_svhn_mat(path: str, name: str) -> ImageData:
    """Cropped-digits SVHN: X (H, W, C, N) uint8, y (N, 1) in 1..10 where 10 means digit 0."""
    try:
        import scipy.io
    except ImportError:
        raise DatasetError(f"{path}: reading .mat files needs scipy (pip install scipy)") from None
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file (expected an SVHN .mat file such as train_32x32.mat)")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # MatReadError, ValueError, NotImplementedError (v7.3), OSError ...
        raise DatasetError(f"{path}: cannot read .mat file ({type(e).__name__}: {e})") from None
    for key in ("X", "y"):
        if key not in mat:
            raise DatasetError(f"{path}: missing variable {key!r} (SVHN layout: X (32, 32, 3, N), y (N, 1))")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] not in (1, 3):
        raise DatasetError(f"{path}: X must be uint8 (H, W, C, N) with C in (1, 3), got {x.dtype} {x.shape}")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    _nonempty(images, path)
    labels = _check_labels(y, len(images), path, 11)
    labels[labels == 10] = 0
    return ImageData(images, labels, list(_DIGIT_CLASSES), name)


def _load_svhn(root: str, split: str, name: str) -> ImageData:
    path = root if os.path.isfile(root) else os.path.join(root, f"{split}_32x32.mat")
    return _load_svhn_mat(path, name)


# --------------------------------------------------------------------------- digits (scikit-learn)


def _load_digits(split: str) -> ImageData:
    """scikit-learn's 8×8 digits (values 0..16 scaled to 0..255), stratified 80/20 split, seed 0."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DatasetError("the 'digits' dataset needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    idx = train if split == "train" else test
    return ImageData(images[idx], labels[idx], list(_DIGIT_CLASSES), f"digits/{split}")


# --------------------------------------------------------------------------- .npz arrays


def _to_nchw_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """N×H×W, N×H×W×C (channels-last) or N×C×H×W; uint8, integers in 0..255, or floats in [0, 1]."""
    try:
        layout = image_layout(x.shape, f"{where}: images")  # the one layout rule (miue/_imagedata.py)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    if layout == "nhw":
        x = x[:, None]
    elif layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    _nonempty(x, where)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype != bool and np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise DatasetError(f"{where}: integer images must lie in 0..255, got [{x.min()}, {x.max()}]")
        return np.ascontiguousarray(x, dtype=np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise DatasetError(f"{where}: float images must be finite and lie in [0, 1], got [{x.min()}, {x.max()}]")
        return np.ascontiguousarray(np.rint(x.astype(np.float64) * 255.0).astype(np.uint8))
    raise DatasetError(f"{where}: images must be uint8 or float in [0, 1], got dtype {x.dtype}")


def _load_npz(path: str, split: str, name: str) -> ImageData:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # BadZipFile, OSError, ValueError (pickled data) ...
        raise DatasetError(f"{path}: cannot read .npz archive ({type(e).__name__}: {e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: expected a .npz archive (np.savez), got a single array")
    with archive:
        keys = set(archive.files)
        img_key = next((k for k in (f"x_{split}", "images") if k in keys), None)
        lab_key = next((k for k in (f"y_{split}", "labels") if k in keys), None)
        if img_key is None or lab_key is None:
            raise DatasetError(f"{path}: expected arrays 'images' and 'labels' (or 'x_{split}' and "
                               f"'y_{split}'), found {sorted(keys)}")
        try:
            x, y = archive[img_key], archive[lab_key]
            names = archive["classes"] if "classes" in keys else None
        except Exception as e:  # object arrays (need pickle), corrupt members
            raise DatasetError(f"{path}: cannot read arrays ({type(e).__name__}: {e})") from None
    images = _to_nchw_uint8(x, f"{path}[{img_key!r}]")
    labels = _check_labels(y, len(images), f"{path}[{lab_key!r}]")
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US" or len(names) <= labels.max():
            raise DatasetError(f"{path}: 'classes' must be a 1-D string array with more than "
                               f"{labels.max()} names, got {names.dtype} {names.shape}")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    else:
        classes = _numeric_classes(labels)
    return ImageData(images, labels, classes, name)


# --------------------------------------------------------------------------- ImageFolder


def _class_dirs(directory: str) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _load_image_folder(directory: str, split: str, name: str, image_size=None, resize="crop",
                       skip_bad=False) -> ImageData:
    """Class sub-folders of images (miue.data.folder); ``train/`` and ``test/`` sub-directories are the
    two splits."""
    from miue.data.folder import decode_folder, scan_folder

    scan = scan_folder(image_folder_split(directory, split))
    if scan.root != directory:  # train/ and test/: both splits must have the same classes
        other = scan_folder(image_folder_split(directory, "test" if split == "train" else "train"))
        if scan.classes != other.classes:
            raise DatasetError(f"{directory}: train/ and test/ must hold the same class folders "
                               f"({scan.classes} vs {other.classes})")
    data = decode_folder(scan.root, image_size=image_size, resize=resize, skip_bad=skip_bad, name=name, scan=scan)
    if data.source["skipped"]:
        from miue.data.folder import skipped_summary

        log.warning("%s: %s", scan.root, skipped_summary(data.source["skipped"]))
    return data


# --------------------------------------------------------------------------- entry points


def _env_dir(sub: str) -> str | None:
    env = os.environ.get("MIUE_DATA")
    return os.path.join(env, sub) if env else None


def _load_named(name: str, split: str, root: str | None) -> ImageData:
    label = f"{name}/{split}"
    if name == "digits":
        return _load_digits(split)
    if name == "fashion-mnist":
        return _load_idx(root or fashion_mnist_dir(), split, label, FASHION_MNIST_CLASSES)
    subdir = {"mnist": "mnist", "cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": "svhn"}[name]
    where = root or _env_dir(subdir)
    if where is None:
        raise DatasetError(f"{name}: no local copy configured: pass root=<directory> or set "
                           f"$MIUE_DATA so that $MIUE_DATA/{subdir} holds it")
    where = os.path.expanduser(where)
    if name == "mnist":
        return _load_idx(where, split, label, _DIGIT_CLASSES)
    if name == "svhn":
        return _load_svhn(where, split, label)
    return _load_cifar(_cifar_root(where, subdir), split, label, hundred=name == "cifar100")


def is_image_folder(path: str) -> bool:
    """Whether :func:`load_dataset` reads ``path`` as an image folder (class sub-folders of
    images, optionally under ``train/`` and ``test/``) rather than idx files or CIFAR batches."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path) or _has_idx(path):
        return False
    if any(os.path.isdir(os.path.join(path, sub)) for sub in ("cifar-10-batches-py", "cifar-100-python")):
        return False
    has = lambda f: os.path.isfile(os.path.join(path, f))  # noqa: E731
    if has("data_batch_1") or (has("test_batch") and has("batches.meta")) or (has("meta") and (has("train") or has("test"))):
        return False
    return bool(_class_dirs(path))


def image_folder_split(path: str, split: str = "train") -> str:
    """The folder whose class sub-folders hold ``split`` of the image folder ``path``."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "test")):
        return os.path.join(path, split)
    if split != "train":
        raise DatasetError(f"{path}: an ImageFolder without train/ and test/ sub-directories has "
                           f"only a 'train' split (asked for {split!r})")
    return path


def _load_path(path: str, split: str, folder_opts: dict) -> ImageData:
    label = f"{os.path.basename(os.path.normpath(path))}/{split}"
    if folder_opts and not is_image_folder(path):
        raise ValueError(f"{', '.join(sorted(folder_opts))} only apply to image folders, and {path!r} is not one")
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext == ".npz":
            return _load_npz(path, split, label)
        if ext == ".mat":
            return _load_svhn_mat(path, label)
        raise DatasetError(f"{path}: unsupported file type (expected a .npz or .mat file, or a directory)")
    if _has_idx(path):
        return _load_idx(path, split, label)
    for sub, hundred in (("cifar-10-batches-py", False), ("cifar-100-python", True)):
        if os.path.isdir(os.path.join(path, sub)):
            return _load_cifar(os.path.join(path, sub), split, label, hundred)
    has = lambda f: os.path.isfile(os.path.join(path, f))  # noqa: E731
    if has("data_batch_1") or (has("test_batch") and has("batches.meta")):
        return _load_cifar(path, split, label, hundred=False)
    if has("meta") and (has("train") or has("test")):
        return _load_cifar(path, split, label, hundred=True)
    if _class_dirs(path):
        return _load_image_folder(path, split, label, **folder_opts)
    raise DatasetError(f"{path}: cannot tell the dataset format (expected idx files such as "
                       "train-images-idx3-ubyte.gz, CIFAR batches (data_batch_1 / train + meta), "
                       "class sub-folders of images, a .npz or a .mat file)")


def load_dataset(name_or_path: str, split: str = "train", *, root: str | None = None, image_size: int | None = None,
                 resize: str | None = None, skip_bad: bool = False) -> ImageData:
    """Load a dataset split as uint8 ``(N, C, H, W)`` images and int64 labels.

    ``name_or_path`` is one of :data:`DATASETS` (or an alias such as ``"fmnist"``), read from
    ``root`` when given, else from ``$MIUE_DATA/<dataset dir>`` (Fashion-MNIST also from the Debian
    package); or a path: an idx directory, a CIFAR python directory, an ImageFolder tree, a
    ``.npz`` archive or an SVHN ``.mat`` file. A name wins over a same-named path; ``root`` only
    applies to names. A single ``.npz``/``.mat`` file with one set of arrays is returned whatever
    the split, as it is the split the caller chose.

    Image folders (class sub-folders of images of any size, at any depth; :mod:`miue.data.folder`):
    ``image_size=N`` resizes the shorter side to N and keeps the central N×N (``resize="stretch"``:
    the whole image resized to N×N); without it all images must have one size. ``skip_bad=True``
    leaves out files that cannot be decoded instead of stopping. The result's ``source`` lists
    every image's relative path and original size and the skipped paths. For sets too large for
    memory use :func:`miue.data.folder.cached_folder` (a memory-mapped on-disk cache).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a dataset name or a path, got {type(name_or_path).__name__}")
    key = str(name_or_path).strip().lower()
    key = _ALIASES.get(key, key)
    folder_opts = {}
    if image_size is not None:
        folder_opts["image_size"] = image_size
    if resize is not None:
        folder_opts["resize"] = resize
    if skip_bad:
        folder_opts["skip_bad"] = True
    if key in DATASETS:
        if folder_opts:
            raise ValueError(f"{', '.join(sorted(folder_opts))} only apply to image folders, not to {key!r}")
        return _load_named(key, split, None if root is None else os.fspath(root))
    if root is not None:
        raise ValueError(f"root= only applies to dataset names {DATASETS}, not to a path ({name_or_path!r})")
    path = os.path.expanduser(os.fspath(name_or_path))
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file or directory, and not a dataset name (expected one of "
                           f"{', '.join(DATASETS)}, or a path to idx files, CIFAR batches, an image "
                           "folder, a .npz or a .mat file)")
    return _load_path(path, split, folder_opts)


def class_balanced_subset(data: ImageData, per_class: int, seed: int = 0) -> ImageData:
    """``per_class`` examples of every class: the first of each class after a seeded permutation,
    returned in a seeded shuffled order (deterministic for a given seed)."""
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(data))
    permuted_labels = data.labels[perm]
    chosen = []
    for c in range(data.num_classes):
        members = perm[permuted_labels == c]
        if len(members) < per_class:
            raise ValueError(f"per_class={per_class} exceeds the size of class {c} ({data.classes[c]!r}), "
                             f"which has {len(members)} examples in {data.name}")
        chosen.append(members[:per_class])
    idx = rng.permutation(np.concatenate(chosen))
    source = None
    if data.source is not None:
        source = {**data.source, "files": [data.source["files"][i] for i in idx],
                  "sizes": [data.source["sizes"][i] for i in idx]}
    return ImageData(data.images[idx], data.labels[idx], list(data.classes),
                     f"{data.name}[{per_class}/class, seed {seed}]", source)
