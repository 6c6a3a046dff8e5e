"""The float64 oracle itself (miue.ops.reference): against direct transcriptions of the
formulas in SPEC §2 and against autograd (gradcheck)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd.gradcheck import GradcheckError

import miue
from miue.ops import reference as R

from _util import make_features


def loop_supcon(f, y, tau=0.1, eps=1e-8):
    """SPEC §2.2 written with Python loops (independent of both R.supcon_fwd and the official code)."""
    B = f.shape[0]
    z = []
    for i in range(B):
        n = math.sqrt(sum(float(v) ** 2 for v in f[i]))
        z.append([float(v) / n if n >= 1e-12 else 0.0 for v in f[i]])
    total = 0.0
    for i in range(B):
        A = P = 0.0
        for j in range(B):
            e = math.exp(sum(a * b for a, b in zip(z[i], z[j])) / tau) + eps
            A += e
            P += e if int(y[i]) == int(y[j]) else 0.0
        total += -math.log(P / A)
    return total / B


def gram_intra(f, y):
    """SPEC §2.3 as the masked Gram: mean cosine over ordered same-class pairs i != j, negated."""
    z, inv = R._normalize(f)
    live = inv > 0
    mask = (y[:, None] == y[None, :]) & live[:, None] & live[None, :]
    mask.fill_diagonal_(False)
    if mask.sum() == 0:
        return torch.zeros((), dtype=f.dtype)
    return -(z @ z.T)[mask].sum() / mask.sum()


@given(B=st.integers(1, 24), D=st.integers(1, 12), C=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       null=st.booleans(), tau=st.sampled_from([0.05, 0.1, 0.5, 2.0]))
def test_supcon_reference_matches_official_and_loops(B, D, C, seed, null, tau):
    f, y = make_features(B, D, num_classes=C, seed=seed, dtype=torch.float64, null_rows=(0,) if null else ())
    ours = R.supcon_fwd(f, y, tau, 1e-8)[0]
    official = R.official_supcon_loss(f, y, tau)
    assert abs(ours.item() - official.item()) <= 1e-10 * max(1.0, abs(official.item()))
    assert abs(ours.item() - loop_supcon(f, y, tau)) <= 1e-10 * max(1.0, abs(official.item()))
    # and the gradient of the official formulation (autograd) matches the reference backward
    fo = f.clone().requires_grad_(True)
    (go,) = torch.autograd.grad(R.official_supcon_loss(fo, y, tau), fo)
    _, z, inv, P, N = R.supcon_fwd(f, y, tau, 1e-8)
    gr = R.supcon_bwd(torch.ones((), dtype=torch.float64), z, inv, P, N, y, tau)
    if null:  # the official cosine has a (meaningless) gradient at a zero row; ours is 0 there
        go[0] = 0
        gr[0] = 0
    torch.testing.assert_close(gr, go, rtol=1e-8, atol=1e-10)


def test_supcon_official_at_realistic_size():
    f, y = make_features(256, 128, num_classes=10, seed=3, dtype=torch.float64, spread=0.3)
    ours = R.supcon_fwd(f, y, 0.1, 1e-8)[0]
    assert abs(ours.item() - R.official_supcon_loss(f, y).item()) < 1e-10
    assert abs(ours.item() - R.eager_supcon_loss(f, y).item()) < 1e-10


@given(B=st.integers(1, 30), D=st.integers(1, 10), C=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
       null=st.booleans())
def test_intra_class_reference_matches_masked_gram(B, D, C, seed, null):
    f, y = make_features(B, D, num_classes=C, seed=seed, dtype=torch.float64, null_rows=(1, 2) if null else ())
    ours = R.intra_class_fwd(f, y, C)[0]
    torch.testing.assert_close(ours, gram_intra(f, y), rtol=1e-12, atol=1e-12)


def test_grouped_normalize_reference_by_hand():
    f = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 7])  # 7 is out of range: ignored by the sums
    z, inv, s, n = R.grouped_normalize(f, y, 2)
    torch.testing.assert_close(z[0], torch.tensor([0.6, 0.8], dtype=torch.float64))
    assert z[1].abs().sum() == 0 and inv[1] == 0  # null row
    torch.testing.assert_close(inv[:1], torch.tensor([0.2], dtype=torch.float64))
    torch.testing.assert_close(s, torch.tensor([[0.6, 0.8], [1.0, 1.0]], dtype=torch.float64))
    assert n.tolist() == [1, 2]


def test_supcon_single_row_and_single_class():
    f = torch.randn(1, 5, dtype=torch.float64)
    assert R.supcon_fwd(f, torch.tensor([3]), 0.1, 1e-8)[0].item() == 0.0
    f = torch.randn(9, 5, dtype=torch.float64)
    assert R.supcon_fwd(f, torch.zeros(9, dtype=torch.long), 0.1, 1e-8)[0].item() == 0.0


def test_large_logits_do_not_overflow():
    # tau = 0.005: exp(1/tau) overflows float64; the rescaled sums do not
    f, y = make_features(20, 6, num_classes=3, seed=1, dtype=torch.float64, spread=0.1)
    loss = R.supcon_fwd(f, y, 0.005, 1e-8)[0]
    assert torch.isfinite(loss)
    f32 = f.float()
    assert torch.isfinite(R.supcon_fwd(f32, y, 0.01, 1e-8)[0])


OPS_FOR_GRADCHECK = {
    "supcon_loss": lambda f, y: miue.supcon_loss(f, y, 0.5, backend="reference"),
    "intra_class_cosine_loss": lambda f, y: miue.intra_class_cosine_loss(f, y, 3, backend="reference"),
    "grouped_normalize": lambda f, y: miue.grouped_normalize(f, y, 3, backend="reference")[:3],
}


def _gradgradcheck_or_refused(fn, f) -> bool:
    """True if the second derivative is right (gradgradcheck); False if it is refused with
    torch's error for a backward op without an autograd formula. A wrong second derivative
    (GradcheckError, a RuntimeError) or any other error fails."""
    try:
        return torch.autograd.gradgradcheck(fn, (f,))
    except GradcheckError:
        raise
    except RuntimeError as exc:
        if "no autograd formula was registered" not in str(exc):
            raise
        return False


# The losses' backward is a custom op of its own (miue::*_backward) with no autograd formula:
# no second derivative. grouped_normalize's backward is plain torch ops: it has one.
SECOND_DERIVATIVE = {"grouped_normalize"}


@pytest.mark.parametrize("op", sorted(OPS_FOR_GRADCHECK))
@pytest.mark.parametrize("null", [False, True])
def test_reference_gradcheck(op, null):
    f, y = make_features(9, 5, num_classes=3, seed=7, dtype=torch.float64, null_rows=(4,) if null else ())
    f.requires_grad_(True)
    fn = OPS_FOR_GRADCHECK[op]
    if null:  # finite differences cannot cross the null-row threshold; check the other rows
        mask = torch.ones_like(f)
        mask[4] = 0
        base = f.detach().clone()  # gradcheck perturbs f in place
        g = lambda x: fn(x * mask + base * (1 - mask), y)  # noqa: E731
    else:
        g = lambda x: fn(x, y)  # noqa: E731
    assert torch.autograd.gradcheck(g, (f,))
    # right where it exists, refused (not silently wrong) where it does not
    assert _gradgradcheck_or_refused(g, f) == (op in SECOND_DERIVATIVE)
