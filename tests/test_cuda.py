"""CUDA tests (skipped without a GPU): the triton and cpp-CUDA backends against the float64
reference, opcheck on CUDA, torch.compile(mode="reduce-overhead"), a manual CUDA-graph capture
of PGD step + loss backward, and deterministic per-class sums.

Run on the GPU machine by benchmarks/gpu_check.sh.
"""

import pytest
import torch

import miue
from miue import reference as R

from _util import grad_floor, intra_dz_bound, make_features, supcon_dz_bound
from conftest import cuda_backends

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = torch.device("cuda")
BACKENDS = [b for b in cuda_backends() if b != "reference"]
SIZES = [(1, 7, 3), (5, 3, 1), (129, 65, 10), (512, 512, 10), (600, 2048, 1000), (2048, 512, 100), (4096, 2048, 10)]


def loss_grad(fn, f):
    x = f.detach().clone().requires_grad_(True)
    loss = fn(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,D,C", SIZES)
@pytest.mark.parametrize("labels", ["random", "same"])
def test_supcon_cuda_fp32(backend, B, D, C, labels):
    f, y = make_features(B, D, num_classes=C, seed=B + D, spread=0.5, null_rows=(0,) if B > 2 else (), labels=labels)
    f, y = f.to(DEV), y.to(DEV)
    loss, grad = loss_grad(lambda x: miue.supcon_loss(x, y, backend=backend), f)
    ref_loss, ref_grad = loss_grad(lambda x: miue.supcon_loss(x, y, backend="reference"), f.double())
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()) + 1e-7
    floor = grad_floor(f, supcon_dz_bound(B, 0.1))
    assert (grad.double() - ref_grad).norm().item() <= 1e-5 * ref_grad.norm().item() + floor


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,D,C", [(129, 65, 10), (512, 512, 10), (2048, 512, 100)])
def test_supcon_cuda_low_precision(backend, dtype, B, D, C):
    f, y = make_features(B, D, num_classes=C, seed=1, spread=0.5, dtype=dtype)
    f, y = f.to(DEV), y.to(DEV)
    loss, grad = loss_grad(lambda x: miue.supcon_loss(x, y, backend=backend), f)
    ref_loss, ref_grad = loss_grad(lambda x: miue.supcon_loss(x, y, backend="reference"), f.double())
    pt_loss, pt_grad = loss_grad(lambda x: R.eager_supcon_loss(x, y), f)
    pt_err = (pt_grad.double() - ref_grad).norm().item()
    bound = 2 * pt_err if pt_err == pt_err else 3e-2 * ref_grad.norm().item()
    floor = torch.finfo(dtype).tiny * f.numel() ** 0.5 + grad_floor(f, supcon_dz_bound(B, 0.1), torch.finfo(dtype).eps)
    assert abs(loss.item() - ref_loss.item()) <= 1e-3 * abs(ref_loss.item()) + 1e-5
    assert (grad.double() - ref_grad).norm().item() <= min(bound, 3e-2 * ref_grad.norm().item()) + floor


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,D,C", SIZES)
def test_intra_and_grouped_normalize_cuda(backend, B, D, C):
    f, y = make_features(B, D, num_classes=C, seed=3, null_rows=(0,))
    f, y = f.to(DEV), y.to(DEV)
    loss, grad = loss_grad(lambda x: miue.intra_class_cosine_loss(x, y, C, backend=backend), f)
    ref_loss, ref_grad = loss_grad(lambda x: miue.intra_class_cosine_loss(x, y, C, backend="reference"), f.double())
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()) + 1e-7
    assert (grad.double() - ref_grad).norm().item() <= 1e-5 * ref_grad.norm().item() + grad_floor(f, intra_dz_bound(y, f))
    z, inv, s, n = miue.grouped_normalize(f, y, C, backend=backend)
    rz, rinv, rs, rn = miue.grouped_normalize(f.double(), y, C, backend="reference")
    assert (z.double() - rz).abs().max().item() <= 1e-6
    assert torch.equal(n, rn)
    assert ((s.double() - rs).abs() <= 1e-5 * (rn.double()[:, None] + 1)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_labels_never_touch_memory_cuda(backend):
    f, y = make_features(300, 33, num_classes=5, seed=4)
    y[::3] = torch.tensor([-1, 5, 2**40, -(2**40)]).repeat(25)
    f, y = f.to(DEV), y.to(DEV)
    keep = (y >= 0) & (y < 5)
    _, _, s, n = miue.grouped_normalize(f, y, 5, backend=backend, validate=False)
    _, _, rs, rn = miue.grouped_normalize(f[keep].double(), y[keep], 5, backend="reference")
    assert torch.equal(n, rn) and ((s.double() - rs).abs() < 1e-4).all()
    torch.cuda.synchronize()


def pgd_formula(delta, grad, clean, step, eps):
    c = clean.float() / torch.full_like(clean, 255, dtype=torch.float32) if clean.dtype == torch.uint8 else clean.float()
    d = torch.clamp(delta - step * torch.sign(grad.float()), -eps, eps)
    return torch.clamp(c + d, 0, 1) - c


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clean_dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("N", [1, 512, 50_000])
def test_pgd_cuda_bitwise(backend, clean_dtype, N):
    g = torch.Generator(device="cpu").manual_seed(N)
    shape = (N, 3, 32, 32)
    delta = ((torch.rand(shape, generator=g) * 2 - 1) * 0.05).to(DEV)
    grad = torch.randn(shape, generator=g).to(DEV)
    grad[..., 0] = 0
    clean = (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) if clean_dtype == torch.uint8 else torch.rand(shape, generator=g)).to(DEV)
    expected = pgd_formula(delta, grad, clean, 2 / 255, 8 / 255)
    out = delta.clone()
    miue.pgd_linf_step_(out, grad, clean, 2 / 255, 8 / 255, backend=backend)
    assert torch.equal(out, expected)
    out = delta.clone()
    miue.pgd_linf_step_(out, grad, clean, torch.tensor(2 / 255, device=DEV), torch.tensor(8 / 255, device=DEV), backend=backend)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_opcheck_cuda(backend):
    from test_opcheck import sample_args

    for op, args in sample_args(backend, device=DEV).values():
        torch.library.opcheck(op, args)


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean((2, 3))
        return h, self.fc(h)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_graph_capture_of_pgd_step(backend):
    """Capture loss forward/backward w.r.t. delta plus the PGD step in one CUDA graph and
    replay it with new step sizes (a device scalar)."""
    torch.manual_seed(0)
    net = TinyNet().to(DEV).eval().requires_grad_(False)
    clean = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, device=DEV)
    y = torch.randint(0, 10, (64,), device=DEV)
    delta = torch.zeros(64, 3, 16, 16, device=DEV)
    alpha = torch.tensor(0.5 / 255, dtype=torch.float64, device=DEV)

    def step():
        d = delta.detach().requires_grad_(True)
        feats, _ = net(clean.float() / 255 + d)
        (g,) = torch.autograd.grad(miue.supcon_loss(feats, y, backend=backend), d)
        miue.pgd_linf_step_(delta, g, clean, alpha, 8 / 255, backend=backend)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    start = delta.clone()
    with torch.cuda.graph(graph):
        step()
    delta.copy_(start)
    expected = start.clone()
    for a in (0.5 / 255, 0.3 / 255, 0.1 / 255):
        alpha.fill_(a)
        graph.replay()
        d = expected.detach().requires_grad_(True)
        feats, _ = net(clean.float() / 255 + d)
        (g,) = torch.autograd.grad(miue.supcon_loss(feats, y, backend=backend), d)
        miue.pgd_linf_step_(expected, g, clean, a, 8 / 255, backend=backend)
    torch.cuda.synchronize()
    diff = (delta - expected).abs()
    # identical kernels give identical results; allow a rare sign flip of a near-zero gradient
    assert (diff > 1e-6).float().mean().item() < 1e-3 and diff.max().item() <= 2 * 0.5 / 255 + 1e-6
    assert delta.abs().max().item() <= 8 / 255 + 1e-7


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_reduce_overhead(backend):
    torch._dynamo.reset()
    net = TinyNet().to(DEV).eval().requires_grad_(False)
    clean = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, device=DEV)
    y = torch.randint(0, 10, (32,), device=DEV)

    def step(delta, alpha):
        d = delta.detach().requires_grad_(True)
        feats, _ = net(clean.float() / 255 + d)
        (g,) = torch.autograd.grad(miue.supcon_loss(feats, y, backend=backend), d)
        return miue.pgd_linf_step_(delta.clone(), g, clean, alpha, 8 / 255, backend=backend)

    compiled = torch.compile(step, mode="reduce-overhead")
    delta = torch.zeros(32, 3, 16, 16, device=DEV)
    for i in range(4):
        a = torch.tensor((0.5 - 0.1 * i) / 255, dtype=torch.float64, device=DEV)
        got = compiled(delta, a).clone()
        ref = step(delta, a)
        assert (got - ref).abs().max().item() <= 1e-6
        delta = ref


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_class_sums(backend):
    f, y = make_features(5000, 129, num_classes=7, seed=11)
    f, y = f.to(DEV), y.to(DEV)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        a = miue.grouped_normalize(f, y, 7, backend=backend)[2]
        b = miue.grouped_normalize(f, y, 7, backend=backend)[2]
    finally:
        torch.use_deterministic_algorithms(old)
    assert torch.equal(a, b)


@pytest.mark.parametrize("objective", ["miue", "em"])
def test_craft_with_cuda_graphs_matches_eager(objective, caplog, monkeypatch):
    """craft_fast(cuda_graphs=True) replays a captured PGD step on full batches (the last,
    partial batch runs eagerly): the same δ as the eager engine up to rare sign flips of
    near-zero gradients, and no fallback warning (the capture really happened). One round
    with deterministic cuDNN, so that both runs train the same surrogate."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1100, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.arange(1100) % 10
    kw = dict(objective=objective, preset="paper", arch="cnn-small", rounds=1, pgd_steps=3, batch_size=512,
              device="cuda", progress=False, seed=3, compile=False, amp=False)
    eager = miue.craft_fast(x, y, cuda_graphs=False, **kw)
    with caplog.at_level("WARNING", logger="miue.craft"):
        graphed = miue.craft_fast(x, y, cuda_graphs=True, **kw)
    assert "CUDA-graph capture" not in caplog.text
    assert graphed.config["cuda_graphs"] and not eager.config["cuda_graphs"]
    assert graphed.delta.abs().max().item() <= 8 / 255 + 1e-7
    differ = (graphed.delta - eager.delta).abs() > 1e-6
    assert differ.float().mean().item() < 1e-2
    a, b = graphed.history[-1]["objective_loss"], eager.history[-1]["objective_loss"]
    assert abs(a - b) <= 1e-3 * abs(b) + 1e-5
