"""intra_class_cosine_loss (SPEC §2.3): every CPU backend against the float64 reference.

Tolerances: fp32 loss within 1e-5 relative + 1e-7 absolute (the loss is a mean cosine in
[-1, 1]; near 0 the floor applies); gradient ‖Δg‖ ≤ 1e-5‖g‖ + a floor of 1e-6 times the
gradient's natural scale (tests/_util.py::grad_floor), for gradients that are exactly 0. fp16/bf16: gradient
relative error below 2·2⁻⁸ / 2·2⁻¹¹ (one rounding of z), loss below 1e-3 relative + 1e-5.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import miue

from _util import cases_for, grad_floor, intra_dz_bound, loss_and_grad, make_features
from _util import cpu_backends

BACKENDS = cpu_backends()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no compiled/triton CPU backend")


def run(f, y, C, backend, validate=None):
    return loss_and_grad(lambda x: miue.intra_class_cosine_loss(x, y, C, backend=backend, validate=validate), f)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_intra_class_fp32_matches_float64_reference(backend, data):
    case = data.draw(cases_for(backend))
    f, y = make_features(**case)
    C = case["num_classes"]
    loss, grad = run(f, y, C, backend)
    ref_loss, ref_grad = run(f.double(), y, C, "reference")
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()) + 1e-7
    floor = grad_floor(f, intra_dz_bound(y, f))
    assert (grad.double() - ref_grad).norm().item() <= 1e-5 * ref_grad.norm().item() + floor
    for i in case["null_rows"]:
        assert grad[i].abs().sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_intra_class_low_precision(backend, data):
    case = data.draw(cases_for(backend, max_b=300, max_d=512, dtypes=(torch.float16, torch.bfloat16)))
    f, y = make_features(**case)
    C = case["num_classes"]
    loss, grad = run(f, y, C, backend)
    ref_loss, ref_grad = run(f.double(), y, C, "reference")
    unit = torch.finfo(f.dtype).eps
    assert abs(loss.item() - ref_loss.item()) <= 1e-3 * abs(ref_loss.item()) + 1e-5
    floor = torch.finfo(f.dtype).tiny * f.numel() ** 0.5 + grad_floor(f, intra_dz_bound(y, f), unit)
    assert (grad.double() - ref_grad).norm().item() <= 2 * unit * ref_grad.norm().item() + floor


@pytest.mark.parametrize("backend", BACKENDS)
def test_intra_class_edge_cases(backend):
    # no class with two rows: loss 0, gradient 0
    f = torch.randn(4, 3)
    loss, grad = run(f, torch.tensor([0, 1, 2, 3]), 4, backend)
    assert loss.item() == 0 and grad.abs().max().item() == 0
    # identical rows in one class: loss -1
    f = torch.ones(5, 3)
    loss, _ = run(f, torch.zeros(5, dtype=torch.long), 1, backend)
    assert abs(loss.item() + 1) < 1e-6
    # null rows do not count as samples: two live rows of one class plus a null one
    f = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    loss, grad = run(f, torch.zeros(3, dtype=torch.long), 1, backend)
    assert abs(loss.item() + 1) < 1e-6 and grad[1].abs().sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_intra_class_out_of_range_labels_ignored_without_validation(backend):
    f, y = make_features(50, 16, num_classes=3, seed=4)
    y_bad = y.clone()
    y_bad[::7] = torch.tensor([-1, 3, 10**9, -(10**9), 5, 7, 99, 4])[: len(y_bad[::7])]
    with pytest.raises(ValueError, match="labels must lie in"):
        miue.intra_class_cosine_loss(f, y_bad, 3, backend=backend)
    keep = (y_bad >= 0) & (y_bad < 3)
    loss, grad = run(f, y_bad, 3, backend, validate=False)
    ref_loss, _ = run(f[keep].double(), y_bad[keep], 3, "reference")
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()) + 1e-7
    assert grad[~keep].abs().sum() == 0


@pytest.mark.parametrize("backend", [None, "reference"] + BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_module_form_is_the_op_bitwise(backend, dtype):
    """miue.ops.IntraClassCosineLoss(C, backend=...)(features, labels) is
    intra_class_cosine_loss(features, labels, C, backend=...): the same loss and gradient, bit for bit."""
    f, y = make_features(37, 19, num_classes=4, seed=11, dtype=dtype, null_rows=(3,))
    module = miue.ops.IntraClassCosineLoss(4, backend=backend)
    assert isinstance(module, torch.nn.Module) and not list(module.parameters())
    assert "num_classes=4" in repr(module)
    got = loss_and_grad(lambda x: module(x, y), f)
    want = loss_and_grad(lambda x: miue.intra_class_cosine_loss(x, y, 4, backend=backend), f)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # validate is passed on: out-of-range labels are refused unless it is off
    bad = y.clone()
    bad[0] = 9
    with pytest.raises(ValueError):
        miue.ops.IntraClassCosineLoss(4, backend=backend)(f, bad)
    assert torch.equal(miue.ops.IntraClassCosineLoss(4, backend=backend, validate=False)(f, bad),
                       miue.intra_class_cosine_loss(f, bad, 4, backend=backend, validate=False))
