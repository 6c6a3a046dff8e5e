"""Files: atomic writes, checkpoints and result files that are safe to load.

* Every file is written to a temporary name in the same directory, flushed to disk and
  renamed over the target (``os.replace``): a crash leaves the old file or the new one,
  never half of one.
* Nothing is unpickled: checkpoints load with ``torch.load(weights_only=True)`` (tensors,
  numbers, strings, lists and dicts only) and ``.npz`` results with ``allow_pickle=False``.
* Result files carry a SHA-256 checksum of their arrays, verified on load.

Result file layout (``CraftResult.save``), ``.npz`` or ``.pt`` by extension (no suffix: ``.npz``):
    delta   float32 N×C×H×W
    images  uint8   N×C×H×W (the released images)
    labels  int64   N
    meta    JSON text: {"format": "miue-result", "format_version": 1, "miue_version", "eps",
            "preset", "objective", "seed", "config", "history", "sha256"}
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import torch

from miue._version import __version__

FORMAT = "miue-result"
FORMAT_VERSION = 1


class ResultFileError(ValueError):
    """A result or checkpoint file that is unreadable, corrupt, truncated or not ours."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message ("" for none), at most ``limit`` characters."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write_fn) -> str:
    """Call ``write_fn(tmp_path)`` then rename the temporary file over ``path``."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_save(obj, path: str) -> str:
    """torch.save, atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str) -> dict:
    try:
        try:  # memory-mapped: a large δ is read page by page, not copied into memory at once
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ResultFileError(
            f"cannot load checkpoint {path}: {type(exc).__name__}: {first_line(exc)} "
            "(corrupt, truncated, or it holds objects other than tensors, numbers, strings, lists and dicts)"
        ) from None


class StorageError(OSError):
    """A write stage could not store its files (a full disk, a quota, a read-only or failing
    device): the message names the stage, the folder and the bytes needed and free."""


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 10 * 2**20 else f"{n / 2**20:,.0f} MiB"


def _free(directory: str) -> int:
    """Free bytes where ``directory`` (or its nearest existing parent) lives."""
    d = os.path.abspath(directory)
    while not os.path.exists(d) and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    return shutil.disk_usage(d).free


def require_space(directory: str, needed: int, what: str) -> None:
    """Raise :class:`StorageError` unless ``directory`` has ``needed`` bytes free."""
    free = _free(directory)
    if free < needed:
        raise StorageError(errno.ENOSPC, f"{what}: {directory!r} has {_mib(free)} free, "
                                         f"{_mib(needed)} are needed; free some space (or choose "
                                         "another folder) and run again: it resumes")


@contextlib.contextmanager
def storage_errors(directory: str, needed: int, what: str):
    """Turn a write that fails for want of storage (ENOSPC, EDQUOT, EIO, EROFS, EFBIG) into one
    :class:`StorageError` naming ``what``, ``directory`` and the bytes needed and free."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        try:
            free = f"{_mib(_free(directory))} free"
        except OSError:
            free = "free space unknown"
        raise StorageError(exc.errno, f"{what}: writing to {directory!r} failed ({exc.strerror}); about "
                                      f"{_mib(needed)} are needed, {free}. Nothing half-written is "
                                      "kept under a final name: free some space (or choose another folder) "
                                      "and run again: it resumes") from None


def preallocate(path: str, nbytes: int, what: str) -> None:
    """Create ``path`` with ``nbytes`` allocated on disk, so that a memory map of it cannot meet a
    full disk later (a write through a map that cannot be backed kills the process with SIGBUS).
    Raises :class:`StorageError` naming ``what`` when the space is not there."""
    directory = os.path.dirname(os.path.abspath(path))
    require_space(directory, nbytes, what)
    with storage_errors(directory, nbytes, what):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                if nbytes:
                    os.posix_fallocate(fd, 0, nbytes)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                os.ftruncate(fd, nbytes)  # a file system without fallocate: the free-space check stands
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)


def check_writable(directory: str, min_free_bytes: int = 0, what: str = "output directory") -> None:
    """Fail now, not after hours of compute, when ``directory`` cannot take our files."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{what} {directory!r} cannot be created: {exc.strerror}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.write(fd, b"x" * 4096)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OSError(f"{what} {directory!r} is not writable: {exc.strerror}") from None
    require_space(directory, min_free_bytes, what)


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _checksum(delta: np.ndarray, images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (delta, images, labels):
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        flat = a.reshape(-1)
        for s in range(0, flat.size, 1 << 24):  # in chunks: no copy of a large (memory-mapped) array
            h.update(flat[s:s + (1 << 24)])
    return h.hexdigest()


def result_path(path: str) -> str:
    """The file a result is written to: ``path`` as given when it ends in .npz or .pt,
    ``path + ".npz"`` when it has no suffix (as ``numpy.savez`` does); any other suffix is an error."""
    path = os.fspath(path)
    if path.endswith((".npz", ".pt")):
        return path
    base = os.path.basename(path)
    if base and os.path.splitext(base)[1] == "" and not base.endswith("."):
        return path + ".npz"
    raise ValueError(f"result path must end in .npz or .pt (or have no suffix, then .npz is added), got {path!r}")


def write_result_file(path: str, delta, images, labels, config: dict, history: list) -> str:
    """Write a result file (layout in the module docstring); returns the path written, with
    .npz added when ``path`` has no suffix."""
    path = result_path(path)
    delta = delta.detach().cpu().float().numpy()
    images = images.detach().cpu().numpy().astype(np.uint8, copy=False)
    labels = labels.detach().cpu().numpy().astype(np.int64, copy=False)
    cfg = config or {}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "miue_version": __version__,
        "eps": cfg.get("eps"), "preset": cfg.get("preset"), "objective": cfg.get("objective"), "seed": cfg.get("seed"),
        "config": cfg, "history": history, "sha256": _checksum(delta, images, labels),
    }
    text = json.dumps(meta)
    if path.endswith(".npz"):
        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, delta=delta, images=images, labels=labels, meta=np.array(text))
    else:
        def write(tmp):
            torch.save({"delta": torch.from_numpy(delta), "images": torch.from_numpy(images),
                        "labels": torch.from_numpy(labels), "meta": text}, tmp)
    needed = delta.nbytes + images.nbytes + labels.nbytes + len(text) + 2**16
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    require_space(directory, needed, "the result file")
    with storage_errors(directory, needed, "the result file"):
        return atomic_write(path, write)


def read_result_file(path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """(delta float32, images uint8, labels int64, meta) of a result file, checksum verified."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"result file {path!r} does not exist")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                missing = {"delta", "images", "labels", "meta"} - set(z.files)
                if missing:
                    raise ResultFileError(f"{path}: not a miue result file (missing {sorted(missing)})")
                delta, images, labels, text = z["delta"], z["images"], z["labels"], str(z["meta"])
        elif path.endswith(".pt"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict) or not {"delta", "images", "labels", "meta"} <= set(obj):
                raise ResultFileError(f"{path}: not a miue result file")
            delta, images, labels = (obj[k].numpy() for k in ("delta", "images", "labels"))
            text = obj["meta"]
        else:
            raise ValueError(f"result path must end in .npz or .pt, got {path!r}")
        meta = json.loads(text)
    except (ResultFileError, ValueError) as exc:
        if isinstance(exc, ResultFileError) or "must end in" in str(exc):
            raise
        raise ResultFileError(f"cannot read result file {path}: {exc}") from None
    except Exception as exc:
        raise ResultFileError(f"cannot read result file {path}: {type(exc).__name__}: {first_line(exc)}") from None
    if meta.get("format") != FORMAT:
        raise ResultFileError(f"{path}: not a miue result file (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ResultFileError(f"{path}: written by a newer miue (format version {meta['format_version']})")
    if images.dtype != np.uint8 or delta.shape != images.shape or labels.shape != (images.shape[0],):
        raise ResultFileError(f"{path}: arrays have inconsistent shapes or dtypes")
    if _checksum(delta.astype(np.float32, copy=False), images, labels.astype(np.int64, copy=False)) != meta.get("sha256"):
        raise ResultFileError(f"{path}: checksum mismatch (the file is corrupt or was modified)")
    return (torch.from_numpy(np.array(delta, dtype=np.float32)), torch.from_numpy(np.array(images)),
            torch.from_numpy(np.array(labels, dtype=np.int64)), meta)
