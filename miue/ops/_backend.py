"""Backend registry and dispatch (docs/ops.md).

Three implementations stand behind every ``miue::`` op:

``reference``  pure PyTorch (:mod:`miue.ops.reference`), any device; the oracle.
``cpp``        the compiled extension ``miue._C`` (ops in the ``miue_C`` namespace):
               C++ CPU kernels, plus CUDA kernels when built with CUDA.
``triton``     Triton kernels (:mod:`miue.kernels`): CUDA tensors, or CPU tensors when
               ``TRITON_INTERPRET=1`` (used by the tests).

Choice, highest priority first: the ``backend=`` argument of an op, the innermost
``with miue.use_backend(name):`` block, the ``MIUE_BACKEND`` environment variable, then
auto: CUDA tensors -> triton, else cpp (CUDA build), else reference; CPU tensors -> cpp,
else reference; in each case the first that supports the op's dtype (:data:`LOSS_DTYPES`:
float64 features on CUDA go to cpp, as the triton kernels take fp32/fp16/bf16 only).

Under ``torch.compile`` the choice is made once, when the op is traced
(:func:`resolve_backend` is an ``assume_constant_result``): a ``backend=`` argument is part of
the traced call and a new value recompiles, but ``use_backend()`` and ``MIUE_BACKEND``
changed after the first compilation are not seen by the compiled code (no guard is
installed on them). Pass ``backend=`` to switch backends under ``torch.compile``, or call
``torch.compiler.reset()`` after changing the others.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from miue.ops._extension import cpp_has_cuda, load_extension

AUTO = "auto"

# What every backend implements, per op module (miue/ops/<op>.py): the backend functions its custom
# ops call (tests/test_dispatch.py checks both against the modules' sources and the backends).
OP_BACKEND_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "grouped_normalize": ("grouped_normalize",),
    "supcon_loss": ("supcon_fwd", "supcon_bwd"),
    "intra_class_cosine_loss": ("intra_class_fwd", "intra_class_bwd"),
    "pgd_linf_step": ("pgd_linf_step_",),
    "project_linf": ("project_linf_",),
}
OP_FUNCTIONS = tuple(f for functions in OP_BACKEND_FUNCTIONS.values() for f in functions)


@dataclass(frozen=True)
class Backend:
    """One implementation of the ``miue::`` ops: ``module`` (imported on first use) defines every
    function of :data:`OP_FUNCTIONS`; ``devices`` the device types it can ever run on;
    ``loss_dtypes`` the feature dtypes of its loss ops (None: any floating dtype; the PGD ops take
    every floating dtype); ``available(device)`` whether it is loaded and runs there now."""

    name: str
    module: str
    devices: tuple[str, ...]
    loss_dtypes: tuple[torch.dtype, ...] | None
    available: Callable[[torch.device], bool]

    def implementation(self):
        return _module(self.module)

    def missing(self) -> list[str]:
        """The functions of :data:`OP_FUNCTIONS` its module lacks (a test keeps this empty)."""
        impl = self.implementation()
        return [f for f in OP_FUNCTIONS if not callable(getattr(impl, f, None))]


@functools.lru_cache(maxsize=None)
def _module(name: str):
    """The implementation module, imported once (every op call asks for it)."""
    return importlib.import_module(name)


def _cpp_available(device: torch.device) -> bool:
    if not load_extension():
        return False
    return device.type == "cpu" or (device.type == "cuda" and cpp_has_cuda())


def _triton_available(device: torch.device) -> bool:
    if not _triton_importable():
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and triton_interpret()


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("reference", "miue.ops.reference", ("cpu", "cuda", "*"), None, lambda device: True),
    Backend("cpp", "miue.ops._cpp", ("cpu", "cuda"), (torch.float64, torch.float32, torch.float16, torch.bfloat16),
            lambda device: _cpp_available(device)),
    Backend("triton", "miue.kernels", ("cuda", "cpu (TRITON_INTERPRET=1)"), (torch.float32, torch.float16, torch.bfloat16),
            lambda device: _triton_available(device)),
)}
BACKENDS = tuple(REGISTRY)
# Feature dtypes of the loss ops per backend (the records' loss_dtypes)
LOSS_DTYPES: dict[str, tuple[torch.dtype, ...] | None] = {n: b.loss_dtypes for n, b in REGISTRY.items()}

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("miue_backend", default=None)


# --------------------------------------------------------------------------- triton


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    """Whether triton and the kernel package import (imports triton on first call)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        from miue import kernels
    except Exception as exc:
        warnings.warn(f"miue: the triton backend failed to import ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=3)
        return False
    return hasattr(kernels, "supcon_fwd")


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------- queries


def backend_supports(name: str, device: torch.device) -> bool:
    """Whether backend ``name`` is loaded and can run on tensors on ``device``."""
    if name not in REGISTRY:
        raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {name!r}")
    return REGISTRY[name].available(torch.device(device))


def available_backends() -> list[str]:
    """Backends that loaded and can run on at least one device of this machine."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return [b for b in BACKENDS if any(backend_supports(b, d) for d in devices)]


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS + (AUTO,):
        raise ValueError(f"{what} must be one of {BACKENDS + (AUTO,)}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force a backend inside a ``with`` block (``None`` or ``"auto"`` restores auto choice)."""
    if name is not None:
        _check_name(name, "use_backend(name)")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def supports_dtype(name: str, dtype: torch.dtype | None) -> bool:
    """Whether backend ``name``'s loss ops take features of ``dtype`` (None: any)."""
    allowed = LOSS_DTYPES[name]
    return dtype is None or allowed is None or dtype in allowed


def _constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing torch._dynamo (a third of
    ``import miue``'s time) when nothing has imported it yet: the mark is the attribute that
    function sets (torch 2.1 to 2.14; tests/test_compile_cpu.py checks it on the installed torch)."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


def _auto(device: torch.device, dtype: torch.dtype | None = None) -> str:
    order = ("triton", "cpp", "reference") if device.type == "cuda" else ("cpp", "reference")
    for name in order:
        if supports_dtype(name, dtype) and backend_supports(name, device):
            return name
    return "reference"


@_constant_result
def resolve_backend(backend: str | None, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The concrete backend an op on ``device`` runs with (see the module docstring);
    ``dtype``: the features' dtype of a loss op (the auto choice skips backends without it;
    None for the PGD ops)."""
    if backend is not None:
        name, source = _check_name(backend, "backend"), "backend="
    elif _forced.get() is not None:
        name, source = _forced.get(), "use_backend()"
    elif os.environ.get("MIUE_BACKEND"):
        name, source = _check_name(os.environ["MIUE_BACKEND"], "MIUE_BACKEND"), "MIUE_BACKEND"
    else:
        name, source = AUTO, "auto"
    if name == AUTO:
        return _auto(device, dtype)
    if not backend_supports(name, device):
        raise RuntimeError(
            f"miue: backend {name!r} (chosen by {source}) cannot run on {device.type} tensors here; "
            f"available backends: {available_backends()}"
            + (" (the triton backend needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors)" if name == "triton" else "")
        )
    return name


def implementation(name: str):
    """The module that implements the ops for backend ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}")
    return REGISTRY[name].implementation()
