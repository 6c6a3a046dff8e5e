"""The data owner's job in one call: :func:`protect` (``miue protect SRC DST``).

1. scan ``SRC`` (class sub-folders of images at any depth, :func:`miue.data.folder.scan_folder`);
2. decode it once into a memory-mapped uint8 cache in the work folder (reused on a rerun);
3. craft with a preset, δ memory-mapped beside the checkpoints (``storage="disk"``), so host
   memory stays flat in the number of images and a killed run resumes from its last round;
4. write ``DST`` as a mirror of ``SRC`` (``<class>/<sub>/<name>.png``) with ``manifest.json``
   (:func:`miue.data.release.write_release`).

The work folder (default ``DST`` + ``.miue-work`` beside ``DST``) holds the decoded clean images
and the checkpoints: it is private, keep it out of the release; delete it when done.
"""

from __future__ import annotations

import logging
import os
import time

from miue.data.release import MANIFEST

log = logging.getLogger("miue.protect")

__all__ = ["default_work_dir", "protect"]


def default_work_dir(dst: str) -> str:
    return os.path.normpath(os.path.abspath(dst)) + ".miue-work"


def _early_checks(src: str, dst: str | None, work: str, overwrite: bool) -> None:
    """Refuse now, not after hours of crafting, what write_release would refuse."""
    from miue.data.release import _inside, check_destination

    if _inside(work, src) or _inside(src, work):
        raise ValueError(f"refusing to put the work folder {work!r} inside the source tree {src!r} (or around it)")
    if dst is not None:
        check_destination(dst, src, overwrite)


def protect(src: str, dst: str | None, *, preset: str = "demo", objective: str = "miue", eps: float = 8 / 255,
            image_size: int | None = None, resize: str = "crop", native_size: bool = False, skip_bad: bool = False,
            work_dir: str | None = None, checkpoint_dir: str | None = None, overwrite: bool = False,
            result_path: str | None = None, device=None, seed: int = 0, progress: bool = True,
            workers: int | None = None, dataset: str | None = None, **craft_options) -> dict:
    """Protect the image folder ``src`` into the mirrored release ``dst``; returns a summary
    (counts, paths, seconds, and the last round's metrics). Keyword options not named here go
    to :func:`miue.craft_fast` (rounds, pgd_steps, arch, train_steps, amp, batch_size, ...).

    ``dst=None`` crafts without writing a release (then give ``result_path``): what
    ``miue craft FOLDER --checkpoint-dir DIR`` does without ``--png-dir``. The checkpoints go to
    ``checkpoint_dir`` (default ``<work_dir>/checkpoint``); the decoded cache always to
    ``<work_dir>/cache``. ``dataset``: what the result's configuration records as its data set
    (default ``src``); ``miue craft ROOT`` gives the root whose ``train/`` it crafts, so that
    ``miue evaluate`` finds ``ROOT/test``."""
    from miue.craft import craft_fast
    from miue.data.folder import cached_folder, scan_folder
    from miue.data.release import write_release

    t0 = time.perf_counter()
    if dst is None and not result_path:
        raise ValueError("dst=None writes no release: give result_path, or nothing would be kept")
    if dst is None and native_size:
        raise ValueError("native_size applies to the released PNGs: give dst")
    src = os.path.expanduser(os.fspath(src))
    dst = os.path.expanduser(os.fspath(dst)) if dst is not None else None
    if not work_dir and dst is None:
        raise ValueError("dst=None needs work_dir (the decoded cache and the checkpoints go there)")
    work = os.path.expanduser(work_dir) if work_dir else default_work_dir(dst)
    ckpt = os.path.expanduser(checkpoint_dir) if checkpoint_dir else os.path.join(work, "checkpoint")
    scan = scan_folder(src)
    _early_checks(src, dst, work, overwrite)
    data = cached_folder(src, os.path.join(work, "cache"), image_size=image_size, resize=resize, skip_bad=skip_bad,
                         workers=workers, progress=progress, scan=scan)
    if data.source["skipped"]:
        from miue.data.folder import skipped_summary

        log.warning("%s: %s%s", src, skipped_summary(data.source["skipped"]),
                    f" (they will be listed in {os.path.join(dst, MANIFEST)})" if dst is not None else "")
    t1 = time.perf_counter()
    result = craft_fast(data.images, data.labels, eps=eps, preset=preset, objective=objective, device=device,
                        seed=seed, checkpoint_dir=ckpt, storage="disk",
                        progress=progress, num_classes=data.num_classes, **craft_options)
    t2 = time.perf_counter()
    config = {**result.config, "dataset": os.path.abspath(os.path.expanduser(dataset) if dataset else src),
              "classes": data.classes,
              "preprocess": data.source["preprocess"]}
    result.config = config
    manifest = {"n_files": 0, "n_skipped": len(data.source["skipped"])}
    if dst is not None:
        manifest = write_release(dst, data.source, result.images, result.labels, data.classes, eps=eps, config=config,
                                 delta=result.delta, native_size=native_size, overwrite=overwrite, progress=progress)
    t3 = time.perf_counter()
    saved = result.save(result_path) if result_path else None
    return {"released": os.path.abspath(dst) if dst is not None else None,
            "manifest": os.path.join(os.path.abspath(dst), MANIFEST) if dst is not None else None,
            "work_dir": os.path.abspath(work), "result": saved, "n_files": manifest["n_files"],
            "n_skipped": manifest["n_skipped"], "n_images": len(result.labels), "classes": data.classes,
            "working_shape": list(data.shape), "native_size": native_size, "cache_reused": data.cache["reused"],
            "last_round": result.history[-1] if result.history else {},
            "seconds": {"decode": t1 - t0, "craft": t2 - t1, "release": t3 - t2, "total": time.perf_counter() - t0}}
