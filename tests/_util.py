"""Helpers shared by the tests: input generation and error measures."""

from __future__ import annotations

import torch

CPU = torch.device("cpu")


def cpu_backends(include_reference: bool = False) -> list[str]:
    """The backends that run on CPU tensors here (triton: under TRITON_INTERPRET=1, which
    tests/conftest.py sets where torch sees no GPU)."""
    from miue.ops._backend import backend_supports

    names = ["reference"] if include_reference else []
    return names + [b for b in ("cpp", "triton") if backend_supports(b, CPU)]


def cuda_backends() -> list[str]:
    from miue.ops._backend import backend_supports

    if not torch.cuda.is_available():
        return []
    return [b for b in ("reference", "cpp", "triton") if backend_supports(b, torch.device("cuda"))]


def make_features(B, D, *, num_classes, seed, dtype=torch.float32, spread=1.0, null_rows=(), layout="contiguous",
                  label_dtype=torch.int64, labels="random"):
    """Features and labels for op tests.

    spread: within-class noise relative to the class centre (small = tight clusters, where
    positives' logits approach 1/τ and cancellations are hardest). layout: "contiguous",
    "transposed" (column-major storage), "strided" (every other column of a wider tensor).
    labels: "random", "same" (one class), "distinct" (all different; needs num_classes >= B).
    """
    g = torch.Generator().manual_seed(seed)
    if labels == "same":
        y = torch.zeros(B, dtype=torch.int64)
    elif labels == "distinct":
        y = torch.randperm(num_classes, generator=g)[:B]
    else:
        y = torch.randint(0, num_classes, (B,), generator=g)
    centres = torch.randn(num_classes, D, generator=g, dtype=torch.float64)
    f64 = centres[y] + spread * torch.randn(B, D, generator=g, dtype=torch.float64)
    for i in null_rows:
        if i < B:
            f64[i] = 0
    f = f64.to(dtype)
    if layout == "transposed":
        f = f.T.contiguous().T
    elif layout == "strided":
        wide = torch.zeros(B, 2 * D, dtype=dtype)
        wide[:, ::2] = f
        f = wide[:, ::2]
    assert torch.equal(f, f64.to(dtype))
    return f, y.to(label_dtype)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual - expected‖ / ‖expected‖ (in float64); 0/0 = 0."""
    a, e = actual.detach().double(), expected.detach().double()
    num = (a - e).norm().item()
    den = e.norm().item()
    return num / den if den > 0 else num


def loss_and_grad(fn, features):
    f = features.detach().clone().requires_grad_(True)
    loss = fn(f)
    (g,) = torch.autograd.grad(loss, f)
    return loss.detach(), g


# --------------------------------------------------------------------------- hypothesis cases

from hypothesis import strategies as st  # noqa: E402


@st.composite
def feature_cases(draw, max_b=600, max_d=2048, max_c=1000, dtypes=(torch.float32,), max_bd=300_000):
    """A dict of keyword arguments for make_features, covering the edge cases the issues list:
    B = 1, non-powers of two, one class, all-distinct labels, null rows, non-contiguous and
    transposed storage, int32/int64 labels, tight clusters. B·D is capped at max_bd to keep
    the float64 oracle fast."""
    B = draw(st.one_of(st.just(1), st.integers(1, max_b), st.sampled_from([2, 3, 63, 64, 65, 127, 128, 129])))
    B = min(B, max_b)
    D = draw(st.one_of(st.integers(1, max_d), st.sampled_from([1, 2, 3, 31, 32, 33, 128, 511, 512, 2048])))
    D = max(1, min(D, max_d, max_bd // B))
    labels = draw(st.sampled_from(["random", "random", "same", "distinct"]))
    C = draw(st.integers(1, max_c))
    if labels == "distinct":
        C = max(C, B)
    n_null = draw(st.integers(0, 2))
    null_rows = tuple(draw(st.lists(st.integers(0, B - 1), min_size=n_null, max_size=n_null)))
    return dict(
        B=B,
        D=D,
        num_classes=C,
        labels=labels,
        null_rows=null_rows,
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(dtypes)),
        spread=draw(st.sampled_from([0.05, 0.5, 3.0])),
        layout=draw(st.sampled_from(["contiguous", "contiguous", "transposed", "strided"])),
        label_dtype=draw(st.sampled_from([torch.int64, torch.int32])),
    )


def grad_floor(f: torch.Tensor, dz_bound: float, unit: float = 1e-6) -> float:
    """Absolute error floor for a gradient w.r.t. features of a scale-invariant loss L(f/‖f‖).

    ∂L/∂f_i is ∂L/∂z_i (bounded by ``dz_bound`` per row) projected and divided by ‖f_i‖, so
    rounding at the level ``unit`` of z shows up as about unit·dz_bound/‖f_i‖ per row even
    where the exact gradient is 0 (e.g. D = 1, where every tangent vanishes)."""
    norms = f.detach().double().norm(dim=1)
    inv = torch.where(norms >= 1e-12, 1 / norms.clamp_min(1e-12), torch.zeros_like(norms))
    return unit * dz_bound * inv.norm().item()


def intra_dz_bound(y: torch.Tensor, f: torch.Tensor) -> float:
    live = f.detach().double().norm(dim=1) >= 1e-12
    n = torch.bincount(y[live].long() - y[live].long().min(), minlength=1) if live.any() else torch.zeros(1)
    pairs = (n * (n - 1)).sum().item()
    return 2 * n.max().item() / pairs if pairs > 0 else 0.0


def supcon_dz_bound(B: int, tau: float) -> float:
    return 4.0 / (B * tau)


def cases_for(backend: str, **kw):
    """feature_cases sized for a backend: small for triton, which runs in its interpreter on CPU."""
    if backend == "triton":
        kw = {**kw, "max_b": min(kw.get("max_b", 600), 160), "max_d": min(kw.get("max_d", 2048), 200),
              "max_c": min(kw.get("max_c", 1000), 40), "max_bd": 12_000}
    return feature_cases(**kw)
