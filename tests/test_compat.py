"""miue.compat: the official MI-UE loss and the classic PGD update as drop-in replacements, and
``patch`` on a module (tests/test_compat_blocks.py has the other building blocks,
tests/test_compat_replicas.py the loops of the codebases)."""

import types

import pytest
import torch

import miue.compat as C
from miue.ops.reference import official_supcon_loss


def classic_update(delta, grad, data, alpha, eps, minimize=True):
    delta = delta - alpha * grad.sign() if minimize else delta + alpha * grad.sign()
    delta = torch.clamp(delta, -eps, eps)
    return torch.clamp(data + delta, 0, 1) - data


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nt_xent_value_and_gradient_match_official(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g, dtype=dtype)
    y = torch.randint(0, 5, (64,), generator=g)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    la, lb = C.nt_xent(a, y, 0.1), official_supcon_loss(b, y, 0.1)
    assert la.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert abs(la.item() - lb.item()) <= tol * abs(lb.item())
    la.backward()
    lb.backward()
    assert (a.grad - b.grad).norm() <= tol * 10 * b.grad.norm()


@pytest.mark.parametrize("minimize", [True, False])
@pytest.mark.parametrize("u8", [False, True])
def test_pgd_update_is_the_classic_update_bitwise(minimize, u8):
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8, generator=g) if u8 else torch.rand(8, 3, 6, 6, generator=g)
    data_f = data.float() / torch.full(data.shape, 255.0) if u8 else data
    delta = (torch.rand(8, 3, 6, 6, generator=g) - 0.5) * 0.1
    grad = torch.randn(8, 3, 6, 6, generator=g)
    expected = classic_update(delta, grad, data_f, 2 / 255, 8 / 255, minimize)
    out = delta.clone()
    assert C.pgd_update_(out, grad, data, 2 / 255, 8 / 255, minimize) is out
    assert torch.equal(out, expected)
    # a leaf that requires grad (as in loops that keep delta as a parameter) is updated in place
    leaf = delta.clone().requires_grad_(True)
    C.pgd_update_(leaf, grad, data, 2 / 255, 8 / 255, minimize)
    assert torch.equal(leaf.detach(), expected)
    assert torch.equal(C.pgd_update(delta, grad, data, 2 / 255, 8 / 255, minimize), expected)


def test_patch_and_undo():
    mod = types.ModuleType("fake_poisoning_codebase")
    mod.nt_xent = lambda x, y, t=0.1: "original loss"
    mod.pgd_update = lambda *a, **k: "original update"
    h = C.patch(mod)
    assert mod.nt_xent is C.nt_xent and mod.pgd_update is C.pgd_update
    assert h.patched == ["nt_xent", "pgd_update"]
    h.undo()
    assert mod.nt_xent(None, None) == "original loss" and mod.pgd_update() == "original update"
    with C.patch(mod, ["nt_xent"]):
        assert mod.nt_xent is C.nt_xent and mod.pgd_update() == "original update"
    assert mod.nt_xent(None, None) == "original loss"
    with pytest.raises(ValueError, match="no miue.compat replacement"):
        C.patch(mod, ["sharpen"])
    with pytest.raises(LookupError, match="pgd_update_: not defined here"):
        C.patch(mod, ["pgd_update_"], strict=True)
