"""The public ops (docs/ops.md): ``grouped_normalize``, ``supcon_loss``, ``intra_class_cosine_loss``,
``pgd_linf_step_`` and ``project_linf_``.

Each op is one ``torch.library.custom_op`` in the ``miue::`` namespace with a fake kernel
and (for the differentiable ones) a registered autograd formula, so it works under
``torch.compile`` and ``torch.library.opcheck``. The op carries the name of the backend
that runs it as its last (string) argument; the Python functions below validate their
arguments, pick the backend (:func:`miue.resolve_backend`) and call the op.

This package holds the ops stack: the argument checks (``_validate``), the backend registry
and dispatcher (``_backend``), the float64 oracle (``reference``), and the adapters of the
compiled extension ``miue._C`` (``_extension`` loads it, ``_cpp`` calls it). The kernels stay
where the project's layout puts them. Per op ``X``: the oracle is ``miue.ops.reference.X*``,
the C++ kernels are ``csrc/cpu/X.cpp`` and ``csrc/cuda/X.cu`` (schemas in ``csrc/miue.cpp``),
the Triton kernels are ``kernels/X.py`` (installed as ``miue.kernels``), and the tests are
``tests/test_X.py``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from miue.ops import _validate as V
from miue.ops._backend import implementation, resolve_backend
from miue.ops.reference import acc_dtype

def _kernel_region(t: Tensor):
    """Autocast off while a backend runs: the kernels take bf16/fp16 inputs and accumulate in
    fp32 themselves; left on, autocast would recast the BLAS products inside the C++ and
    reference kernels to bf16 (on the CPU with ``amp``, and on CUDA)."""
    if t.device.type in ("cpu", "cuda"):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


__all__ = [
    "grouped_normalize",
    "supcon_loss",
    "intra_class_cosine_loss",
    "pgd_linf_step_",
    "project_linf_",
]


# =========================================================================== grouped_normalize


@torch.library.custom_op("miue::grouped_normalize", mutates_args=())
def _grouped_normalize_op(
    features: Tensor, labels: Tensor, num_classes: int, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    with _kernel_region(features):
        return tuple(implementation(backend).grouped_normalize(features, labels, num_classes))


@_grouped_normalize_op.register_fake
def _(features, labels, num_classes, backend):
    B, D = features.shape
    acc = acc_dtype(features.dtype)
    return (
        features.new_empty((B, D)),
        features.new_empty((B,), dtype=acc),
        features.new_empty((num_classes, D), dtype=acc),
        features.new_empty((num_classes,), dtype=torch.int64),
    )


def _gn_setup(ctx, inputs, output):
    features, labels, num_classes, _ = inputs
    z, inv_norm, _, class_count = output
    ctx.save_for_backward(z, inv_norm, labels)
    ctx.num_classes = num_classes
    ctx.feature_dtype = features.dtype
    ctx.mark_non_differentiable(class_count)


def _gn_backward(ctx, g_z, g_inv, g_sum, g_count):
    z, inv, labels = ctx.saved_tensors
    zf = z.to(inv.dtype)
    total = torch.zeros_like(zf) if g_z is None else g_z.to(zf.dtype)
    if g_sum is not None:
        counted = (labels >= 0) & (labels < ctx.num_classes) & (inv > 0)
        idx = torch.where(counted, labels, torch.zeros_like(labels)).long()
        total = total + g_sum.to(zf.dtype)[idx] * counted[:, None].to(zf.dtype)
    gf = (total - (total * zf).sum(1, keepdim=True) * zf) * inv[:, None]
    if g_inv is not None:  # d(1/r)/df = -f/r^3 = -z/r^2
        gf = gf - zf * (g_inv.to(zf.dtype) * inv * inv)[:, None]
    return gf.to(ctx.feature_dtype), None, None, None


_grouped_normalize_op.register_autograd(_gn_backward, setup_context=_gn_setup)


def grouped_normalize(
    features: Tensor, labels: Tensor, num_classes: int, *, backend: str | None = None, validate: bool | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalise rows and sum them per class (docs/ops.md).

    Returns ``(z, inv_norm, class_sum, class_count)``: ``z`` (B×D, features' dtype) the unit
    rows, ``inv_norm`` (B) = 1/‖f_i‖ (0 for null rows, ‖f_i‖ < 1e-12), ``class_sum`` (C×D) the
    sum of the rows of each class, ``class_count`` (C, int64) how many rows each sum holds
    (null rows and, with validation off, out-of-range labels are not counted). ``inv_norm``
    and ``class_sum`` are float32 (float64 for float64 features). Differentiable w.r.t.
    ``features`` through ``z``, ``inv_norm`` and ``class_sum``.
    """
    V.check_features(features, min_rows=1)
    labels = V.check_labels(labels, features)
    num_classes = V.check_num_classes(num_classes)
    V.check_label_range(labels, num_classes, validate)
    name = resolve_backend(backend, features.device, features.dtype)
    return _grouped_normalize_op(features, labels, num_classes, name)


# =========================================================================== supcon_loss


@torch.library.custom_op("miue::supcon_loss", mutates_args=())
def _supcon_op(
    features: Tensor, labels: Tensor, temperature: float, eps: float, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with _kernel_region(features):
        return tuple(implementation(backend).supcon_fwd(features, labels, temperature, eps))


@_supcon_op.register_fake
def _(features, labels, temperature, eps, backend):
    B, D = features.shape
    acc = acc_dtype(features.dtype)
    return (
        features.new_empty((), dtype=acc),
        features.new_empty((B, D)),
        features.new_empty((B,), dtype=acc),
        features.new_empty((B,), dtype=acc),
        features.new_empty((B,), dtype=acc),
    )


@torch.library.custom_op("miue::supcon_loss_backward", mutates_args=())
def _supcon_backward_op(
    grad: Tensor, z: Tensor, inv_norm: Tensor, P: Tensor, N: Tensor, labels: Tensor, temperature: float, backend: str
) -> Tensor:
    with _kernel_region(z):
        return implementation(backend).supcon_bwd(grad, z, inv_norm, P, N, labels, temperature)


@_supcon_backward_op.register_fake
def _(grad, z, inv_norm, P, N, labels, temperature, backend):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _supcon_setup(ctx, inputs, output):
    _, labels, temperature, _, backend = inputs
    _, z, inv_norm, P, N = output
    ctx.save_for_backward(z, inv_norm, P, N, labels)
    ctx.temperature = temperature
    ctx.backend = backend
    ctx.mark_non_differentiable(z, inv_norm, P, N)


def _supcon_backward(ctx, g_loss, *unused):
    z, inv_norm, P, N, labels = ctx.saved_tensors
    gf = _supcon_backward_op(g_loss, z, inv_norm, P, N, labels, ctx.temperature, ctx.backend)
    return gf, None, None, None, None


_supcon_op.register_autograd(_supcon_backward, setup_context=_supcon_setup)


def supcon_loss(
    features: Tensor, labels: Tensor, temperature: float = 0.1, eps: float = 1e-8, *, backend: str | None = None
) -> Tensor:
    """The MI-UE loss (docs/ops.md): supervised-contrastive loss over cosine similarities.

    ``loss = -(1/B) Σ_i log(P_i / A_i)`` with ``e_ij = exp(z_i·z_j/τ) + eps``,
    ``A_i = Σ_j e_ij`` and ``P_i = Σ_j [y_i = y_j] e_ij`` (i is its own positive); computed
    as ``mean(log1p(N_i/P_i))`` with ``N_i = A_i - P_i`` summed directly. Equal to
    the official formulation to float rounding but never builds more than tiles of the
    B×B logits. Labels are compared for equality only. Returns a 0-dim float32 tensor
    (float64 for float64 features), differentiable w.r.t. ``features``.
    """
    V.check_features(features, min_rows=1)
    labels = V.check_labels(labels, features)
    temperature = V.check_positive(temperature, "temperature")
    eps = V.check_nonnegative(eps, "eps")
    name = resolve_backend(backend, features.device, features.dtype)
    return _supcon_op(features, labels, temperature, eps, name)[0]


# =========================================================================== intra_class_cosine_loss


@torch.library.custom_op("miue::intra_class_cosine_loss", mutates_args=())
def _intra_op(
    features: Tensor, labels: Tensor, num_classes: int, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with _kernel_region(features):
        return tuple(implementation(backend).intra_class_fwd(features, labels, num_classes))


@_intra_op.register_fake
def _(features, labels, num_classes, backend):
    B, D = features.shape
    acc = acc_dtype(features.dtype)
    return (
        features.new_empty((), dtype=acc),
        features.new_empty((B, D)),
        features.new_empty((B,), dtype=acc),
        features.new_empty((num_classes, D), dtype=acc),
        features.new_empty((num_classes,), dtype=torch.int64),
    )


@torch.library.custom_op("miue::intra_class_cosine_loss_backward", mutates_args=())
def _intra_backward_op(
    grad: Tensor, z: Tensor, inv_norm: Tensor, class_sum: Tensor, class_count: Tensor, labels: Tensor, backend: str
) -> Tensor:
    with _kernel_region(z):
        return implementation(backend).intra_class_bwd(grad, z, inv_norm, class_sum, class_count, labels)


@_intra_backward_op.register_fake
def _(grad, z, inv_norm, class_sum, class_count, labels, backend):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _intra_setup(ctx, inputs, output):
    _, labels, _, backend = inputs
    _, z, inv_norm, class_sum, class_count = output
    ctx.save_for_backward(z, inv_norm, class_sum, class_count, labels)
    ctx.backend = backend
    ctx.mark_non_differentiable(z, inv_norm, class_sum, class_count)


def _intra_backward(ctx, g_loss, *unused):
    z, inv_norm, class_sum, class_count, labels = ctx.saved_tensors
    gf = _intra_backward_op(g_loss, z, inv_norm, class_sum, class_count, labels, ctx.backend)
    return gf, None, None, None


_intra_op.register_autograd(_intra_backward, setup_context=_intra_setup)


def intra_class_cosine_loss(
    features: Tensor, labels: Tensor, num_classes: int, *, backend: str | None = None, validate: bool | None = None
) -> Tensor:
    """The paper's linear surrogate (docs/ops.md): minus the mean cosine similarity over ordered
    same-class pairs i ≠ j, ``-(1/P) Σ_c (‖S_c‖² - n_c)`` with ``P = Σ_c n_c(n_c - 1)``;
    0 when no class has two (non-null) rows. O(B·D) work. Differentiable w.r.t. ``features``."""
    V.check_features(features, min_rows=1)
    labels = V.check_labels(labels, features)
    num_classes = V.check_num_classes(num_classes)
    V.check_label_range(labels, num_classes, validate)
    name = resolve_backend(backend, features.device, features.dtype)
    return _intra_op(features, labels, num_classes, name)[0]


# =========================================================================== PGD
#
# step_size and eps travel as 0-dim float64 tensors, not floats: a float argument of a custom
# op is specialised by torch.compile (a recompilation for every new value), while a tensor
# built from the traced float is not. A CPU scalar tensor is read on the host; a scalar tensor on delta's device is read by
# the kernel, so a captured CUDA graph can be replayed with a new step size.


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill its memory exactly once (any dimension order)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _strides(t: Tensor) -> tuple:
    return tuple(st for sz, st in zip(t.shape, t.stride()) if sz != 1)  # size-1 dims do not affect layout


def _same_layout(*tensors: Tensor) -> bool:
    first = tensors[0]
    return _dense(first) and all(_strides(t) == _strides(first) for t in tensors[1:])


def _scalar(value, name: str, device: torch.device, nonnegative: bool) -> Tensor:
    """A float or a one-element tensor as a 0-dim float64 tensor on the CPU or on ``device``."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or not (value.is_floating_point() or value.dtype in V._INT_DTYPES):
            raise ValueError(f"{name} must be a float or a one-element real tensor, got shape {tuple(value.shape)} {value.dtype}")
        if value.device.type != "cpu" and value.device != device:
            raise ValueError(f"{name} is on {value.device}; it must be on the CPU or on {device}")
        value = value.reshape(()).to(torch.float64)
        if value.device.type == "cpu" and not V._is_compiling():
            (V.check_nonnegative if nonnegative else V.check_finite)(value.item(), name)
        return value
    if V._is_compiling():
        # ones * value keeps a traced float symbolic (torch.tensor(value) would specialise it)
        return torch.ones((), dtype=torch.float64) * value
    value = (V.check_nonnegative if nonnegative else V.check_finite)(value, name)
    return torch.full((), value, dtype=torch.float64)


@torch.library.custom_op("miue::pgd_linf_step_", mutates_args=("delta",))
def _pgd_step_op(
    delta: Tensor, grad: Tensor, clean: Tensor, step_size: Tensor, eps: Tensor, lo: float, hi: float, backend: str
) -> None:
    impl = implementation(backend)
    if _same_layout(delta, grad, clean):
        impl.pgd_linf_step_(delta, grad, clean, step_size, eps, lo, hi)
    else:  # kernels walk the three tensors as one flat array: give them one layout
        work = delta.contiguous()
        impl.pgd_linf_step_(work, grad.contiguous(), clean.contiguous(), step_size, eps, lo, hi)
        delta.copy_(work)


@_pgd_step_op.register_fake
def _(delta, grad, clean, step_size, eps, lo, hi, backend):
    return None


@torch.library.custom_op("miue::project_linf_", mutates_args=("delta",))
def _project_op(delta: Tensor, clean: Tensor, eps: Tensor, lo: float, hi: float, backend: str) -> None:
    impl = implementation(backend)
    if _same_layout(delta, clean):
        impl.project_linf_(delta, clean, eps, lo, hi)
    else:
        work = delta.contiguous()
        impl.project_linf_(work, clean.contiguous(), eps, lo, hi)
        delta.copy_(work)


@_project_op.register_fake
def _(delta, clean, eps, lo, hi, backend):
    return None


def pgd_linf_step_(
    delta: Tensor,
    grad: Tensor,
    clean: Tensor,
    step_size: float | Tensor,
    eps: float | Tensor,
    lo: float = 0.0,
    hi: float = 1.0,
    *,
    backend: str | None = None,
) -> Tensor:
    """One signed-gradient L∞ PGD step on ``delta``, in place (docs/ops.md); returns ``delta``.

    ``delta <- clamp(delta - step_size*sign(grad), -eps, eps)`` then
    ``delta <- clamp(clean + delta, lo, hi) - clean``. ``sign(0) = 0``; a negative
    ``step_size`` ascends. ``clean`` is float, or uint8 read as value/255 (a true division).
    Computed in fp32 (fp64 for an fp64 ``delta``) and bitwise equal to that formula.
    ``step_size`` and ``eps`` are floats or one-element tensors (on the CPU, or on
    ``delta``'s device so that a captured CUDA graph can be replayed with new values). Under
    ``torch.compile`` a tensor never recompiles; a Python float recompiles at most once (the
    second value makes it dynamic).
    """
    V.check_pgd_args(delta, clean, grad)
    step_size = _scalar(step_size, "step_size", delta.device, nonnegative=False)
    if delta.dtype != torch.float64 and step_size.device.type == "cpu" and not V._is_compiling() \
            and abs(float(step_size)) > torch.finfo(torch.float32).max:
        # the step is taken in fp32 for a non-fp64 delta: it would be inf, and inf * sign(0) NaN
        raise ValueError(f"step_size must fit in float32 for a {delta.dtype} delta, got {float(step_size)!r}")
    eps = _scalar(eps, "eps", delta.device, nonnegative=True)
    lo, hi = V.check_box(lo, hi)
    name = resolve_backend(backend, delta.device)
    _pgd_step_op(delta, grad, clean, step_size, eps, lo, hi, name)
    return delta


def project_linf_(
    delta: Tensor, clean: Tensor, eps: float | Tensor, lo: float = 0.0, hi: float = 1.0, *, backend: str | None = None
) -> Tensor:
    """Project ``delta`` in place onto the L∞ ball of radius ``eps`` and the box
    ``lo <= clean + delta <= hi`` (the PGD step without the step); returns ``delta``."""
    V.check_pgd_args(delta, clean)
    eps = _scalar(eps, "eps", delta.device, nonnegative=True)
    lo, hi = V.check_box(lo, hi)
    name = resolve_backend(backend, delta.device)
    _project_op(delta, clean, eps, lo, hi, name)
    return delta
