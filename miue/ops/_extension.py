"""The compiled extension ``miue._C``: load it once, and say in one line why it is missing.

``setup.py`` writes ``_build_info.json`` beside the extension: whether it was built, whether
it carries the CUDA kernels, why not, and the build error when there is no extension at all.
"""

from __future__ import annotations

import functools
import json
import os
import warnings

import torch

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # miue/, where miue._C is built
BUILD_INFO = os.path.join(PACKAGE_DIR, "_build_info.json")


def _skipped() -> bool:
    return os.environ.get("MIUE_SKIP_EXT", "").lower() in ("1", "true", "yes", "on")


def build_info() -> dict:
    """What setup.py recorded about the extension's build ({} when it recorded nothing)."""
    try:
        with open(BUILD_INFO) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def build_command() -> str:
    """The command that builds the extension for this installation."""
    source = os.path.dirname(PACKAGE_DIR)
    if os.path.isfile(os.path.join(source, "setup.py")):  # running from a source checkout (editable)
        return f"pip install --no-build-isolation -e {source}"
    return "pip install --no-build-isolation --force-reinstall --no-deps <miue source checkout>"


def missing_reason(exc: BaseException) -> str:
    """Why the extension is missing, from the import error and the build record."""
    from miue._io import first_line  # (here, so that this module can load before the package)

    info = build_info()
    if isinstance(exc, ModuleNotFoundError) and exc.name == "miue._C":
        if info.get("error"):
            return f"its build failed ({info['error']})"
        return ("it was not built (installed with MIUE_SKIP_EXT=1, or without torch importable at build time, "
                "or from a source tree whose build did not run)")
    return f"it failed to load ({type(exc).__name__}: {first_line(exc, 300)}; built against torch " \
           f"{info.get('torch', '?')}, running torch {torch.__version__})"


def missing_message(exc: BaseException) -> str:
    """The one-line warning of ``import miue`` without the extension."""
    return (f"miue: the compiled extension miue._C is missing: {missing_reason(exc)}. The 'cpp' backend is "
            f"unavailable (reference and triton still work). Build it with: {build_command()}")


@functools.lru_cache(maxsize=None)
def _load() -> tuple[bool, str]:
    """(loaded, status line); imports ``miue._C`` once."""
    if _skipped():
        return False, "not loaded: MIUE_SKIP_EXT is set"
    try:
        import miue._C  # noqa: F401  (registers torch.ops.miue_C.*)
    except Exception as exc:  # ImportError, OSError (undefined symbol), ...
        return False, missing_message(exc)
    if not (hasattr(torch.ops, "miue_C") and hasattr(torch.ops.miue_C, "supcon_fwd")):
        return False, f"miue: miue._C loaded but registered no ops. Rebuild it with: {build_command()}"
    return True, "loaded"


@functools.lru_cache(maxsize=None)
def load_extension() -> bool:
    """Import ``miue._C`` once. Returns whether its ops are registered; warns once (one line) if not."""
    loaded, line = _load()
    if not loaded and not _skipped():
        warnings.warn(line, RuntimeWarning, stacklevel=3)
    elif loaded and torch.cuda.is_available() and not cpp_has_cuda() and build_info().get("cuda_note"):
        warnings.warn(f"miue: the compiled extension has no CUDA kernels ({build_info()['cuda_note']}); CUDA "
                      f"tensors use the triton backend. Rebuild with: {build_command()}", RuntimeWarning, stacklevel=3)
    return loaded


@functools.lru_cache(maxsize=None)
def cpp_has_cuda() -> bool:
    """Whether the compiled extension carries CUDA kernels."""
    if not _load()[0]:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("miue_C::supcon_fwd", "CUDA")


def extension_status() -> str:
    """One line for ``miue info``: the extension's state and, when it lacks something, why."""
    loaded, line = _load()
    if not loaded:
        return line
    if cpp_has_cuda():
        return "loaded: C++ CPU kernels and CUDA kernels"
    note = build_info().get("cuda_note")
    return "loaded: C++ CPU kernels only" + (f" (CUDA kernels not built: {note})" if note else "")
