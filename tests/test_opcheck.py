"""torch.library.opcheck on every miue:: op and backend, and torch.compile(fullgraph=True)
smoke tests (one per op), including that new PGD step sizes do not recompile."""

import pytest
import torch

import miue
from miue.ops import reference as R

from _util import make_features
from _util import cpu_backends

BACKENDS = cpu_backends(include_reference=True)
ops = torch.ops.miue


def sample_args(backend, dtype=torch.float32, device="cpu"):
    f, y = make_features(13, 7, num_classes=3, seed=0, dtype=dtype, null_rows=(2,))
    f, y = f.to(device).requires_grad_(True), y.to(device)
    _, z, inv, P, N = R.supcon_fwd(f.detach(), y, 0.1, 1e-8)
    _, z2, inv2, s, n = R.intra_class_fwd(f.detach(), y, 3)
    g = torch.ones((), dtype=inv.dtype, device=device)
    gen = torch.Generator().manual_seed(0)
    delta = (torch.rand(2, 3, 4, 4, generator=gen) * 0.1 - 0.05).to(device)
    grad = torch.randn(2, 3, 4, 4, generator=gen).to(device)
    clean = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=gen).to(device)
    step, eps = torch.tensor(0.01, dtype=torch.float64), torch.tensor(0.03, dtype=torch.float64)
    return {
        "grouped_normalize": (ops.grouped_normalize.default, (f, y, 3, backend)),
        "supcon_loss": (ops.supcon_loss.default, (f, y, 0.1, 1e-8, backend)),
        "supcon_loss_backward": (ops.supcon_loss_backward.default, (g, z, inv, P, N, y, 0.1, backend)),
        "intra_class_cosine_loss": (ops.intra_class_cosine_loss.default, (f, y, 3, backend)),
        "intra_class_cosine_loss_backward": (ops.intra_class_cosine_loss_backward.default, (g, z2, inv2, s, n, y, backend)),
        "pgd_linf_step_": (ops.pgd_linf_step_.default, (delta, grad, clean, step, eps, 0.0, 1.0, backend)),
        "project_linf_": (ops.project_linf_.default, (delta.clone(), clean, eps.to(device), 0.0, 1.0, backend)),
    }


OP_NAMES = list(sample_args("reference"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", OP_NAMES)
def test_opcheck(backend, name):
    op, args = sample_args(backend)[name]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_opcheck_float64(backend):
    for name, (op, args) in sample_args(backend, torch.float64).items():
        if "pgd" in name or "project" in name:
            continue
        torch.library.opcheck(op, args)


def compiled_calls(backend):
    f, y = make_features(10, 6, num_classes=3, seed=1)

    def gn(x):
        z, inv, s, n = miue.grouped_normalize(x, y, 3, backend=backend)
        return z.sum() + inv.sum() + s.sum() + n.sum()

    return f, {
        "grouped_normalize": gn,
        "supcon_loss": lambda x: miue.supcon_loss(x, y, backend=backend),
        "intra_class_cosine_loss": lambda x: miue.intra_class_cosine_loss(x, y, 3, backend=backend),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["grouped_normalize", "supcon_loss", "intra_class_cosine_loss"])
def test_compile_fullgraph_loss_ops(backend, name):
    torch._dynamo.reset()
    f, fns = compiled_calls(backend)
    fn = fns[name]
    x1 = f.clone().requires_grad_(True)
    x2 = f.clone().requires_grad_(True)
    eager = fn(x1)
    compiled = torch.compile(fn, fullgraph=True)(x2)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    eager.backward()
    compiled.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_pgd_no_recompile(backend):
    torch._dynamo.reset()
    delta = torch.zeros(2, 3, 8, 8)
    grad = torch.randn(2, 3, 8, 8)
    clean = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)

    @torch.compile(fullgraph=True)
    def step(d, g, c, alpha, eps):
        miue.pgd_linf_step_(d, g, c, alpha, eps, backend=backend)
        miue.project_linf_(d, c, eps, backend=backend)
        return d

    expected = delta.clone()
    # Python floats: dynamo specialises the first value and makes the argument dynamic when
    # it sees a second one (automatic dynamic), so at most one recompilation happens.
    for alpha in (0.5 / 255, 0.45 / 255):
        step(delta, grad, clean, alpha, 8 / 255)
        miue.pgd_linf_step_(expected, grad, clean, alpha, 8 / 255, backend="reference")
    assert torch.equal(delta, expected)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(1, 6):  # the alpha ramp changes the step every round
            alpha = (0.2 + 0.04 * i) / 255
            step(delta, grad, clean, alpha, 8 / 255)
            miue.pgd_linf_step_(expected, grad, clean, alpha, 8 / 255, backend="reference")
    assert torch.equal(delta, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_pgd_tensor_step_never_recompiles(backend):
    torch._dynamo.reset()
    delta = torch.zeros(64)
    grad = torch.randn(64)
    clean = torch.rand(64)

    @torch.compile(fullgraph=True)
    def step(d, alpha):
        return miue.pgd_linf_step_(d, grad, clean, alpha, 0.03, backend=backend)

    step(delta, torch.tensor(0.01))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for a in (0.02, 0.005, -0.01):
            step(delta, torch.tensor(a))
    expected = torch.zeros(64)
    for a in (0.01, 0.02, 0.005, -0.01):
        miue.pgd_linf_step_(expected, grad, clean, a, 0.03, backend="reference")
    assert torch.equal(delta, expected)
