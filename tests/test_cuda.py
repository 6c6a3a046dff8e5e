"""CUDA tests (skipped without a GPU): the triton and cpp-CUDA backends against the float64
reference, opcheck on CUDA, torch.compile (each op with fullgraph=True, and
mode="reduce-overhead"), a manual CUDA-graph capture of PGD step + loss backward, crafting
with CUDA graphs and per backend against the reference backend, deterministic per-class sums,
and that Triton runs compiled for the card (not in its CPU interpreter).

Run on the GPU machine by benchmarks/gpu_check.sh, in stages selected by test name (``-k``),
the ones that catch the worst failures first:

1. graphs:  test_triton_compiled_not_interpreted, test_cuda_graph_capture_of_pgd_step,
            test_craft_with_cuda_graphs_matches_eager
2. compile: test_compile_each_op, test_compile_reduce_overhead
3. craft:   test_craft_fast_matches_reference
4. ops:     every other test (new tests land here unless the script names them)

The script's stage table names these functions; tests/test_gpu_check.py checks that they
exist here. Renaming one of them means editing benchmarks/gpu_check.sh too.
"""

import pytest
import torch

import miue
from miue.ops import reference as R

from _util import grad_floor, intra_dz_bound, make_features, supcon_dz_bound
from _util import cuda_backends

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = torch.device("cuda")
BACKENDS = [b for b in cuda_backends() if b != "reference"]
SIZES = [(1, 7, 3), (5, 3, 1), (129, 65, 10), (512, 512, 10), (600, 2048, 1000), (2048, 512, 100), (4096, 2048, 10)]


def loss_grad(fn, f):
    x = f.detach().clone().requires_grad_(True)
    loss = fn(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


def _triton_kernels(module):
    """(name, kernel object) of every Triton kernel defined or imported in ``module``."""
    from triton.runtime.jit import KernelInterface

    return [(name, v) for name, v in vars(module).items() if isinstance(v, KernelInterface)]


def _compiled(kernel):
    """The CompiledKernel objects a JITFunction holds: per device, the first item of its
    ``device_caches`` entry is the dict of compiled specialisations (triton 3.2 to 3.8); older
    releases keep that dict in ``cache``."""
    out = []
    caches = getattr(kernel, "device_caches", None) or getattr(kernel, "cache", None) or {}
    for entry in caches.values():
        specialisations = entry if isinstance(entry, dict) else entry[0]
        out += list(specialisations.values())
    return out


def test_triton_compiled_not_interpreted():
    """On a card the Triton kernels must be compiled for it: TRITON_INTERPRET unset (or 0),
    every kernel a JITFunction (not the interpreter's InterpretedFunction), and after one call
    of each op through the triton backend each kernel module holds compiled kernels with
    machine code (cubin or PTX). tests/conftest.py sets TRITON_INTERPRET=1 only without a GPU."""
    import os

    if not miue.ops._backend._triton_importable():
        pytest.skip("triton is not installed")
    from triton.runtime.jit import JITFunction

    import importlib

    from miue.kernels import _common

    env = os.environ.get("TRITON_INTERPRET", "")
    assert env in ("", "0"), (f"TRITON_INTERPRET={env!r} on a machine with a GPU: the Triton kernels would run in "
                              "the CPU interpreter, never compiled for the card (unset it)")
    assert not _common.interpreting()
    assert "triton" in BACKENDS, f"the triton backend does not support CUDA tensors here (backends: {BACKENDS})"

    f, y = make_features(257, 96, num_classes=10, seed=5)
    f, y = f.to(DEV), y.to(DEV)
    x = f.clone().requires_grad_(True)
    miue.supcon_loss(x, y, backend="triton").backward()
    x = f.clone().requires_grad_(True)
    miue.intra_class_cosine_loss(x, y, 10, backend="triton").backward()
    miue.grouped_normalize(f, y, 10, backend="triton")
    delta = torch.zeros(4, 3, 8, 8, device=DEV)
    clean = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, device=DEV)
    miue.pgd_linf_step_(delta, torch.randn_like(delta), clean, 1 / 255, 8 / 255, backend="triton")
    miue.project_linf_(delta, clean, 4 / 255, backend="triton")
    torch.cuda.synchronize()

    # the modules that define kernels: one per op, and the step and projection's shared kernel
    for module in [importlib.import_module(f"miue.kernels.{m}")
                   for m in ("supcon_loss", "intra_class_cosine_loss", "grouped_normalize", "_linf")]:
        kernels = _triton_kernels(module)
        assert kernels, f"no Triton kernel found in {module.__name__}"
        interpreted = [n for n, k in kernels if not isinstance(k, JITFunction)]
        assert not interpreted, f"{module.__name__}: not JIT-compiled kernels (interpreter?): {interpreted}"
        compiled = [c for _, k in kernels for c in _compiled(k)]
        assert compiled, f"{module.__name__}: no kernel was compiled for the card after running its op"
        for c in compiled:
            asm = getattr(c, "asm", {})
            assert "cubin" in asm or "ptx" in asm, f"{module.__name__}: a compiled kernel without machine code"


# torch.compile(fullgraph=True) of each op on the card, forward and (losses) backward, against eager
COMPILE_OPS = ["supcon_loss", "intra_class_cosine_loss", "grouped_normalize", "pgd_linf_step_", "project_linf_"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", COMPILE_OPS)
def test_compile_each_op(backend, op):
    torch._dynamo.reset()
    f, y = make_features(200, 64, num_classes=10, seed=7, null_rows=(0,))
    f, y = f.to(DEV), y.to(DEV)
    g = torch.Generator(device="cpu").manual_seed(7)
    delta0 = ((torch.rand(16, 3, 8, 8, generator=g) * 2 - 1) * 0.05).to(DEV)
    grad = torch.randn(16, 3, 8, 8, generator=g).to(DEV)
    clean = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g).to(DEV)

    if op in ("supcon_loss", "intra_class_cosine_loss"):
        def fn(x):
            if op == "supcon_loss":
                return miue.supcon_loss(x, y, backend=backend)
            return miue.intra_class_cosine_loss(x, y, 10, backend=backend)

        eager_loss, eager_grad = loss_grad(fn, f)
        got_loss, got_grad = loss_grad(torch.compile(fn, fullgraph=True), f)
        torch.testing.assert_close(got_loss, eager_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_grad, eager_grad, rtol=1e-4, atol=1e-6)
    elif op == "grouped_normalize":
        def fn(x):
            return miue.grouped_normalize(x, y, 10, backend=backend)

        for got, want in zip(torch.compile(fn, fullgraph=True)(f), fn(f)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        def fn(d, a):
            if op == "pgd_linf_step_":
                return miue.pgd_linf_step_(d, grad, clean, a, 8 / 255, backend=backend)
            return miue.project_linf_(d, clean, a, backend=backend)

        compiled = torch.compile(fn, fullgraph=True)
        for a in (2 / 255, 1 / 255):
            a = torch.tensor(a, dtype=torch.float64, device=DEV)
            assert torch.equal(compiled(delta0.clone(), a), fn(delta0.clone(), a))
    torch.cuda.synchronize()


@pytest.mark.parametrize("backend", BACKENDS)
def test_craft_fast_matches_reference(backend, monkeypatch):
    """One small crafting round per backend against the same run on the reference backend
    (float64 math): same surrogate (deterministic cuDNN; the backends differ only in the supcon
    loss and the PGD step), the same δ up to rare sign flips of near-zero gradients."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (600, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.arange(600) % 10
    kw = dict(preset="paper", arch="cnn-small", rounds=1, pgd_steps=3, batch_size=256, device="cuda",
              progress=False, seed=2, compile=False, amp=False, cuda_graphs=False)
    ref = miue.craft_fast(x, y, backend="reference", **kw)
    got = miue.craft_fast(x, y, backend=backend, **kw)
    assert got.config["backend"] == backend and ref.config["backend"] == "reference"
    assert got.delta.abs().max().item() <= 8 / 255 + 1e-7
    diff = (got.delta.float() - ref.delta.float()).abs()
    assert (diff > 1e-6).float().mean().item() < 1e-2, f"{(diff > 1e-6).float().mean().item():.4f} of δ differ"
    assert diff.mean().item() < 1e-2 * 8 / 255
    a, b = got.history[-1]["objective_loss"], ref.history[-1]["objective_loss"]
    assert abs(a - b) <= 1e-3 * abs(b) + 1e-5


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
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
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
@pytest.mark.parametrize("clean_dtype", [torch.uint8, torch.float32], ids=["uint8", "float32"])
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
    from test_opcheck import OPS, samples, takes_backend

    for name in OPS:
        if backend == "reference" or takes_backend(name):  # the samples of every miue:: op (miue/ops/<op>.py)
            for s in samples(name, backend, device=DEV):
                torch.library.opcheck(s.op, s.args, s.kwargs)


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


@pytest.mark.parametrize("objective", ["miue", "em", "pil"])
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


# =========================================================================== issue 39 regressions
# The GPU halves of tests/test_gpu_paths.py (what only a card can show).


@pytest.mark.parametrize("backend", BACKENDS)
def test_pgd_step_captured_with_a_device_step_and_host_eps(backend):
    """A CUDA graph of the PGD step with the step size on the device and ε a host float (the
    engine's graphs pass both kinds): the capture succeeds, and replays follow the device step
    size while ε keeps its captured value (before the fix the Triton launcher copied the host ε
    to the device inside the capture)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    clean = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g).to(DEV)
    grad = torch.randn(4, 3, 16, 16, generator=g).to(DEV)
    d = torch.zeros(4, 3, 16, 16, device=DEV)
    alpha = torch.zeros((), dtype=torch.float64, device=DEV)
    eps = 8 / 255
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        miue.pgd_linf_step_(d, grad, clean, alpha, eps, backend=backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        miue.pgd_linf_step_(d, grad, clean, alpha, eps, backend=backend)
    ref = torch.zeros_like(d)
    for step in (1 / 255, 3 / 255, 5 / 255):
        alpha.fill_(step)
        graph.replay()
        miue.pgd_linf_step_(ref, grad, clean, step, eps, backend="reference")
    torch.cuda.synchronize()
    assert torch.equal(d, ref)
    assert d.abs().max().item() <= eps + 1e-7


def test_craft_records_that_graphs_were_captured():
    """A craft that asks for CUDA graphs says in its record whether capture worked; on a card
    with our launchers it must have."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.arange(64) % 4
    result = miue.craft_fast(images, labels, preset="fast", device="cuda", compile=False, cuda_graphs=True,
                             rounds=1, train_epochs=1, pgd_steps=2, batch_size=32, train_batch_size=32,
                             arch="cnn-small", progress=False)
    assert result.config["cuda_graphs_status"] == "captured", result.config["cuda_graphs_status"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_on_a_second_device(backend):
    """Tensors on cuda:1 while cuda:0 is current: the kernels run on cuda:1."""
    dev1 = torch.device("cuda", 1)
    f, y = make_features(129, 65, num_classes=10, seed=0)
    with torch.cuda.device(0):
        loss, grad = loss_grad(lambda x: miue.supcon_loss(x, y.to(dev1), backend=backend), f.to(dev1))
    ref_loss, ref_grad = loss_grad(lambda x: miue.supcon_loss(x, y, backend="reference"), f.double())
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()) + 1e-7
    assert (grad.cpu().double() - ref_grad).norm().item() <= 1e-5 * ref_grad.norm().item() + 1e-6


def test_float64_on_cuda_with_the_default_backend():
    """float64 features on CUDA with no backend named: the auto choice takes a backend that
    supports them (before the fix: triton, TypeError)."""
    f, y = make_features(64, 16, num_classes=4, seed=0, dtype=torch.float64)
    loss, grad = loss_grad(lambda x: miue.supcon_loss(x, y.to(DEV)), f.to(DEV))
    ref_loss, ref_grad = loss_grad(lambda x: miue.supcon_loss(x, y, backend="reference"), f)
    assert abs(loss.item() - ref_loss.item()) <= 1e-10 * abs(ref_loss.item()) + 1e-12
    assert (grad.cpu() - ref_grad).norm().item() <= 1e-10 * ref_grad.norm().item() + 1e-12
    iloss = miue.intra_class_cosine_loss(f.to(DEV), y.to(DEV), 4)
    assert iloss.dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spread", [1e-2, 1e-3])
def test_converged_classes_within_the_fp32_contract(backend, spread):
    """Tight, converged classes (the projection cancels along z_i): the fp32 gradients of both
    losses within 1e-5 relative of the float64 reference, as on the CPU (before the fix the
    cpp CUDA projections accumulated in float: about 3e-4)."""
    f, y = make_features(512, 256, num_classes=10, seed=3, spread=spread)
    for fn, bound in ((lambda x, yy, b: miue.supcon_loss(x, yy, backend=b), supcon_dz_bound(512, 0.1)),
                      (lambda x, yy, b: miue.intra_class_cosine_loss(x, yy, 10, backend=b), intra_dz_bound(y, f))):
        _, grad = loss_grad(lambda x, fn=fn: fn(x, y.to(DEV), backend), f.to(DEV))
        _, ref = loss_grad(lambda x, fn=fn: fn(x, y, "reference"), f.double())
        err = (grad.cpu().double() - ref).norm().item()
        assert err <= 1e-5 * ref.norm().item() + grad_floor(f, bound), (err, ref.norm().item())


@pytest.mark.parametrize("C,spread", [(3, 0.03), (2, 0.1), (2, 0.03)])
def test_fp16_triton_backward_keeps_tiny_weights_on_the_card(C, spread):
    """The CPU test of the same name, on the card's tensor cores (fp16 operands, fp32
    accumulation): within 1e-2 relative of float64 with a GradScaler's upstream 2**16."""
    if "triton" not in BACKENDS:
        pytest.skip("no triton")
    import math

    g = torch.Generator().manual_seed(0)
    ang = torch.arange(C, dtype=torch.float64) * 2 * math.pi / C
    centres = torch.zeros(C, 32, dtype=torch.float64)
    centres[:, 0], centres[:, 1] = ang.cos(), ang.sin()
    y = torch.arange(64) % C
    f = (centres[y] + spread * torch.randn(64, 32, generator=g, dtype=torch.float64)).half()
    _, grad = loss_grad(lambda x: 2.0**16 * miue.supcon_loss(x, y.to(DEV), backend="triton"), f.to(DEV))
    _, ref = loss_grad(lambda x: 2.0**16 * miue.supcon_loss(x, y, backend="reference"), f.double())
    assert (grad.cpu().double() - ref).norm().item() <= 1e-2 * ref.norm().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_past_2_31_elements(backend):
    """4.2 M rows of 512 fp16 features (B·D > 2**31): the last rows are normalised as when
    they come alone (before the fix the Triton row offsets overflowed int32)."""
    free, _ = torch.cuda.mem_get_info()
    B, D = 4_200_000, 512
    if free < 24 * B * D:
        pytest.skip("needs about 52 GB free")
    f = torch.randn(B, D, dtype=torch.float16, device=DEV)
    y = torch.randint(0, 10, (B,), device=DEV)
    z, inv, _, counts = miue.grouped_normalize(f, y, 10, backend=backend)
    tail_z, tail_inv, _, _ = miue.grouped_normalize(f[-1000:], y[-1000:], 10, backend=backend)
    assert torch.equal(z[-1000:], tail_z) and torch.equal(inv[-1000:], tail_inv)
    assert int(counts.sum()) == B
    del f, z
    torch.cuda.empty_cache()


# =========================================================================== the 2026-12-06 review
# The GPU halves of tests/test_graph_path.py and of the review's kernel fixes in test_gpu_paths.py.


@pytest.mark.parametrize("backend", BACKENDS)
def test_supcon_fp32_stays_ieee_with_tf32_allowed_and_cublaslt(backend, monkeypatch):
    """TF32 allowed by the user and cuBLASLt preferred: the fp32 Grams must stay IEEE (the cpp
    backend's NoTF32Guard, the Triton kernels' input_precision="ieee"), within the fp32 contract."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    prev = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library("cublaslt")
    try:
        f, y = make_features(512, 512, num_classes=10, seed=5, spread=0.5)
        f, y = f.to(DEV), y.to(DEV)
        loss, grad = loss_grad(lambda x: miue.supcon_loss(x, y, backend=backend), f)
    finally:
        torch.backends.cuda.preferred_blas_library(prev)
    ref_loss, ref_grad = loss_grad(lambda x: miue.supcon_loss(x, y, backend="reference"), f.double())
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()) + 1e-7
    floor = grad_floor(f, supcon_dz_bound(512, 0.1))
    assert (grad.double() - ref_grad).norm().item() <= 1e-5 * ref_grad.norm().item() + floor


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_craft_with_cuda_graphs_on_a_second_device(caplog):
    """craft_fast(device="cuda:1") with cuda:0 current: the graph is captured on cuda:1 (before
    the fix it was captured on cuda:0's stream and could replay nothing)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1024, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.arange(1024) % 10
    kw = dict(preset="paper", arch="cnn-small", rounds=1, pgd_steps=3, batch_size=512, device="cuda:1",
              progress=False, seed=3, compile=False, amp=False)
    with torch.cuda.device(0):
        eager = miue.craft_fast(x, y, cuda_graphs=False, **kw)
        with caplog.at_level("WARNING", logger="miue.craft"):
            graphed = miue.craft_fast(x, y, cuda_graphs=True, **kw)
    assert "CUDA-graph capture" not in caplog.text and graphed.config["cuda_graphs_status"] == "captured"
    assert ((graphed.delta - eager.delta).abs() > 1e-6).float().mean().item() < 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_column_major_features_past_2_31(backend):
    """Column-major features whose third column starts at element 2**31 (4 GiB of fp16): every
    backend normalises them as their dense copy (Triton's column offsets are int64 there)."""
    free, _ = torch.cuda.mem_get_info()
    B, D, S = 4, 3, 2**30
    if free < 6 * S:
        pytest.skip("needs about 6.5 GB free")
    store = torch.empty((D - 1) * S + B, dtype=torch.float16, device=DEV)
    f = store.as_strided((B, D), (1, S))
    dense = torch.randn(B, D, dtype=torch.float16, device=DEV)
    f.copy_(dense)
    y = torch.tensor([0, 1, 0, 1], device=DEV)
    got = miue.grouped_normalize(f, y, 2, backend=backend)
    want = miue.grouped_normalize(dense, y, 2, backend=backend)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    del store, f
    torch.cuda.empty_cache()


def test_pgd_fp64_box_is_exact_on_the_card():
    """An fp64 delta clamped to a box fp32 cannot hold (lo = −0.1): Triton gives the float64
    reference's bits (before the fix lo and hi went by value as fp32)."""
    g = torch.Generator().manual_seed(1)
    d0 = ((torch.rand(5000, generator=g, dtype=torch.float64) - 0.5) * 0.4).to(DEV)
    clean = (torch.rand(5000, generator=g, dtype=torch.float64) * 0.3 - 0.05).to(DEV)
    grad = torch.randn(5000, generator=g, dtype=torch.float64).to(DEV)
    d, ref = d0.clone(), d0.clone()
    miue.pgd_linf_step_(d, grad, clean, 0.01, 0.2, -0.1, 0.7, backend="triton")
    miue.pgd_linf_step_(ref, grad, clean, 0.01, 0.2, -0.1, 0.7, backend="reference")
    assert torch.equal(d, ref)
