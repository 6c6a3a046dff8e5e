"""project_linf_ (SPEC §2.4): every backend bitwise equal to the formula of
test_pgd_linf_step.py without the step,
    delta = clamp(clean + clamp(delta, -eps, eps), lo, hi) - clean,
with uint8 clean read as the fp32 division value / 255.
"""

import pytest
import torch
from hypothesis import given

import miue

from _util import cpu_backends
from test_pgd_linf_step import formula, pgd_cases

BACKENDS = cpu_backends(include_reference=True)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=pgd_cases())
def test_project_bitwise(backend, case):
    delta, _, clean, _, eps, (lo, hi) = case
    expected = formula(delta, None, clean, 0.0, eps, lo, hi, with_step=False)
    out = delta.clone()
    miue.project_linf_(out, clean, eps, lo, hi, backend=backend)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_is_a_true_division(backend):
    # (x * (1/255)) and (x / 255) differ in the last bit for some x; we must use the division
    x = torch.arange(256, dtype=torch.uint8)
    div = x.float() / torch.full((256,), 255.0)
    mul = x.float() * (1.0 / 255.0)
    assert not torch.equal(div, mul)  # the test can tell them apart
    delta = torch.zeros(256)
    miue.project_linf_(delta, x, 1.0, -5.0, 5.0, backend=backend)  # delta stays 0 but passes through c + d - c
    expected = (div + 0) - div
    assert torch.equal(delta, expected)
    # with a box that clamps, the clean value itself is visible
    delta = torch.full((256,), 1.0)
    miue.project_linf_(delta, x, 1.0, 0.0, 1.0, backend=backend)
    assert torch.equal(delta, torch.clamp(div + 1.0, 0, 1) - div)
