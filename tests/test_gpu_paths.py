"""Regressions of the GPU-path review (issue 39) that can be checked on the CPU: the Triton
kernels under the interpreter (with the GPU tile set where the bug lives there), launches
recorded on ``meta`` tensors (what a GPU launch would be given, without a GPU), and the
dispatch logic with a capability table. What needs a card is in tests/test_cuda.py.

Each test here failed before its fix (noted in the test).
"""

import math

import pytest
import torch

import miue
from miue.ops import _backend

from _util import loss_and_grad, make_features, rel_err
from _util import cpu_backends

CPU = torch.device("cpu")
TRITON = "triton" in cpu_backends() and _backend.triton_interpret()
needs_triton = pytest.mark.skipif(not TRITON, reason="needs the triton backend under TRITON_INTERPRET=1")


def meta(shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


# --------------------------------------------------------------------------- PGD scalars


@pytest.fixture
def no_host_to_device_copy(monkeypatch):
    """Fail on any Tensor.to / copy_ from the CPU to another device while a launcher runs
    (inside a CUDA-graph capture that is an unpinned copy: refused, or replayed from a freed
    host buffer)."""
    real_to, real_copy = torch.Tensor.to, torch.Tensor.copy_

    def guarded_to(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type != "cpu":
            raise AssertionError(f"host-to-device copy of a {tuple(self.shape)} tensor in a launcher")
        return out

    def guarded_copy(self, src, *args, **kwargs):
        if src.device.type == "cpu" and self.device.type != "cpu":
            raise AssertionError("host-to-device copy_ in a launcher")
        return real_copy(self, src, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", guarded_to)
    monkeypatch.setattr(torch.Tensor, "copy_", guarded_copy)


@needs_triton
@pytest.mark.parametrize("delta_dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("where", ["step-device", "eps-device", "both-device", "both-cpu"])
def test_pgd_scalars_are_passed_per_scalar_without_copies(no_host_to_device_copy, delta_dtype, where):
    """Each scalar is read from memory when it lives on delta's device and passed by value when
    it lives on the CPU; nothing is copied host-to-device (before the fix a device step size
    made the launcher copy the CPU ε with ``.to(device, non_blocking=True)``)."""
    from miue.kernels import _config
    from miue.kernels.pgd_linf_step import pgd_linf_step_

    n = 5000
    dev_scalar = lambda v: torch.full((), v, dtype=torch.float64, device="meta")  # noqa: E731
    cpu_scalar = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    step = dev_scalar(0.01) if where in ("step-device", "both-device") else cpu_scalar(0.01)
    eps = dev_scalar(0.03) if where in ("eps-device", "both-device") else cpu_scalar(0.03)
    delta = meta((n,), delta_dtype)
    with _config.record_launches() as launches:
        pgd_linf_step_(delta, meta((n,), delta_dtype), meta((n,), torch.uint8), step, eps, 0.0, 1.0)
    (kernel, grid, args, m), = launches
    names = kernel.arg_names
    got = dict(zip(names, args))
    for name, value, flag in (("step", step, "STEP_IN_MEMORY"), ("eps", eps, "EPS_IN_MEMORY")):
        on_device = value.device.type != "cpu"
        if on_device:  # the caller's device tensor itself, read by the kernel at replay time
            assert m[flag] and got[f"{name}_ptr"] is value
        elif delta_dtype == torch.float64:  # fp64 on the device: a fill kernel, not a copy
            assert m[flag] and got[f"{name}_ptr"].device.type == "meta" and got[f"{name}_ptr"].dtype == torch.float64
        else:
            assert not m[flag] and got[f"{name}_val"] == pytest.approx(float(value))


@needs_triton
@pytest.mark.parametrize("delta_dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_pgd_box_of_an_fp64_delta_reaches_the_kernel_in_fp64(no_host_to_device_copy, delta_dtype):
    """A Python float kernel argument is fp32 on a GPU (the interpreter keeps it fp64, so the
    bits below cannot show it): an fp64 delta's box [lo, hi] must come from float64 memory,
    filled on delta's device without a copy. Before the fix lo = −0.1 was clamped at fp32(−0.1)."""
    from miue.kernels import _config
    from miue.kernels.pgd_linf_step import pgd_linf_step_

    n, lo, hi = 5000, -0.1, 0.7
    delta = meta((n,), delta_dtype)
    scalar = torch.tensor(0.01, dtype=torch.float64)
    with _config.record_launches() as launches:
        pgd_linf_step_(delta, meta((n,), delta_dtype), meta((n,), delta_dtype), scalar, scalar, lo, hi)
    (kernel, _, args, m), = launches
    bounds = dict(zip(kernel.arg_names, args))["bounds_ptr"]
    if delta_dtype == torch.float64:
        assert m["F64"] and bounds.dtype == torch.float64 and bounds.shape == (2,) and bounds.device.type == "meta"
        # and the interpreter reads them: the same bits as the float64 reference
        g = torch.Generator().manual_seed(1)
        d0 = (torch.rand(300, generator=g, dtype=torch.float64) - 0.5) * 0.4
        clean = torch.rand(300, generator=g, dtype=torch.float64) * 0.3 - 0.05
        grad = torch.randn(300, generator=g, dtype=torch.float64)
        d, ref = d0.clone(), d0.clone()
        miue.pgd_linf_step_(d, grad, clean, 0.01, 0.2, lo, hi, backend="triton")
        miue.pgd_linf_step_(ref, grad, clean, 0.01, 0.2, lo, hi, backend="reference")
        assert torch.equal(d, ref)
    else:
        assert bounds is delta  # unused: fp32 lo and hi go by value


@needs_triton
@pytest.mark.parametrize("delta_dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_pgd_mixed_scalar_placements_compute_the_same(delta_dtype):
    """By value and in memory give the same bits (the interpreter runs both branches)."""

    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (3000,), dtype=torch.uint8, generator=g)
    d0 = ((torch.rand(3000, generator=g) - 0.5) * 0.1).to(delta_dtype)
    grad = torch.randn(3000, generator=g).to(delta_dtype)
    out = []
    for step_f64 in (True, False):
        d = d0.clone()
        step = torch.tensor(0.013, dtype=torch.float64)
        eps = torch.tensor(8 / 255, dtype=torch.float64)
        miue.pgd_linf_step_(d, grad, clean, step if step_f64 else 0.013, eps, backend="triton")
        ref = d0.clone()
        miue.pgd_linf_step_(ref, grad, clean, 0.013, 8 / 255, backend="reference")
        assert torch.equal(d, ref)
        out.append(d)
    assert torch.equal(out[0], out[1])


# --------------------------------------------------------------------------- launch device


def test_launch_runs_under_the_tensors_device(monkeypatch):
    """A launch is made under ``torch.cuda.device(<the tensors' device>)`` (Triton launches on
    the current device: before the fix cuda:1 tensors ran on cuda:0)."""
    from miue.kernels import _config

    entered = []

    class FakeDeviceGuard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(("enter", self.device))

        def __exit__(self, *exc):
            entered.append(("exit", self.device))

    class FakeKernel:
        def __getitem__(self, grid):
            def run(*args, **meta):
                entered.append(("launch", grid))
            return run

    monkeypatch.setattr(_config, "launch_device", lambda args: torch.device("cuda", 1))
    monkeypatch.setattr(torch.cuda, "device", FakeDeviceGuard)
    _config.launch(FakeKernel(), (3,), (object(),), {})
    assert entered == [("enter", torch.device("cuda", 1)), ("launch", (3,)), ("exit", torch.device("cuda", 1))]


def test_launch_device_is_the_tensors_and_refuses_a_mix():
    from miue.kernels import _config

    assert _config.launch_device((torch.zeros(2), 3, 1.5)) == CPU
    assert _config.launch_device((1, 2.0)) is None
    with pytest.raises(ValueError, match="several devices"):
        _config.launch_device((torch.zeros(2), meta((2,))))


# --------------------------------------------------------------------------- labels


def _strided_labels(y):
    wide = torch.stack([y, 1000 + y], dim=1)  # targets[:, 0]: stride 2
    return wide[:, 0]


LABEL_LAYOUTS = {
    "strided": _strided_labels,
    "expanded": lambda y: y[:1].expand(y.shape[0]),  # stride 0: one class
}


@pytest.mark.parametrize("layout", sorted(LABEL_LAYOUTS))
@pytest.mark.parametrize("backend", cpu_backends())
def test_labels_in_any_layout(backend, layout):
    """Strided and expanded labels give what their contiguous copy gives, for every op and
    backend (before the fix the Triton kernels read ``targets[:, 0]`` as contiguous: a wrong
    loss, and an expanded tensor read past its one element)."""
    B, D, C = 37, 24, 5
    f, y = make_features(B, D, num_classes=C, seed=4, spread=0.5)
    labels = LABEL_LAYOUTS[layout](y)
    assert labels.dim() == 1 and labels.shape[0] == B and not labels.is_contiguous()
    dense = labels.contiguous()
    for fn in (lambda x, lab: miue.supcon_loss(x, lab, backend=backend),
               lambda x, lab: miue.intra_class_cosine_loss(x, lab, C, backend=backend)):
        loss, grad = loss_and_grad(lambda x, fn=fn: fn(x, labels), f)
        ref_loss, ref_grad = loss_and_grad(lambda x, fn=fn: fn(x, dense), f)
        assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
    out = miue.grouped_normalize(f, labels, C, backend=backend)
    ref = miue.grouped_normalize(f, dense, C, backend=backend)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- auto backend by dtype


@pytest.fixture
def every_backend_on_cuda(monkeypatch):
    """A CUDA machine with every backend built (the capability logic, without a card)."""
    monkeypatch.setattr(_backend, "backend_supports", lambda name, device: True)
    monkeypatch.delenv("MIUE_BACKEND", raising=False)


def test_auto_choice_follows_the_dtype(every_backend_on_cuda, monkeypatch):
    """float64 features on CUDA go to cpp (before the fix: triton, which raised TypeError);
    the others to triton; the PGD ops (dtype None) to triton."""
    cuda = torch.device("cuda")
    assert _backend.resolve_backend(None, cuda, torch.float64) == "cpp"
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        assert _backend.resolve_backend(None, cuda, dt) == "triton"
    assert _backend.resolve_backend(None, cuda) == "triton"
    assert _backend.resolve_backend(None, CPU, torch.float64) == "cpp"
    # a CUDA build without the cpp CUDA kernels: float64 falls back to the reference
    monkeypatch.setattr(_backend, "backend_supports", lambda name, device: name != "cpp")
    assert _backend.resolve_backend(None, cuda, torch.float64) == "reference"


def test_capability_table_matches_the_kernels():
    """LOSS_DTYPES says what the loss ops of each backend take (checked on the CPU for cpp and,
    under the interpreter, triton: a dtype outside the table must be refused)."""
    f, y = make_features(6, 4, num_classes=2, seed=0)
    for name in cpu_backends(include_reference=True):
        for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
            if _backend.supports_dtype(name, dt):
                miue.supcon_loss(f.to(dt), y, backend=name)
            else:
                with pytest.raises(TypeError, match="float64"):
                    miue.supcon_loss(f.to(dt), y, backend=name)


# --------------------------------------------------------------------------- fp16 backward weights


def _angled_classes(B, D, C, spread, seed=0):
    """Classes at equal angles in a plane (C = 2: opposite; C = 3: 120 degrees): the
    negatives' weights exp((s - 1)/tau)/A fall to 1e-8 at tau = 0.1, below fp16's subnormals."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.arange(C, dtype=torch.float64) * 2 * math.pi / C
    centres = torch.zeros(C, D, dtype=torch.float64)
    centres[:, 0], centres[:, 1] = ang.cos(), ang.sin()
    y = torch.arange(B) % C
    return (centres[y] + spread * torch.randn(B, D, generator=g, dtype=torch.float64)).half(), y


@needs_triton
@pytest.mark.parametrize("C,spread", [(3, 0.03), (2, 0.1), (2, 0.03)])
def test_fp16_backward_keeps_tiny_weights(monkeypatch, C, spread):
    """The fp16 GPU path (fp16 dot operands; MIUE_TRITON_TILES=gpu runs it here) against the
    float64 reference, with the upstream gradient a GradScaler gives (2**16), so the gradient
    itself is well inside fp16's range while the weights are not. Bound: 1e-2 relative (ten
    times fp16's unit roundoff), fixed, not taken from eager fp16 (which overflows to NaN
    here). Before the fix (weights cast unscaled) the error was 0.18, 0.62 and 1.0."""
    monkeypatch.setenv("MIUE_TRITON_TILES", "gpu")
    f, y = _angled_classes(64, 32, C, spread)
    scale = 2.0**16
    _, grad = loss_and_grad(lambda x: scale * miue.supcon_loss(x, y, backend="triton"), f)
    _, ref = loss_and_grad(lambda x: scale * miue.supcon_loss(x, y, backend="reference"), f.double())
    assert grad.dtype == torch.float16
    assert rel_err(grad, ref) <= 1e-2


# --------------------------------------------------------------------------- int64 offsets


@needs_triton
def test_int64_offsets_chosen_past_2_31():
    """Row offsets row·D switch to int64 once B·D reaches 2**31 (4.2 M rows of 512 features);
    recorded on meta tensors, as a GPU launch would get them. Before the fix every row kernel
    indexed in int32."""
    from miue.kernels import _config, intra_class_cosine_loss as intra, supcon_loss as supcon
    from miue.kernels.grouped_normalize import grouped_normalize

    big, small = (4_200_000, 512), (1000, 512)
    for shape, expect in ((big, True), (small, False)):
        B, D = shape
        f, y = meta(shape, torch.float16), torch.zeros(B, dtype=torch.int64, device="meta")
        with _config.record_launches() as launches:
            grouped_normalize(f, y, 10)
            loss, z, inv, P, N = supcon.supcon_fwd(f, y, 0.1, 1e-8)
            supcon.supcon_bwd(torch.ones((), device="meta"), z, inv, P, N, y, 0.1)
            # D > 256: the buffer and _project_kernel
            supcon.supcon_bwd(torch.ones((), device="meta"), meta((B, 600), torch.float16), inv, P, N, y, 0.1)
            intra.intra_class_bwd(torch.ones((), device="meta"), z, inv, meta((10, D)),
                                  torch.ones(10, dtype=torch.int64, device="meta"), y)
        rows = [(k.__name__, m["I64"]) for k, _, _, m in launches if "I64" in m]
        kernels = {k.__name__ for k, *_ in launches}
        assert {"_normalize_kernel", "_segment_scan_kernel", "_supcon_fwd_kernel", "_supcon_bwd_kernel",
                "_project_kernel", "_intra_bwd_kernel"} <= kernels
        assert all(flag == expect for _, flag in rows), rows


@needs_triton
def test_column_offsets_past_2_31_on_column_major_features():
    """Column-major features with a column stride of 2**30: the third column starts at element
    2**31, so ``c * stride_fd`` must be int64 as well as the row offsets (before the fix the
    interpreter read wrapped offsets, as a GPU would). 4 GiB of address space, a few pages used."""
    import importlib

    kn = importlib.import_module("miue.kernels.grouped_normalize")  # miue.kernels.grouped_normalize: the function

    B, D, S = 4, 3, 2**30
    store = torch.empty((D - 1) * S + B, dtype=torch.float16)  # never touched but for 12 elements
    f = store.as_strided((B, D), (1, S))
    dense = torch.randn(B, D, generator=torch.Generator().manual_seed(0)).half()
    f.copy_(dense)
    y = torch.tensor([0, 1, 0, 1])
    z, inv = kn.normalize(f)
    z_ref, inv_ref = kn.normalize(dense)
    assert torch.equal(z, z_ref) and torch.equal(inv, inv_ref)
    sums, counts = kn.class_sums(f, inv, y, 2)
    sums_ref, _ = kn.class_sums(dense, inv_ref, y, 2)
    assert torch.equal(sums, sums_ref) and counts.tolist() == [2, 2]


@needs_triton
@pytest.mark.parametrize("tiles", ["interp", "gpu"])
def test_int64_path_gives_the_same_bits(monkeypatch, tiles):
    """The int64 branch of every row kernel, forced on small tensors, gives what the int32
    branch gives."""
    from miue.kernels import _common

    monkeypatch.setenv("MIUE_TRITON_TILES", tiles)
    C = 6
    results = []
    for threshold in (2**31, 0):
        monkeypatch.setattr(_common, "I64_FROM", threshold)
        out = []
        for D in (40, 300):  # the supcon backward in registers and through the buffer
            f, y = make_features(50, D, num_classes=C, seed=D, null_rows=(2,))
            out += list(miue.grouped_normalize(f, y, C, backend="triton"))
            out += list(loss_and_grad(lambda x, y=y: miue.supcon_loss(x, y, backend="triton"), f))
            out += list(loss_and_grad(lambda x, y=y: miue.intra_class_cosine_loss(x, y, C, backend="triton"), f))
        results.append(out)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_triton
def test_triton_launchers_accept_strided_labels_and_norms():
    """The kernels index labels and inv_norm as dense arrays: the launchers make them dense, so
    strided views (every other entry of a longer tensor) give the dense inputs' bits."""
    from miue.kernels import intra_class_cosine_loss as intra, supcon_loss as supcon

    B, D, C = 20, 16, 3
    f, y = make_features(B, D, num_classes=C, seed=4)
    y_strided = torch.stack([y, torch.full_like(y, 99)], 1).reshape(-1)[::2]
    assert not y_strided.is_contiguous() and torch.equal(y_strided, y)
    loss, z, inv, P, N = supcon.supcon_fwd(f, y, 0.1, 1e-8)
    loss_s, *_ = supcon.supcon_fwd(f, y_strided, 0.1, 1e-8)
    assert torch.equal(loss, loss_s)
    inv_strided = torch.stack([inv, torch.zeros_like(inv)], 1).reshape(-1)[::2]
    one = torch.ones(())
    want = supcon.supcon_bwd(one, z, inv, P, N, y, 0.1)
    assert torch.equal(supcon.supcon_bwd(one, z, inv_strided, P, N, y_strided, 0.1), want)
    _, z2, inv2, sums, counts = intra.intra_class_fwd(f, y, C)
    inv2_strided = torch.stack([inv2, torch.zeros_like(inv2)], 1).reshape(-1)[::2]
    want = intra.intra_class_bwd(one, z2, inv2, sums, counts, y)
    assert torch.equal(intra.intra_class_bwd(one, z2, inv2_strided, sums, counts, y_strided), want)
