"""The Triton kernels with their GPU tile configurations, run by the CPU interpreter.

``MIUE_TRITON_TILES=gpu`` makes the launchers pick what they pick on a GPU
(miue.kernels._config: supcon forward 32/64 × 64 × K tiles with column splits, backward
BLOCK_M 16/32 with the in-register branch for D <= 256 and the fp32 buffer + projection
kernel above), so the numerics of those tiles (partial edge tiles, split column ranges,
null rows, labels without positives) are checked here against the float64 oracle.

Tolerances (as in test_supcon_loss.py / test_intra_class_cosine_loss.py / test_grouped_normalize.py): fp32
within 1e-5 relative of the float64 reference for the loss and the gradient norm, with the
absolute floors of tests/_util.py for values that are exactly zero. fp16 runs the GPU's dot
path (fp16 operands, fp32 accumulation: the interpreter does that in numpy); bf16 operands are
widened to fp32 (the interpreter has no bf16 arithmetic); both must be no worse than twice
the same-precision eager PyTorch error, and within 1e-3 (loss) / 3e-2 (gradient) relative.
The PGD and normalisation configurations do not depend on the tile set; they run here too.

The last tests check that the shapes miue.aot compiles (benchmarks/aot_check.py; the ``KERNEL_*``
shapes of the op modules miue/ops/<op>.py) cover every GPU configuration the launchers can choose.
"""

import pytest
import torch

import miue
from miue import aot
from miue.ops import reference as R
from miue.ops.grouped_normalize import KERNEL_D as NORMALIZE_D
from miue.ops.intra_class_cosine_loss import KERNEL_D as INTRA_D
from miue.ops.supcon_loss import KERNEL_B as SUPCON_B
from miue.ops.supcon_loss import KERNEL_D as SUPCON_D

from _util import grad_floor, intra_dz_bound, loss_and_grad, make_features, supcon_dz_bound
from _util import cpu_backends

pytestmark = pytest.mark.skipif("triton" not in cpu_backends() or not miue.ops._backend.triton_interpret(),
                                reason="needs the triton backend under TRITON_INTERPRET=1")


@pytest.fixture
def gpu_tiles(monkeypatch):
    monkeypatch.setenv("MIUE_TRITON_TILES", "gpu")
    from miue.kernels import _config

    assert _config.gpu_tiles()
    return _config


# (B, D, num_classes, labels, null rows): B not a multiple of any tile; D <= 256 (in registers)
# and D > 256 (buffer + projection); many classes; a batch without positives; B = 1.
SUPCON_CASES = [
    dict(B=100, D=64, num_classes=10, labels="random", null_rows=(3, 50)),
    dict(B=70, D=300, num_classes=35, labels="random", null_rows=(0, 69)),
    dict(B=130, D=8, num_classes=130, labels="distinct", null_rows=(7,)),
    dict(B=33, D=256, num_classes=1, labels="same", null_rows=()),
    dict(B=1, D=64, num_classes=1, labels="random", null_rows=()),
]


def _id(c):
    return f"B{c['B']}-D{c['D']}-C{c['num_classes']}-{c['labels']}-null{len(c['null_rows'])}"


def test_switch(monkeypatch):
    from miue.kernels import _config

    monkeypatch.delenv("MIUE_TRITON_TILES", raising=False)
    assert not _config.gpu_tiles()
    monkeypatch.setenv("MIUE_TRITON_TILES", "gpu")
    assert _config.gpu_tiles()
    monkeypatch.setenv("MIUE_TRITON_TILES", "huge")
    with pytest.raises(ValueError, match="MIUE_TRITON_TILES"):
        _config.gpu_tiles()


def test_launchers_use_the_gpu_configuration(gpu_tiles):
    """What the launchers pass is what the configuration functions return for a GPU (the
    fp32 path: no interpreter-specific operand widening)."""
    from miue.kernels import supcon_loss as supcon

    B, D = 100, 300
    f, y = make_features(B, D, num_classes=5, seed=0)
    with gpu_tiles.record_launches() as launches:
        supcon.supcon_fwd(f, y, 0.1, 1e-8)
    names = [k.__name__ for k, *_ in launches]
    assert names == ["_normalize_kernel", "_supcon_fwd_kernel", "_supcon_finish_kernel"]
    kernel, grid, args, meta = launches[1]
    assert meta == gpu_tiles.supcon_fwd_config(B, D, torch.float32, gpu=True)
    assert meta["BLOCK_M"] == 32 and meta["BLOCK_N"] == 64 and meta["num_warps"] == 8
    assert grid[1] > 1  # column splits, as on a GPU
    bwd = gpu_tiles.supcon_bwd_config(B, D, torch.float32)
    assert bwd["BLOCK_M"] == 16 and not bwd["IN_REGS"]
    assert gpu_tiles.supcon_bwd_config(B, 256, torch.float32)["IN_REGS"]


def _supcon_oracle(f, y, tau):
    return loss_and_grad(lambda x: miue.supcon_loss(x, y, tau, backend="reference"), f.double())


@pytest.mark.parametrize("case", SUPCON_CASES, ids=_id)
def test_supcon_fp32(gpu_tiles, case):
    tau = 0.1
    f, y = make_features(**case, seed=1)
    loss, grad = loss_and_grad(lambda x: miue.supcon_loss(x, y, tau, backend="triton"), f)
    ref_loss, ref_grad = _supcon_oracle(f, y, tau)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()) + 1e-7, (loss.item(), ref_loss.item())
    floor = grad_floor(f, supcon_dz_bound(f.shape[0], tau))
    err = (grad.double() - ref_grad).norm().item()
    assert err <= 1e-5 * ref_grad.norm().item() + floor, err
    for i in case["null_rows"]:
        assert grad[i].abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", SUPCON_CASES[:3], ids=_id)
def test_supcon_low_precision(gpu_tiles, case, dtype):
    f, y = make_features(**case, seed=2, dtype=dtype)
    loss, grad = loss_and_grad(lambda x: miue.supcon_loss(x, y, backend="triton"), f)
    assert grad.dtype == dtype
    ref_loss, ref_grad = _supcon_oracle(f, y, 0.1)
    pt_loss, pt_grad = loss_and_grad(lambda x: R.eager_supcon_loss(x, y), f)
    pt_loss_err = abs(pt_loss.item() - ref_loss.item())
    pt_grad_err = (pt_grad.double() - ref_grad).norm().item()
    gnorm = ref_grad.norm().item()
    loss_bound = 2 * pt_loss_err + 1e-5 if pt_loss_err == pt_loss_err else float("inf")  # eager may be NaN
    grad_bound = 2 * pt_grad_err + 1e-5 * gnorm if pt_grad_err == pt_grad_err else float("inf")
    assert abs(loss.item() - ref_loss.item()) <= min(loss_bound, 1e-3 * abs(ref_loss.item()) + 1e-5)
    floor = torch.finfo(dtype).tiny * f.numel() ** 0.5 + grad_floor(f, supcon_dz_bound(f.shape[0], 0.1), torch.finfo(dtype).eps)
    assert (grad.double() - ref_grad).norm().item() <= min(grad_bound, 3e-2 * gnorm) + floor
    for i in case["null_rows"]:
        assert grad[i].abs().sum() == 0


@pytest.mark.parametrize("B,D,C", [(100, 64, 10), (70, 300, 200)])
def test_grouped_normalize_and_intra_class(gpu_tiles, B, D, C):
    f, y = make_features(B, D, num_classes=C, seed=3, null_rows=(1, B - 1))
    z, inv, s, n = miue.grouped_normalize(f, y, C, backend="triton")
    rz, rinv, rs, rn = miue.grouped_normalize(f.double(), y, C, backend="reference")
    assert (z.double() - rz).abs().max().item() <= 1e-5 + 1e-7
    torch.testing.assert_close(inv.double(), rinv, rtol=1e-5, atol=0)
    assert torch.equal(n, rn)
    assert ((s.double() - rs).abs() <= 1e-5 * (rn.double()[:, None] + 1) + 1e-7).all()
    run = lambda x, b: miue.intra_class_cosine_loss(x, y, C, backend=b)  # noqa: E731
    loss, grad = loss_and_grad(lambda x: run(x, "triton"), f)
    ref_loss, ref_grad = loss_and_grad(lambda x: run(x, "reference"), f.double())
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()) + 1e-7
    assert (grad.double() - ref_grad).norm().item() <= 1e-5 * ref_grad.norm().item() + grad_floor(f, intra_dz_bound(y, f))


@pytest.mark.parametrize("delta_dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_pgd_uint8_clean(gpu_tiles, delta_dtype):
    """Bitwise the SPEC formula; the fp64 delta with uint8 clean is the branch that did not
    compile for a GPU before (div_rn takes fp32 only)."""
    g = torch.Generator().manual_seed(4)
    shape = (3, 3, 17, 17)
    clean = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    delta = ((torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * 0.1).to(delta_dtype)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(delta_dtype)
    grad[0, 0, 0, :5] = 0
    c = clean.to(delta_dtype) / 255
    expected = (torch.clamp(c + torch.clamp(delta - 0.01 * torch.sign(grad), -0.03, 0.03), 0, 1) - c)
    out = miue.pgd_linf_step_(delta.clone(), grad, clean, torch.tensor(0.01, dtype=torch.float64),
                              torch.tensor(0.03, dtype=torch.float64), backend="triton")
    assert torch.equal(out, expected)


# --------------------------------------------------------------------------- aot coverage


TILE_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_D", "IN_REGS")


def _tiles(cfg):
    return tuple((k, cfg[k]) for k in TILE_KEYS if k in cfg) + (("num_warps", cfg["num_warps"]), ("num_stages", cfg["num_stages"]))


def test_aot_shapes_cover_every_gpu_config():
    """Every tile configuration the supcon launchers choose on a GPU for B up to 65,536 and D
    up to 4,096 is one that miue.aot compiles (so a new threshold in _config without a
    matching aot shape fails here)."""
    from miue.kernels import _config

    fwd_aot, bwd_aot = set(), set()
    for dt in aot.FEATURE_DTYPES:
        for B in SUPCON_B:
            for D in SUPCON_D:
                fwd_aot.add((dt, _tiles(_config.supcon_fwd_config(B, D, dt, gpu=True))))
                bwd_aot.add((dt, _tiles(_config.supcon_bwd_config(B, D, dt, gpu=True))))
    Bs = sorted({1, 2, 15, 16, 17, 100, 511, 512, 513, 2047, 2048, 2049, 4095, 4096, 4097, 8192, 20000, 65536})
    Ds = sorted({1, 2, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 128, 129, 255, 256, 257, 300, 512, 1000, 2048, 4096})
    for dt in aot.FEATURE_DTYPES:
        for B in Bs:
            for D in Ds:
                assert (dt, _tiles(_config.supcon_fwd_config(B, D, dt, gpu=True))) in fwd_aot, (B, D, dt)
                assert (dt, _tiles(_config.supcon_bwd_config(B, D, dt, gpu=True))) in bwd_aot, (B, D, dt)
    # the other kernels' tiles depend on D only
    for D in Ds:
        norm = {tuple(_config.normalize_config(d).items()) for d in NORMALIZE_D}
        assert tuple(_config.normalize_config(D).items()) in norm, D
        sums = {tuple(_config.class_sums_config(d).items()) for d in NORMALIZE_D}
        assert tuple(_config.class_sums_config(D).items()) in sums, D
        intra = {tuple(_config.intra_bwd_config(d).items()) for d in INTRA_D}
        assert tuple(_config.intra_bwd_config(D).items()) in intra, D


def test_aot_specialisation_of_arguments():
    """miue.aot types a launch's arguments as Triton's JIT does (pointers by dtype, i32/i64,
    an int equal to 1 folded, multiples of 16 hinted)."""
    from miue.kernels import _config, project_linf

    meta = lambda shape, dt: torch.empty(shape, dtype=dt, device="meta")  # noqa: E731
    n = 50_000 * 3 * 224 * 224
    with _config.record_launches() as launches:
        project_linf.project_linf_(meta((n,), torch.float32), meta((n,), torch.uint8),
                                   torch.tensor(0.03, dtype=torch.float64), 0.0, 1.0)
    kernel, grid, args, m = launches[0]
    assert grid[0] == -(-n // m["BLOCK"]) < 2**31
    sig, cx, attrs, opts = aot.specialize(kernel, args, m)
    assert sig["delta_ptr"] == "*fp32" and sig["clean_ptr"] == "*u8" and sig["n"] == "i64"
    assert sig["lo"] == "fp32" and cx["CLEAN_U8"] is True and cx["DO_STEP"] is False
    assert sig["hi"] == "fp32"  # floats are never specialised (1.0 stays a runtime fp32)
    idx = kernel.arg_names.index("n")
    assert ((idx,) in attrs) == (n % 16 == 0)
