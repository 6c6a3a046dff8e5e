"""``accelerate()`` and ``python -m miue.compat SCRIPT ARGS``: speed for a poisoning loop whose time
is in its model, without editing it.

What is applied, and why it keeps the numerics:

* the CPU allocator tuning (``miue.tune_cpu_allocator``: glibc keeps freed activation memory
  instead of unmapping it and faulting it in again next step); the same arithmetic, fewer page
  faults. Process-wide and kept for the process (it cannot be taken back);
* on a GPU, when the process has not touched CUDA yet, the caching allocator's expandable
  segments (``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``): less fragmentation, the same
  kernels;
* the known patches (:data:`miue.compat.patching.KNOWN`) in the modules the script imports from
  its own folder (``python -m miue.compat``) or in the modules given.

What changes numerics is applied only when asked: ``tf32=True`` (TF32 matmuls and convolutions on
Ampere and later) and ``cudnn_benchmark=True`` (cuDNN picks the fastest algorithm per shape, which
may differ in the last bits between runs). bf16 and channels_last need the loop's own code and
are not applied here.
"""

from __future__ import annotations

import argparse
import importlib.abc
import os
import runpy
import sys
from dataclasses import dataclass, field

import torch

from miue.compat.patching import PatchHandle, patch

__all__ = ["Acceleration", "accelerate", "main"]


@dataclass
class Acceleration:
    """What :func:`accelerate` did: ``actions`` (one line each), ``patches`` (the handles);
    ``undo()`` restores the patches and the backend flags it set (not the allocator)."""

    actions: list = field(default_factory=list)
    patches: list = field(default_factory=list)
    _restore: list = field(default_factory=list, repr=False)

    def report(self) -> str:
        lines = ["miue.compat: " + (a if i == 0 else "             " + a) for i, a in enumerate(self.actions)]
        lines += [h.report() for h in self.patches if h.replaced or h.skipped]
        return "\n".join(lines)

    def undo(self) -> None:
        for h in self.patches:
            h.undo()
        for fn in reversed(self._restore):
            fn()
        self._restore.clear()


def _set_flag(acc: Acceleration, obj, attr: str, value, label: str) -> None:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    acc._restore.append(lambda: setattr(obj, attr, old))
    acc.actions.append(f"{label} = {value} (asked; changes numerics)")


def accelerate(modules=(), *, allocator: bool = True, cuda_alloc: bool = True, tf32: bool = False,
               cudnn_benchmark: bool = False, verbose: bool = True) -> Acceleration:
    """Apply the settings that keep the numerics (module docstring) and patch ``modules`` (module
    objects) with :func:`miue.compat.patch`; ``tf32`` and ``cudnn_benchmark`` only when asked.
    Prints what it did to stderr unless ``verbose=False``; returns an :class:`Acceleration`."""
    from miue._malloc import tune_cpu_allocator

    acc = Acceleration()
    if allocator:
        on = tune_cpu_allocator()
        acc.actions.append("CPU allocator tuned (glibc keeps freed blocks: fewer page faults, same numerics)" if on
                           else "CPU allocator not tuned (not glibc, or MIUE_MALLOC_TUNING=0)")
    if cuda_alloc:
        conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
        if "expandable_segments" in conf:
            acc.actions.append(f"CUDA allocator left as set (PYTORCH_CUDA_ALLOC_CONF={conf})")
        elif torch.cuda.is_initialized():
            acc.actions.append("CUDA allocator left as it is (CUDA was initialised before accelerate())")
        else:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ",".join(filter(None, [conf, "expandable_segments:True"]))
            acc.actions.append("CUDA allocator: expandable segments (less fragmentation, same kernels)")
    if tf32:
        _set_flag(acc, torch.backends.cuda.matmul, "allow_tf32", True, "torch.backends.cuda.matmul.allow_tf32")
        _set_flag(acc, torch.backends.cudnn, "allow_tf32", True, "torch.backends.cudnn.allow_tf32")
    if cudnn_benchmark:
        _set_flag(acc, torch.backends.cudnn, "benchmark", True, "torch.backends.cudnn.benchmark")
    for m in modules:
        acc.patches.append(patch(m, quiet=True))
    if verbose:
        print(acc.report(), file=sys.stderr)
    return acc


# ----------------------------------------------------------------------------- python -m miue.compat


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, after):
        self.inner, self.after = inner, after

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        self.after(module)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches each module imported from under ``roots`` (the script's folder) right after it runs,
    before the importer binds its names."""

    def __init__(self, roots, handles: list):
        self.roots = [os.path.realpath(r) + os.sep for r in roots]
        self.handles = handles

    def find_spec(self, name, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        origin = spec.origin or ""
        if (origin.endswith(".py") and any(os.path.realpath(origin).startswith(r) for r in self.roots)
                and hasattr(spec.loader, "exec_module")):
            spec.loader = _Loader(spec.loader, self._patch)
        return spec

    def _patch(self, module):
        handle = patch(module, quiet=True)
        if handle.replaced or handle.skipped:
            self.handles.append(handle)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m miue.compat",
        description="Run a poisoning script with miue's numerics-preserving speed-ups and the known "
                    "drop-in replacements (docs/compat.md): the CPU allocator tuning, the CUDA allocator's "
                    "expandable segments, and miue.compat.patch on every module the script imports from "
                    "its own folder. TF32 and cuDNN autotuning only when asked.",
        usage="python -m miue.compat [options] SCRIPT [ARGS ...]")
    p.add_argument("--no-allocator", action="store_true", help="leave the CPU allocator as it is")
    p.add_argument("--no-patch", action="store_true", help="run without replacing any code")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions (changes numerics)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning (may change the last bits)")
    p.add_argument("--quiet", action="store_true", help="print nothing about what was applied")
    p.add_argument("script", help="the Python file to run, as `python SCRIPT ARGS` would")
    p.add_argument("args", nargs="*", help="its arguments, passed on untouched (options included)")
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((i for i, x in enumerate(argv) if not x.startswith("-")), len(argv))  # our flags come first
    a = p.parse_args(argv[:first + 1])
    a.args = argv[first + 1:]
    if not os.path.isfile(a.script):
        p.error(f"SCRIPT {a.script!r} is not a file")
    acc = accelerate(allocator=not a.no_allocator, tf32=a.tf32, cudnn_benchmark=a.cudnn_benchmark, verbose=False)
    handles: list[PatchHandle] = []
    finder = None
    script_dir = os.path.dirname(os.path.abspath(a.script))
    if not a.no_patch:
        finder = _PatchOnImport([script_dir], handles)
        sys.meta_path.insert(0, finder)
    if not a.quiet:
        print(acc.report() + ("\nmiue.compat: patching the modules imported from " + script_dir
                              if finder else "\nmiue.compat: --no-patch: no code replaced"), file=sys.stderr)
    sys.argv = [a.script] + a.args
    sys.path.insert(0, script_dir)
    try:
        runpy.run_path(a.script, run_name="__main__")
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
            if not a.quiet:
                rep = "\n".join(h.report() for h in handles)
                print(rep or "miue.compat: no module of the script defined a known name: nothing replaced "
                      "(docs/compat.md)", file=sys.stderr)
    return 0
