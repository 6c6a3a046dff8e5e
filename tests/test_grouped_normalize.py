"""grouped_normalize (SPEC §2.1): every CPU backend against the float64 reference.

Tolerances: z and class_sum within 1e-5·(row or sum norm) + 1e-7 in fp32, one rounding
of the dtype for fp16/bf16 z; inv_norm within 1e-5 relative; counts exact.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import miue

from _util import cases_for, make_features
from _util import cpu_backends

BACKENDS = cpu_backends()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no compiled/triton CPU backend")


def check_against_reference(f, y, C, backend, validate=None):
    z, inv, s, n = miue.grouped_normalize(f, y, C, backend=backend, validate=validate)
    rz, rinv, rs, rn = miue.grouped_normalize(f.double(), y, C, backend="reference", validate=validate)
    assert z.dtype == f.dtype and z.shape == f.shape
    assert inv.dtype == torch.float32 and s.dtype == torch.float32 and n.dtype == torch.int64
    assert s.shape == (C, f.shape[1]) and n.shape == (C,)
    unit = 1e-5 if f.dtype == torch.float32 else torch.finfo(f.dtype).eps
    assert (z.double() - rz).abs().max().item() <= unit + 1e-7
    torch.testing.assert_close(inv.double(), rinv, rtol=1e-5, atol=0)
    assert torch.equal(n, rn)
    tol = 1e-5 * (rn.double()[:, None] + 1) + 1e-7
    assert ((s.double() - rs).abs() <= tol).all()


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_grouped_normalize_matches_reference(backend, data):
    case = data.draw(cases_for(backend, dtypes=(torch.float32, torch.float16, torch.bfloat16)))
    f, y = make_features(**case)
    check_against_reference(f, y, case["num_classes"], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_normalize_null_rows_and_bad_labels(backend):
    f, y = make_features(40, 9, num_classes=4, seed=3, null_rows=(0, 5, 39))
    z, inv, s, n = miue.grouped_normalize(f, y, 4, backend=backend)
    assert z[[0, 5, 39]].abs().sum() == 0 and inv[[0, 5, 39]].abs().sum() == 0
    assert n.sum().item() == 37
    y_bad = y.clone()
    y_bad[[1, 2, 3]] = torch.tensor([-3, 4, 2**40])
    with pytest.raises(ValueError, match="labels must lie in"):
        miue.grouped_normalize(f, y_bad, 4, backend=backend)
    check_against_reference(f, y_bad, 4, backend, validate=False)
    _, _, _, n = miue.grouped_normalize(f, y_bad, 4, backend=backend, validate=False)
    assert n.sum().item() == 34


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_normalize_gradient(backend):
    f, y = make_features(12, 6, num_classes=3, seed=8, dtype=torch.float64 if backend != "triton" else torch.float32)
    w = [torch.randn(12, 6, dtype=f.dtype), torch.randn(12, dtype=f.dtype), torch.randn(3, 6, dtype=f.dtype)]

    def scalar(x, b):
        z, inv, s, _ = miue.grouped_normalize(x, y, 3, backend=b)
        return (z * w[0]).sum() + (inv.to(x.dtype) * w[1]).sum() + (s.to(x.dtype) * w[2]).sum()

    fa = f.clone().requires_grad_()
    (ga,) = torch.autograd.grad(scalar(fa, backend), fa)
    fr = f.double().requires_grad_()
    (gr,) = torch.autograd.grad(scalar(fr, "reference"), fr)
    assert (ga.double() - gr).norm() <= 1e-5 * gr.norm()
