"""Image folders as users hold them: class sub-folders of JPEG/PNG/... files of any size.

* :func:`scan_folder` lists the images of ``ROOT/<class>/[<sub>/...]<name>.<ext>`` (any depth,
  upper- or lower-case extensions, symlinked folders followed once), and what it skipped and
  why (not an image, hidden, an empty class folder).
* :class:`Preprocess` says how every image becomes the working size: unchanged (all sizes must
  then agree), ``image_size=N`` with the shorter side resized to N and the central N×N kept
  (torchvision ``Resize(N)`` + ``CenterCrop(N)``, the official code's ImageNet rule with
  256 → 224 replaced by N → N), or ``resize="stretch"`` (``Resize((N, N))``, the whole image,
  aspect ratio not kept). Resizing is bilinear with antialiasing.
* Decoding: Pillow, EXIF orientation applied (``ImageOps.exif_transpose``: the image as a
  viewer shows it), converted to ``L`` when every image of the set is grayscale (modes 1, L,
  LA, I, I;16, F) and to ``RGB`` otherwise (palette and alpha images as torchvision's
  ImageFolder loader converts them: ``convert("RGB")``, the alpha channel dropped). Samples of
  more than 8 bits (16-bit PNG/TIFF, 32-bit integer or float) are scaled to 0..255, not clipped
  (:func:`to_8bit`).
* :func:`decode_folder` decodes into memory; :func:`cached_folder` decodes once into a
  memory-mapped uint8 file (checksummed, reused while the sources and the preprocessing are
  unchanged), with DataLoader workers, so host memory stays flat in the number of images.

A file that cannot be decoded stops the run with a :class:`~miue.data.DatasetError` naming it,
or with ``skip_bad=True`` is left out and listed among the skipped files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from miue._imagedata import DatasetError, ImageData
from miue._io import file_sha256  # noqa: F401  (re-exported: miue.data.folder.file_sha256)
from miue._names import name_bytes

log = logging.getLogger("miue.data")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
RESIZE_MODES = ("crop", "stretch")

__all__ = ["FolderScan", "Preprocess", "cached_folder", "decode_folder", "load_image", "scan_folder"]


@dataclass
class FolderScan:
    """The images of a folder tree: ``files[i]`` (relative to ``root``, ``/``-separated) has
    label ``labels[i]``, an index into ``classes``; ``skipped`` lists ``{"path", "reason"}``."""

    root: str
    classes: list[str]
    files: list[str]
    labels: list[int]
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class Preprocess:
    """How each image becomes the working size (see the module docstring)."""

    image_size: int | None = None
    resize: str = "crop"

    def __post_init__(self):
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 1):
            raise ValueError(f"image_size must be a positive int or None, got {self.image_size!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")

    def describe(self) -> str:
        if self.image_size is None:
            return "none (every image at its own size; all sizes must agree)"
        n = self.image_size
        if self.resize == "stretch":
            return f"resized to {n}x{n} (bilinear, antialiased; aspect ratio not kept)"
        return f"shorter side resized to {n} (bilinear, antialiased), then the central {n}x{n} cropped"

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "resize": self.resize}


# --------------------------------------------------------------------------- scanning


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(top: str, rel: str, seen: set, out: list, skipped: list) -> None:
    """Depth-first, sorted, following symlinked folders once (a loop is skipped, not followed)."""
    real = os.path.realpath(top)
    if real in seen:
        skipped.append({"path": rel + "/", "reason": "folder already visited (symlink loop)"})
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as e:
        raise DatasetError(f"{top}: cannot list folder ({e.strerror})") from None
    for e in entries:
        path = f"{rel}/{e.name}"
        if _is_hidden(e.name):
            skipped.append({"path": path, "reason": "hidden"})
            continue
        try:
            is_dir = e.is_dir()  # follows symlinks
            is_file = e.is_file()
        except OSError:
            is_dir = is_file = False
        if is_dir:
            _walk(e.path, path, seen, out, skipped)
        elif not is_file:
            skipped.append({"path": path, "reason": "not a regular file (broken link?)"})
        elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTS:
            out.append(path)
        else:
            skipped.append({"path": path, "reason": "not an image (extension)"})


def scan_folder(root: str) -> FolderScan:
    """Class sub-folders of ``root`` (sorted by name), each searched at any depth."""
    root = os.path.expanduser(os.fspath(root))
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: no such directory (expected <class>/<image> files)")
    classes, files, labels, skipped = [], [], [], []
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise DatasetError(f"{root}: cannot list folder ({e.strerror})") from None
    for e in top:
        if _is_hidden(e.name):
            skipped.append({"path": e.name, "reason": "hidden"})
            continue
        if not e.is_dir():
            skipped.append({"path": e.name, "reason": "file beside the class folders (not in a class)"})
            continue
        found, sk = [], []
        _walk(e.path, e.name, set(), found, sk)
        skipped += sk
        if not found:
            skipped.append({"path": e.name + "/", "reason": "empty class folder (no images): not a class"})
            continue
        labels += [len(classes)] * len(found)
        classes.append(e.name)
        files += found
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders with images (expected <class>/<image>.png ...; "
                           f"extensions {', '.join(IMAGE_EXTS)})")
    return FolderScan(root=root, classes=classes, files=files, labels=labels, skipped=skipped)


def skipped_summary(skipped: list[dict]) -> str:
    """One line: how many were skipped and why (most common reasons first)."""
    counts: dict[str, int] = {}
    for s in skipped:
        key = s["reason"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    parts = ", ".join(f"{n} {r}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"skipped {len(skipped)} path(s): {parts}"


# --------------------------------------------------------------------------- decoding


def load_image(path: str, gray: bool):
    """The image at ``path`` as Pillow shows it (EXIF orientation applied), in mode L or RGB;
    images of more than 8 bits per sample are scaled to 8 bits first (:func:`to_8bit`)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = to_8bit(ImageOps.exif_transpose(im))
        return im.convert("L" if gray else "RGB")


def to_8bit(im):
    """A grayscale image of more than 8 bits scaled, not clipped, to mode ``L`` (Pillow's own
    ``convert("L")`` clips such values at 255, which turns a 16-bit image white):

    * ``I;16`` (16-bit PNG and TIFF), and ``I`` (32-bit integer) whose values lie in 0..65535:
      ``round(v · 255 / 65535)``, i.e. ``round(v / 257)``;
    * ``I`` with values outside 0..65535: the image's own minimum to 0 and maximum to 255;
    * ``F`` (32-bit float) with values in [0, 1]: ``round(v · 255)``; outside: its minimum and
      maximum as above (NaN as the minimum).

    A constant image (minimum = maximum outside the nominal range) becomes 0. Every other mode is
    returned unchanged (8-bit modes; palette, LA, CMYK and the rest convert as Pillow converts)."""
    mode = im.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return im
    from PIL import Image

    a = np.asarray(im).astype(np.float64)
    if mode == "F":
        a = np.where(np.isnan(a), np.nanmin(a) if np.isfinite(a).any() else 0.0, a)
        lo, hi = (0.0, 1.0) if a.size and a.min() >= 0 and a.max() <= 1 else (a.min(), a.max())
    elif mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
        lo, hi = a.min(), a.max()
    else:
        lo, hi = 0.0, 65535.0
    out = np.zeros(a.shape) if hi <= lo else np.rint((a - lo) * (255.0 / (hi - lo)))
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "L")


def _header(path: str):
    """(mode, (width, height) as displayed) from the header only; raises DatasetError."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
            if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
                size = (size[1], size[0])
            return im.mode, size
    except Exception as e:  # UnidentifiedImageError, OSError, DecompressionBombError ...
        raise DatasetError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def _working(im, pre: Preprocess):
    if pre.image_size is None:
        return im
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    n = pre.image_size
    if pre.resize == "stretch":
        return TF.resize(im, [n, n], interpolation=InterpolationMode.BILINEAR, antialias=True)
    im = TF.resize(im, n, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(im, [n, n])


def decode_one(path: str, gray: bool, pre: Preprocess) -> np.ndarray:
    """One file as uint8 C×H×W at the working size; raises DatasetError naming the file."""
    try:
        a = np.asarray(_working(load_image(path, gray), pre), dtype=np.uint8)
    except DatasetError:
        raise
    except Exception as e:  # truncated or corrupt data, unsupported modes
        raise DatasetError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))


@dataclass
class _Headers:
    gray: bool
    sizes: list  # (width, height) per kept file, as displayed
    keep: list  # indices into the scan's files
    bad: list  # {"path", "reason"}


def _read_headers(scan: FolderScan, skip_bad: bool) -> _Headers:
    gray, sizes, keep, bad = True, [], [], []
    for i, rel in enumerate(scan.files):
        try:
            mode, size = _header(os.path.join(scan.root, rel))
        except DatasetError as e:
            if not skip_bad:
                raise DatasetError(f"{e} (pass skip_bad=True / --skip-bad to leave such files out)") from None
            bad.append({"path": rel, "reason": f"cannot read: {str(e).split(': ', 1)[-1]}"})
            continue
        gray = gray and mode in GRAY_MODES
        sizes.append(size)
        keep.append(i)
    if not keep:
        raise DatasetError(f"{scan.root}: none of the {len(scan.files)} image files could be read")
    return _Headers(gray, sizes, keep, bad)


def _check_sizes(scan: FolderScan, h: _Headers, pre: Preprocess) -> None:
    if pre.image_size is not None:
        return
    first = h.sizes[0]
    for i, size in zip(h.keep, h.sizes):
        if size != first:
            raise DatasetError(
                f"{os.path.join(scan.root, scan.files[i])}: image size {size[0]}x{size[1]} differs from "
                f"{first[0]}x{first[1]} of {os.path.join(scan.root, scan.files[h.keep[0]])} (all images must have "
                "the same size; pass --image-size N / image_size=N to resize them, see docs/protect.md)")


def _working_shape(h: _Headers, pre: Preprocess) -> tuple[int, int, int]:
    c = 1 if h.gray else 3
    if pre.image_size is None:
        w, hh = h.sizes[0]
        return c, hh, w
    return c, pre.image_size, pre.image_size


def _folder_image_data(scan, h, images, labels, keep, bad, pre, name) -> ImageData:
    files = [scan.files[i] for i in keep]
    where = {i: j for j, i in enumerate(h.keep)}
    sizes = [h.sizes[where[i]] for i in keep]
    return ImageData(images, labels, list(scan.classes), name, {"root": scan.root, "files": files, "sizes": [list(s) for s in sizes],
                   "skipped": list(scan.skipped) + list(bad), "preprocess": pre.to_dict(),
                   "mode": "L" if h.gray else "RGB"})


def decode_folder(root: str, *, image_size: int | None = None, resize: str = "crop", skip_bad: bool = False,
                  name: str | None = None, scan: FolderScan | None = None) -> ImageData:
    """An image folder decoded into memory (small sets; see :func:`cached_folder` for large ones).

    The returned :class:`~miue.data.ImageData` carries ``source``: the root, each image's
    relative path and displayed size, the skipped paths and the preprocessing."""
    pre = Preprocess(image_size, resize)
    scan = scan or scan_folder(root)
    h = _read_headers(scan, skip_bad)
    _check_sizes(scan, h, pre)
    arrays, keep, bad = [], [], list(h.bad)
    for i in h.keep:
        try:
            arrays.append(decode_one(os.path.join(scan.root, scan.files[i]), h.gray, pre))
        except DatasetError as e:
            if not skip_bad:
                raise DatasetError(f"{e} (pass skip_bad=True / --skip-bad to leave such files out)") from None
            bad.append({"path": scan.files[i], "reason": f"cannot decode: {str(e).split(': ', 1)[-1]}"})
            continue
        keep.append(i)
    if not arrays:
        raise DatasetError(f"{scan.root}: none of the {len(scan.files)} image files could be decoded")
    labels = np.asarray([scan.labels[i] for i in keep], np.int64)
    return _folder_image_data(scan, h, np.stack(arrays), labels, keep, bad, pre,
                              name or os.path.basename(os.path.normpath(scan.root)))


# --------------------------------------------------------------------------- on-disk cache


class _DecodeSet:
    """torch Dataset over the kept files: (position, array or None, error text)."""

    def __init__(self, paths, gray, pre):
        self.paths, self.gray, self.pre = paths, gray, pre

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, decode_one(self.paths[i], self.gray, self.pre), ""
        except DatasetError as e:
            return i, None, str(e)


def _collate(batch):
    return batch


def _cache_key(scan: FolderScan, pre: Preprocess, skip_bad: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"root": os.path.realpath(scan.root), "pre": pre.to_dict(), "skip_bad": skip_bad,
                         "classes": scan.classes}).encode("utf-8", "surrogateescape"))
    for rel, lab in zip(scan.files, scan.labels):
        st = os.stat(os.path.join(scan.root, rel))
        h.update(name_bytes(rel) + f"\0{lab}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _compact(mm: np.ndarray, good: list[int], rows: int = 1024) -> None:
    """Move rows ``good`` (increasing) to the front of the memmap, in place, in chunks."""
    for start in range(0, len(good), rows):
        src = good[start:start + rows]
        mm[start:start + len(src)] = mm[src]


def cached_folder(root: str, cache_dir: str, *, image_size: int | None = None, resize: str = "crop",
                  skip_bad: bool = False, workers: int | None = None, progress: bool = False,
                  scan: FolderScan | None = None) -> ImageData:
    """An image folder decoded once into ``cache_dir/images-<key>.u8`` (uint8 N×C×H×W, memory
    mapped read-only) and returned as an :class:`~miue.data.ImageData` whose ``images`` is that
    memory map. The key covers the folder, every file's path, size and modification time, and the
    preprocessing; a complete cache whose checksum verifies is reused, anything else is rebuilt.
    Decoding runs in ``workers`` DataLoader processes (default: up to 8, one per core)."""
    import torch
    from tqdm.auto import tqdm

    from miue._io import atomic_write, preallocate, storage_errors

    pre = Preprocess(image_size, resize)
    scan = scan or scan_folder(root)
    os.makedirs(cache_dir, exist_ok=True)
    key = _cache_key(scan, pre, skip_bad)
    data_path = os.path.join(cache_dir, f"images-{key}.u8")
    meta_path = os.path.join(cache_dir, f"images-{key}.json")
    name = os.path.basename(os.path.normpath(scan.root))
    if os.path.exists(meta_path) and os.path.exists(data_path):
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
            ok = meta.get("complete") and file_sha256(data_path) == meta["sha256"]
        except (OSError, ValueError, KeyError):
            ok = False
        if ok:
            log.info("reusing the decoded cache %s (%d images)", data_path, meta["n"])
            images = np.memmap(data_path, dtype=np.uint8, mode="c", shape=tuple(meta["shape"]))
            data = ImageData(images, np.asarray(meta["labels"], np.int64), meta["classes"], name, meta["source"])
            data.cache = {"path": data_path, "reused": True, "sha256": meta["sha256"]}
            return data
        log.warning("the decoded cache %s is incomplete or corrupt: decoding again", data_path)
    h = _read_headers(scan, skip_bad)
    _check_sizes(scan, h, pre)
    shape = _working_shape(h, pre)
    n = len(h.keep)
    partial = data_path + ".partial"
    nbytes = n * int(np.prod(shape))
    # allocated on disk before it is mapped: a full disk is an error here, not a SIGBUS mid-decode
    preallocate(partial, nbytes, "the decoded cache")
    mm = np.memmap(partial, dtype=np.uint8, mode="r+", shape=(n,) + shape)
    paths = [os.path.join(scan.root, scan.files[i]) for i in h.keep]
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(_DecodeSet(paths, h.gray, pre), batch_size=32, num_workers=workers,
                                         collate_fn=_collate, shuffle=False)
    failed = {}
    bar = tqdm(total=n, desc="decoding images", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for batch in loader:
            for i, arr, err in batch:
                if arr is None:
                    if not skip_bad:
                        raise DatasetError(f"{err} (pass skip_bad=True / --skip-bad to leave such files out)")
                    failed[i] = err
                elif arr.shape != shape:  # cannot happen after _check_sizes unless a file changed meanwhile
                    raise DatasetError(f"{paths[i]}: decoded to {arr.shape}, expected {shape} (did it change?)")
                else:
                    mm[i] = arr
            bar.update(len(batch))
    except BaseException:
        del mm
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise
    finally:
        bar.close()
    good = [i for i in range(n) if i not in failed]
    if not good:
        raise DatasetError(f"{scan.root}: none of the {len(scan.files)} image files could be decoded")
    if failed:
        _compact(mm, good)
    mm.flush()
    del mm
    if failed:
        os.truncate(partial, len(good) * int(np.prod(shape)))
    os.replace(partial, data_path)
    keep = [h.keep[i] for i in good]
    bad = list(h.bad) + [{"path": scan.files[h.keep[i]], "reason": f"cannot decode: {failed[i].split(': ', 1)[-1]}"}
                         for i in sorted(failed)]
    labels = np.asarray([scan.labels[i] for i in keep], np.int64)
    images = np.memmap(data_path, dtype=np.uint8, mode="c", shape=(len(good),) + shape)
    data = _folder_image_data(scan, h, images, labels, keep, bad, pre, name)
    digest = file_sha256(data_path)
    meta = {"complete": True, "n": len(good), "shape": [len(good), *shape], "labels": labels.tolist(),
            "classes": list(scan.classes), "source": data.source, "sha256": digest}

    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(meta, fh)

    with storage_errors(cache_dir, 2**20, "the decoded cache's index"):
        atomic_write(meta_path, write)
    data.cache = {"path": data_path, "reused": False, "sha256": digest}
    return data
