"""supcon_loss (SPEC §2.2): every CPU backend against the float64 reference.

Tolerances: fp32 within 1e-5 relative of the float64 reference for the loss and for the
gradient (‖Δg‖ ≤ 1e-5‖g‖), with absolute floors of 1e-7 (loss) and 1e-6 times the
gradient's natural scale (tests/_util.py::grad_floor) for values that are exactly zero
(B = 1, one class, D = 1). fp16/bf16: no worse than twice the
error of the same-precision eager PyTorch version (miue.ops.reference.eager_supcon_loss run in
that dtype), plus 1e-5 (loss) or, for the gradient, what the dtype cannot represent
(its smallest normal number per element).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import miue
from miue.ops import reference as R

from _util import cases_for, grad_floor, loss_and_grad, make_features, rel_err, supcon_dz_bound
from _util import cpu_backends

BACKENDS = cpu_backends()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no compiled/triton CPU backend")


def oracle(f, y, tau=0.1):
    return loss_and_grad(lambda x: miue.supcon_loss(x, y, tau, backend="reference"), f.double())


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data(), tau=st.sampled_from([0.1, 0.1, 0.07, 0.5]))
def test_supcon_fp32_matches_float64_reference(backend, data, tau):
    case = data.draw(cases_for(backend))
    f, y = make_features(**case)
    loss, grad = loss_and_grad(lambda x: miue.supcon_loss(x, y, tau, backend=backend), f)
    ref_loss, ref_grad = oracle(f, y, tau)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32 and grad.shape == f.shape
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()) + 1e-7, (loss.item(), ref_loss.item())
    floor = grad_floor(f, supcon_dz_bound(f.shape[0], tau))
    assert (grad.double() - ref_grad).norm().item() <= 1e-5 * ref_grad.norm().item() + floor, rel_err(grad, ref_grad)
    for i in case["null_rows"]:
        assert grad[i].abs().sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_supcon_low_precision_no_worse_than_eager(backend, data):
    case = data.draw(cases_for(backend, max_b=300, max_d=512, dtypes=(torch.float16, torch.bfloat16)))
    f, y = make_features(**case)
    loss, grad = loss_and_grad(lambda x: miue.supcon_loss(x, y, backend=backend), f)
    assert grad.dtype == f.dtype
    ref_loss, ref_grad = oracle(f, y)
    pt_loss, pt_grad = loss_and_grad(lambda x: R.eager_supcon_loss(x, y), f)
    pt_loss_err = abs(pt_loss.item() - ref_loss.item())
    pt_grad_err = (pt_grad.double() - ref_grad).norm().item()
    gnorm = ref_grad.norm().item()
    # The eager version overflows in fp16 (a row sum of exp(1/τ) terms passes 65504) or
    # divides 0/0 at null rows: then it is NaN and only our own bound applies.
    loss_bound = 2 * pt_loss_err + 1e-5 if pt_loss_err == pt_loss_err else float("inf")
    grad_bound = 2 * pt_grad_err + 1e-5 * gnorm if pt_grad_err == pt_grad_err else float("inf")
    assert abs(loss.item() - ref_loss.item()) <= min(loss_bound, 1e-3 * abs(ref_loss.item()) + 1e-5)
    # gradients below the dtype's normal range flush; rounding of z at the dtype's unit
    floor = torch.finfo(f.dtype).tiny * f.numel() ** 0.5 + grad_floor(f, supcon_dz_bound(f.shape[0], 0.1), torch.finfo(f.dtype).eps)
    assert (grad.double() - ref_grad).norm().item() <= min(grad_bound, 3e-2 * gnorm) + floor


@pytest.mark.parametrize("backend", BACKENDS)
def test_supcon_float64_backend(backend):
    if backend == "triton":
        pytest.skip("the triton backend computes in fp32")
    f, y = make_features(100, 64, num_classes=5, seed=1, dtype=torch.float64)
    loss, grad = loss_and_grad(lambda x: miue.supcon_loss(x, y, backend=backend), f)
    ref_loss, ref_grad = oracle(f, y)
    assert abs(loss.item() - ref_loss.item()) < 1e-12
    assert rel_err(grad, ref_grad) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_supcon_matches_official_fp32(backend):
    f, y = make_features(256, 256, num_classes=10, seed=2, spread=0.5)
    ours = miue.supcon_loss(f, y, backend=backend)
    official = R.official_supcon_loss(f.double(), y)
    assert abs(ours.item() - official.item()) <= 1e-5 * abs(official.item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_supcon_edge_cases(backend):
    # B = 1 and a single class give exactly zero loss and gradient
    for f, y in [(torch.randn(1, 7), torch.tensor([4])), (torch.randn(6, 3), torch.full((6,), 2))]:
        loss, grad = loss_and_grad(lambda x, y=y: miue.supcon_loss(x, y, backend=backend), f)
        assert loss.item() == 0.0 and grad.abs().max().item() == 0.0
    # all rows null: every logit is 0
    f, y = torch.zeros(5, 4), torch.tensor([0, 0, 1, 1, 1])
    loss, grad = loss_and_grad(lambda x: miue.supcon_loss(x, y, backend=backend), f)
    ref_loss, _ = oracle(f, y)
    assert abs(loss.item() - ref_loss.item()) < 1e-6 and grad.abs().max().item() == 0.0
    # labels are compared for equality only: any integer values
    f = torch.randn(6, 3)
    a = miue.supcon_loss(f, torch.tensor([-5, 10**12, -5, 3, 3, 10**12]), backend=backend)
    b = miue.supcon_loss(f, torch.tensor([0, 1, 0, 2, 2, 1]), backend=backend)
    assert a.item() == b.item()
    # tiny temperature: no overflow
    f, y = make_features(40, 8, num_classes=3, seed=5, spread=0.05)
    loss, grad = loss_and_grad(lambda x: miue.supcon_loss(x, y, 0.01, backend=backend), f)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_supcon_noncontiguous_equals_contiguous(backend):
    f, y = make_features(33, 17, num_classes=4, seed=9)
    wide = torch.randn(33, 34)
    wide[:, 1::2] = f
    a = miue.supcon_loss(wide[:, 1::2], y, backend=backend)
    b = miue.supcon_loss(f.contiguous(), y, backend=backend)
    assert abs(a.item() - b.item()) <= 1e-6 * abs(b.item())


@pytest.mark.parametrize("backend", [None, "reference"] + BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_module_form_is_the_op_bitwise(backend, dtype):
    """miue.ops.MIUESupConLoss(τ, eps, backend=...)(features, labels) is supcon_loss(features,
    labels, τ, eps, backend=...): the same loss and gradient, bit for bit."""
    f, y = make_features(37, 19, num_classes=4, seed=11, dtype=dtype, null_rows=(3,))
    module = miue.ops.MIUESupConLoss(0.2, 1e-3, backend=backend)  # an eps that changes the loss's bits
    assert isinstance(module, torch.nn.Module) and not list(module.parameters())
    assert "temperature=0.2" in repr(module)
    got = loss_and_grad(lambda x: module(x, y), f)
    want = loss_and_grad(lambda x: miue.supcon_loss(x, y, 0.2, 1e-3, backend=backend), f)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # the defaults are the op's
    assert torch.equal(miue.ops.MIUESupConLoss()(f, y), miue.supcon_loss(f, y))
