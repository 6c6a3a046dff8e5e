"""miue: fast MI-UE unlearnable examples (Zhu et al., ICLR 2026) with fused Triton and C++/CUDA kernels.

Ops (``miue.ops``): :func:`grouped_normalize`, :func:`supcon_loss`,
:func:`intra_class_cosine_loss`, :func:`pgd_linf_step_`, :func:`project_linf_`.
Backends: :func:`available_backends`, :func:`use_backend`, ``backend=`` on every op,
the ``MIUE_BACKEND`` environment variable.
"""

import torch  # noqa: F401  (the compiled extension needs torch loaded first)

from miue.ops._backend import available_backends, resolve_backend, use_backend
from miue.ops._extension import load_extension
from miue._malloc import tune_cpu_allocator
from miue.ops._validate import set_validation
from miue.ops import grouped_normalize, intra_class_cosine_loss, pgd_linf_step_, project_linf_, supcon_loss

from miue._version import __version__

load_extension()  # registers torch.ops.miue_C.* or warns once, in one line

# The crafting engine and the victims (and with them torchvision) load on first use (PEP 562):
# `import miue` for the ops alone stays light.
_LAZY = {
    "craft_fast": "miue.craft",
    "CraftResult": "miue.craft",
    "CraftInterrupted": "miue.craft",
    "evaluate": "miue.evaluation.victims",
    "EvalResult": "miue.evaluation.victims",
    "EvalConfig": "miue.evaluation.victims",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'miue' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "__version__",
    "available_backends",
    "use_backend",
    "resolve_backend",
    "set_validation",
    "tune_cpu_allocator",
    "grouped_normalize",
    "supcon_loss",
    "intra_class_cosine_loss",
    "pgd_linf_step_",
    "project_linf_",
    "craft_fast",
    "CraftResult",
    "CraftInterrupted",
    "evaluate",
    "EvalResult",
    "EvalConfig",
]
