"""pgd_linf_step_ (SPEC §2.4): every backend bitwise equal to the formula.

The formula is written here, independently of miue.ops.reference, in fp32 eager ops:
    d = clamp(delta - step·sign(grad), -eps, eps);  delta = clamp(clean + d, lo, hi) - clean
with uint8 clean read as the fp32 division value / 255. project_linf_ (the formula without the
step) is tested in test_project_linf.py, on the same cases.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import miue

from _util import cpu_backends

BACKENDS = cpu_backends(include_reference=True)


def clean_f32(clean):
    if clean.dtype == torch.uint8:
        return clean.float() / torch.full_like(clean, 255, dtype=torch.float32)  # tensor ÷ tensor: a true division
    return clean.float()


def formula(delta, grad, clean, step, eps, lo=0.0, hi=1.0, with_step=True):
    c = clean_f32(clean)
    d = delta.float()
    if with_step:
        d = d - step * torch.sign(grad.float())
    d = torch.clamp(d, -eps, eps)
    return torch.clamp(c + d, lo, hi) - c


@st.composite
def pgd_cases(draw):
    shape = draw(st.sampled_from([(1,), (7,), (3, 5), (2, 3, 8, 8), (5, 1, 28, 28), (4, 3, 32, 32), (70001,)]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    eps = draw(st.sampled_from([0.0, 8 / 255, 16 / 255, 0.5]))
    delta = (torch.rand(shape, generator=g) * 2 - 1) * draw(st.sampled_from([0.0, 0.01, 0.1, 1.0]))
    grad = torch.randn(shape, generator=g)
    grad[torch.rand(shape, generator=g) < 0.2] = 0.0  # sign(0) = 0
    grad[torch.rand(shape, generator=g) < 0.05] = 1e-30  # tiny but positive
    grad = grad.to(draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])))
    clean_kind = draw(st.sampled_from(["uint8", "float"]))
    if clean_kind == "uint8":
        clean = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    else:
        clean = torch.rand(shape, generator=g)
        clean[torch.rand(shape, generator=g) < 0.1] = 0.0
        clean[torch.rand(shape, generator=g) < 0.1] = 1.0
    step = draw(st.sampled_from([2 / 255, 0.2 / 255, -1 / 255, 0.0, 0.05]))
    box = draw(st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (0.2, 0.7)]))
    return delta, grad, clean, step, eps, box


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=pgd_cases())
def test_pgd_step_bitwise(backend, case):
    delta, grad, clean, step, eps, (lo, hi) = case
    expected = formula(delta, grad, clean, step, eps, lo, hi)
    out = delta.clone()
    ret = miue.pgd_linf_step_(out, grad, clean, step, eps, lo, hi, backend=backend)
    assert ret is out
    assert torch.equal(out, expected), (out - expected).abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_pgd_noncontiguous_and_channels_last(backend):
    base = torch.rand(4, 3, 8, 8) * 0.1 - 0.05
    grad = torch.randn(4, 3, 8, 8)
    clean = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    expected = formula(base, grad, clean, 0.01, 0.03)
    # channels_last everywhere: kernels walk memory directly
    d = base.clone().to(memory_format=torch.channels_last)
    miue.pgd_linf_step_(d, grad.to(memory_format=torch.channels_last), clean.to(memory_format=torch.channels_last),
                        0.01, 0.03, backend=backend)
    assert d.is_contiguous(memory_format=torch.channels_last) and torch.equal(d, expected)
    # mixed layouts and a strided view of delta: still correct, still in place
    big = torch.zeros(4, 3, 8, 16)
    view = big[..., ::2]
    view.copy_(base)
    miue.pgd_linf_step_(view, grad, clean.to(memory_format=torch.channels_last), 0.01, 0.03, backend=backend)
    assert torch.equal(big[..., ::2], expected) and big[..., 1::2].abs().sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_pgd_tensor_scalars_and_other_dtypes(backend):
    delta = torch.rand(100) * 0.1 - 0.05
    grad = torch.randn(100)
    clean = torch.rand(100)
    expected = formula(delta, grad, clean, 0.01, 0.03)
    d = delta.clone()
    miue.pgd_linf_step_(d, grad, clean, torch.tensor(0.01), torch.tensor([0.03], dtype=torch.float32), backend=backend)
    assert torch.equal(d, expected)
    # fp64 delta computes in fp64
    d64 = delta.double()
    miue.pgd_linf_step_(d64, grad, clean.double(), 0.01, 0.03, backend=backend)
    c = clean.double()
    e64 = torch.clamp(c + torch.clamp(delta.double() - 0.01 * torch.sign(grad.double()), -0.03, 0.03), 0, 1) - c
    assert torch.equal(d64, e64)
    # half delta: computed in fp32, rounded once
    dh = delta.half()
    miue.pgd_linf_step_(dh, grad, clean, 0.01, 0.03, backend=backend)
    assert torch.equal(dh, formula(delta.half(), grad, clean, 0.01, 0.03).half())
