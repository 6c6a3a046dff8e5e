"""Releasing protected images as a tree that mirrors the source, with a manifest.

``SRC/<class>/<sub>/<name>.<ext>`` is released as ``DST/<class>/<sub>/<name>.png`` (lossless;
when two sources of one folder share a stem, e.g. ``a.jpg`` and ``a.png``, both keep their
extension: ``a.jpg.png``, ``a.png.png``). ``DST/manifest.json`` lists, for every released file, its
source path, released path, label and class, original and released size and the SHA-256 of both
files, plus the run's ε, configuration and its hash, and every skipped source path with its reason.

* At the working size (default) a released file is the crafted uint8 image itself.
* At the original size (``native_size=True``) δ, crafted at the working size, is mapped back onto
  each original image (as displayed: EXIF orientation applied; L or RGB as decoded): bilinearly
  upsampled over the region of the original the working image was cut from (all of it after
  ``resize="stretch"`` or without resizing; the central crop after the default resize), zero
  outside it, then added and rounded; every released pixel stays within ε of its original
  (bilinear interpolation of values in [-ε, ε] stays in [-ε, ε], and the step is clamped to
  ±floor(ε·255) as in :func:`miue.craft.quantize_images`).

Safety: the release never goes into the source tree (nor the source into it); an existing release
or any other non-empty folder is refused unless ``overwrite=True``. Each PNG is written to a hidden
temporary name and renamed, so a killed run leaves no half-written PNG under its final name; the
manifest is written last (atomically). Rerunning the same release into the folder a killed run left
continues it: files already there are kept, stale temporaries removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import unicodedata

import numpy as np
import torch

from miue._io import atomic_write, file_sha256, require_space, storage_errors
from miue._names import name_record, printable_name
from miue._quantize import quantize
from miue.data.folder import Preprocess, load_image  # the decoder: native size decodes each original again

log = logging.getLogger("miue.release")

MANIFEST = "manifest.json"
MARKER = ".miue-release.json"  # present while a release is being written
FORMAT = "miue-release"

__all__ = ["MANIFEST", "check_destination", "config_hash", "native_delta", "release_paths", "write_release"]


def config_hash(config: dict) -> str:
    """SHA-256 (first 16 hex digits) of the configuration as sorted JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def release_paths(files: list[str]) -> list[str]:
    """Released relative path of each source relative path: the name made printable
    (:func:`miue._names.printable_name`: bytes that are not UTF-8 as ``%XX``), the extension
    replaced by ``.png``, or kept and ``.png`` appended when two sources of one folder share a
    stem. Two released names that a case-insensitive or Unicode-normalising file system would
    confuse are an error that lists every such group with its source paths."""
    names = [printable_name(f) for f in files]
    stems: dict[str, int] = {}
    for f in names:
        stem = _fold(os.path.splitext(f)[0])
        stems[stem] = stems.get(stem, 0) + 1
    out = []
    for f in names:
        stem, _ = os.path.splitext(f)
        out.append((f if stems[_fold(stem)] > 1 else stem) + ".png")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(out):
        groups.setdefault(_fold(p), []).append(i)
    clashes = [g for g in groups.values() if len(g) > 1]
    if clashes:
        listed = "; ".join(" and ".join(repr(names[i]) for i in g) + f" -> {out[g[0]]!r}" for g in clashes)
        raise ValueError(f"{len(clashes)} group(s) of source files map to one released name (names that differ "
                         f"only in case or Unicode normalisation count as one): {listed}; rename all but one "
                         "file of each group")
    return out


def _fold(name: str) -> str:
    """What a case-insensitive, Unicode-normalising file system (macOS, Windows) sees of a name."""
    return unicodedata.normalize("NFC", name).casefold()


def _crop_region(w0: int, h0: int, pre: Preprocess):
    """(top, left, height, width) of the original that the working image shows."""
    n = pre.image_size
    if n is None or pre.resize == "stretch":
        return 0, 0, h0, w0
    # torchvision Resize(n) on a PIL image: the shorter side becomes n, the longer int(n * long / short)
    if w0 <= h0:
        ow, oh = n, int(n * h0 / w0)
    else:
        oh, ow = n, int(n * w0 / h0)
    top, left = int(round((oh - n) / 2.0)), int(round((ow - n) / 2.0))  # CenterCrop's offsets
    sy, sx = h0 / oh, w0 / ow
    t, lft = int(round(top * sy)), int(round(left * sx))
    hh, ww = max(1, min(h0 - t, int(round(n * sy)))), max(1, min(w0 - lft, int(round(n * sx))))
    return t, lft, hh, ww


def native_delta(delta: torch.Tensor, w0: int, h0: int, pre: Preprocess) -> torch.Tensor:
    """δ (C×n×n, working size) on an original of ``w0``×``h0`` pixels (C×h0×w0, zero outside the
    region the working image shows)."""
    import torch.nn.functional as F

    delta = delta.float()
    if delta.shape[1:] == (h0, w0):
        return delta.clone()
    t, lft, hh, ww = _crop_region(w0, h0, pre)
    up = F.interpolate(delta[None], size=(hh, ww), mode="bilinear", align_corners=False)[0]
    out = torch.zeros((delta.shape[0], h0, w0), dtype=torch.float32)
    out[:, t:t + hh, lft:lft + ww] = up
    return out


def _png(path: str, chw: np.ndarray) -> None:
    from PIL import Image

    arr = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)  # nothing half-written stays behind, not even under the temporary name
        except OSError:
            pass
        raise


def _inside(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def check_destination(dst: str, root: str, overwrite: bool, digest: str | None = None) -> str:
    """What writing a release to ``dst`` would do, without touching it: ``"new"`` (absent or empty),
    ``"resume"`` (an unfinished release of this run: ``digest`` equal to its marker's, or any
    unfinished release when ``digest`` is None) or ``"overwrite"``; raises where it is refused
    (inside or around the source tree ``root``, not a folder, another release or other files
    without ``overwrite``)."""
    if _inside(dst, root) or _inside(root, dst):
        raise ValueError(f"refusing to write the release {dst!r} into the source tree {root!r} (or around it): "
                         "choose a folder outside it")
    if not os.path.exists(dst):
        return "new"
    if not os.path.isdir(dst):
        raise FileExistsError(f"{dst!r} exists and is not a folder")
    marker = os.path.join(dst, MARKER)
    if os.path.exists(marker) and not os.path.exists(os.path.join(dst, MANIFEST)):
        if digest is None:
            return "resume"
        try:
            with open(marker) as fh:
                same = json.load(fh).get("config_hash") == digest
        except (OSError, ValueError):
            same = False
        if same:
            return "resume"
        if not overwrite:
            raise FileExistsError(f"{dst!r} holds an unfinished release of another run; pass overwrite=True "
                                  "(--overwrite) to replace it, or choose another folder")
        return "overwrite"
    if not os.listdir(dst):
        return "new"
    if not overwrite:
        what = "a release (manifest.json)" if os.path.exists(os.path.join(dst, MANIFEST)) else "files"
        raise FileExistsError(f"{dst!r} already holds {what}; pass overwrite=True (--overwrite) to write over "
                              "it, or choose an empty or new folder")
    return "overwrite"


def _prepare(dst: str, root: str, digest: str, overwrite: bool) -> bool:
    """Check and create ``dst``; True when continuing a killed release of the same run."""
    action = check_destination(dst, root, overwrite, digest)
    if action == "resume":
        return True
    os.makedirs(dst, exist_ok=True)
    old = os.path.join(dst, MANIFEST)
    if action == "overwrite" and os.path.exists(old):  # replace the previous release: its files go, the manifest last
        try:
            with open(old) as fh:
                for rec in json.load(fh).get("files", []):
                    p = os.path.join(dst, rec["released"])
                    if os.path.isfile(p):
                        os.unlink(p)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        os.unlink(old)
    return False


def _remove_temporaries(dst: str) -> int:
    n = 0
    for dirpath, _, filenames in os.walk(dst):
        for f in filenames:
            if f.startswith(".tmp-"):
                os.unlink(os.path.join(dirpath, f))
                n += 1
    return n


def write_release(dst: str, source: dict, images, labels, classes: list[str], *, eps: float, config: dict,
                  delta=None, native_size: bool = False, overwrite: bool = False, progress: bool = False,
                  on_file=None) -> dict:
    """Write the released tree and ``manifest.json`` (see the module docstring); returns the
    manifest. ``source`` is an image folder's ``ImageData.source`` (root, files, sizes, skipped,
    preprocess, mode); ``images`` the released uint8 N×C×H×W at the working size; ``delta`` the
    float δ (needed for ``native_size``). ``on_file(i)`` is called after each file (tests)."""
    from tqdm.auto import tqdm

    if source is None or "files" not in source:
        raise ValueError("a mirrored release needs images loaded from an image folder (ImageData.source); "
                         "use CraftResult.export_png for other data")
    files, sizes, root = source["files"], source["sizes"], source["root"]
    n = len(files)
    if len(images) != n or len(labels) != n:
        raise ValueError(f"{len(images)} images and {len(labels)} labels for {n} source files")
    if native_size and delta is None:
        raise ValueError("native_size=True needs delta (the crafted perturbation at the working size)")
    pre = Preprocess(**source.get("preprocess", {}))
    gray = source.get("mode") == "L"
    digest = config_hash({**config, "native_size": bool(native_size)})
    resuming = _prepare(dst, root, digest, overwrite)
    if resuming:
        log.info("%s: continuing an unfinished release of this run (removed %d temporary files)", dst,
                 _remove_temporaries(dst))
    marker = {"format": FORMAT, "config_hash": digest, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write(os.path.join(dst, MARKER), lambda tmp: open(tmp, "w").write(json.dumps(marker)))
    out_paths = release_paths(files)
    labels = [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    # the space the PNGs still to write may take (uncompressed, an upper bound in practice), checked
    # before the first one; a write that fails anyway is one StorageError naming dst and the bytes
    c = int(images.shape[1])
    todo = [i for i in range(n) if not (resuming and os.path.exists(os.path.join(dst, out_paths[i])))]
    needed = sum((sizes[i][0] * sizes[i][1] if native_size else int(images.shape[2]) * int(images.shape[3])) * c
                 + 1024 for i in todo) + 2**20 * (1 + n // 2000)  # + the manifest
    require_space(dst, needed, "the release")
    records, kept = [], 0
    bar = tqdm(total=n, desc="writing release", unit="img", disable=not progress, dynamic_ncols=True)
    for i in range(n):
        src_path = os.path.join(root, files[i])
        out_path = os.path.join(dst, out_paths[i])
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        w0, h0 = sizes[i]
        if resuming and os.path.exists(out_path):
            kept += 1
        elif native_size:
            orig = np.array(load_image(src_path, gray), dtype=np.uint8)  # a writable copy
            orig = orig[None] if orig.ndim == 2 else orig.transpose(2, 0, 1)
            base = torch.from_numpy(np.ascontiguousarray(orig))  # uint8
            d = native_delta(torch.as_tensor(np.asarray(delta[i])), w0, h0, pre)
            q = quantize(base, d, eps)  # the crafting results' rule (miue/_quantize.py)
            with storage_errors(dst, needed, "the release"):
                _png(out_path, q.numpy())
        else:
            with storage_errors(dst, needed, "the release"):
                _png(out_path, np.asarray(images[i], dtype=np.uint8))
        rec = {**name_record(files[i], "source"), "released": out_paths[i], "label": labels[i],
               "class": classes[labels[i]],
               "original_size": [int(w0), int(h0)],
               "released_size": [int(w0), int(h0)] if native_size else [int(images.shape[3]), int(images.shape[2])],
               "sha256_source": file_sha256(src_path), "sha256_released": file_sha256(out_path)}
        records.append(rec)
        bar.update(1)
        if on_file is not None:
            on_file(i)
    bar.close()
    skipped = [{**k, **name_record(k["path"], "path")} for k in source.get("skipped", [])]
    manifest = {
        "format": FORMAT, "format_version": 1, "source_root": os.path.abspath(root), "eps": float(eps),
        "eps_255": float(eps * 255), "native_size": bool(native_size), "preprocess": pre.to_dict(),
        "preprocess_text": pre.describe(), "mode": source.get("mode"), "config_hash": digest, "config": config,
        "n_files": n, "n_skipped": len(skipped), "skipped": skipped, "files": records,
    }
    with storage_errors(dst, 2**20 * (1 + n // 2000), "the release's manifest"):
        atomic_write(os.path.join(dst, MANIFEST), lambda tmp: open(tmp, "w").write(json.dumps(manifest, indent=1)))
    os.unlink(os.path.join(dst, MARKER))
    if kept:
        log.info("%s: kept %d files written by the unfinished run", dst, kept)
    return manifest
