"""miue::supcon_views_loss (miue/ops/supcon_views_loss.py), through miue.compat's SupConLoss /
SimCLRLoss, against the formula of the codebases they stand in for (tests/replicas/cp_losses.py).

Tolerances: float64 inputs agree with the float64 formula to 1e-10 relative (loss and gradient);
fp32 inputs with the float64 formula to 1e-5 relative; bf16 inputs are judged against the same
formula computed in bf16 by PyTorch (ours may be no worse than twice its error).
"""

import importlib
import os
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import miue.compat as mc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "replicas"))

import cp_losses  # noqa: E402

sv = importlib.import_module("miue.ops.supcon_views_loss")  # the module (miue.ops.supcon_views_loss is the function)


def _formula(f, labels=None, mask=None, T=0.07, mode="all", bT=0.07, guard=True):
    return cp_losses.supcon_formula(f, labels, mask, T, mode, bT, guard)


def _labels(draw_pattern, b, g):
    if draw_pattern == "one class":
        return torch.zeros(b, dtype=torch.long)
    if draw_pattern == "all distinct":
        return torch.arange(b)
    return torch.randint(0, 3, (b,), generator=g)


@given(b=st.integers(1, 9), V=st.integers(1, 3), D=st.integers(1, 6), mode=st.sampled_from(["all", "one"]),
       kind=st.sampled_from(["labels", "mask", "none"]),
       pattern=st.sampled_from(["random", "one class", "all distinct"]), guard=st.booleans(),
       T=st.sampled_from([0.07, 0.5, 1.0]), seed=st.integers(0, 2**16))
def test_supcon_views_matches_the_float64_formula(b, V, D, mode, kind, pattern, guard, T, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(b, V, D, generator=g, dtype=torch.float64), dim=-1)
    kw = {}
    if kind == "labels":
        kw["labels"] = _labels(pattern, b, g)
    elif kind == "mask":
        kw["mask"] = (torch.rand(b, b, generator=g) > 0.5).double()
    a = f.clone().requires_grad_(True)
    ref = _formula(a, T=T, mode=mode, guard=guard, **kw)
    mine_f = f.clone().requires_grad_(True)
    loss = mc.SupConLoss(T, mode, 0.07, zero_positive="zero" if guard else "nan")(mine_f, **kw)
    if torch.isnan(ref):
        assert torch.isnan(loss)
        return
    assert torch.allclose(loss, ref, rtol=1e-10, atol=1e-12), (float(loss), float(ref))
    (g_ref,) = torch.autograd.grad(ref, a)
    (g_mine,) = torch.autograd.grad(loss, mine_f)
    assert torch.allclose(g_mine, g_ref, rtol=1e-9, atol=1e-12)


def test_supcon_views_fp32_within_1e5_of_float64():
    g = torch.Generator().manual_seed(1)
    f = torch.nn.functional.normalize(torch.randn(64, 2, 32, generator=g), dim=-1)
    y = torch.randint(0, 10, (64,), generator=g)
    ref = _formula(f.double(), y, T=0.5)
    loss = mc.SupConLoss(0.5)(f, y)
    assert loss.dtype == torch.float32
    assert abs(float(loss) - float(ref)) <= 1e-5 * abs(float(ref))


def test_supcon_views_bf16_no_worse_than_pytorch_in_bf16():
    g = torch.Generator().manual_seed(2)
    f = torch.nn.functional.normalize(torch.randn(48, 2, 16, generator=g), dim=-1)
    y = torch.randint(0, 6, (48,), generator=g)
    ref = float(_formula(f.double(), y, T=0.1))
    same_precision = float(_formula(f.bfloat16(), y, T=0.1).double())
    mine = float(mc.SupConLoss(0.1)(f.bfloat16(), y))
    assert abs(mine - ref) <= 2 * abs(same_precision - ref) + 1e-6


def test_supcon_views_chunked_equals_one_chunk(monkeypatch):
    g = torch.Generator().manual_seed(3)
    f = torch.randn(20, 3, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (20,), generator=g)
    whole = f.clone().requires_grad_(True)
    l1 = mc.SupConLoss(0.2)(whole, y)
    l1.backward()
    monkeypatch.setattr(sv, "_CHUNK_ELEMS", 60 * 7)  # 7 anchor rows of the 60 per chunk
    parts = f.clone().requires_grad_(True)
    l2 = mc.SupConLoss(0.2)(parts, y)
    l2.backward()
    assert torch.allclose(l1, l2, rtol=1e-12) and torch.allclose(whole.grad, parts.grad, rtol=1e-10, atol=1e-14)


def test_supcon_views_layouts_and_extra_dims():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(6, 2, 4, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    ref = _formula(base.reshape(6, 2, 12).contiguous(), y)
    assert torch.allclose(mc.SupConLoss()(base, y), ref)  # >3-D features are flattened, as there
    wide = torch.randn(2, 6, 12, generator=g, dtype=torch.float64).transpose(0, 1)  # non-contiguous
    assert torch.allclose(mc.SupConLoss()(wide, y), _formula(wide.contiguous(), y))
    row = torch.randn(1, 1, 12, dtype=torch.float64)
    expanded = row.expand(6, 2, 12)  # stride-0 rows
    assert torch.allclose(mc.SupConLoss()(expanded, y), _formula(expanded.contiguous(), y))


def test_supcon_views_opcheck_and_gradcheck():
    # the module's samples (all anchors, then one view without the guard, and the backward), in float64
    for s in sv.sample_inputs(dtype=torch.float64):
        torch.library.opcheck(s.op, s.args, s.kwargs)
    g = torch.Generator().manual_seed(5)
    torch.randn(12, 4, generator=g, dtype=torch.float64)  # the draws the samples take from this seed
    torch.rand(6, 6, generator=g)
    f = torch.randn(5, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 1, 2, 0])
    assert torch.autograd.gradcheck(lambda x: mc.SupConLoss(0.5, "one")(x, y), (f,))
    assert torch.autograd.gradcheck(lambda x: mc.SupConLoss(0.5)(x), (f,))


@pytest.mark.parametrize("call, match", [
    (lambda: mc.SupConLoss()(torch.randn(4, 8)), "at least 3 dimensions"),
    (lambda: mc.SupConLoss()(torch.randn(4, 2, 8), torch.arange(4), torch.eye(4)), "labels or mask, not both"),
    (lambda: mc.SupConLoss()(torch.randn(4, 2, 8), torch.arange(3)), "labels has 3 entries"),
    (lambda: mc.SupConLoss()(torch.randn(4, 2, 8), mask=torch.eye(3)), r"mask must be a \[bsz, bsz\]"),
    (lambda: mc.SupConLoss(contrast_mode="any"), "contrast_mode"),
    (lambda: mc.SupConLoss(temperature=0.0)(torch.randn(4, 2, 8)), "temperature"),
    (lambda: mc.SupConLoss()(torch.randn(4, 2, 8), torch.rand(4)), "labels must be integers"),
])
def test_supcon_views_refuses_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
