"""miue.compat's building blocks against the formulas of the codebases they stand in for
(tests/replicas/ holds our replicas of those codebases; docs/compat.md). The updates are bitwise.
The op behind SupConLoss / SimCLRLoss, miue::supcon_views_loss, is tested against the formula in
test_supcon_views_loss.py.
"""

import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

import miue.compat as mc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "replicas"))

import cp_losses  # noqa: E402
import supcon_losses  # noqa: E402
import tap_forge  # noqa: E402
import ue_toolbox  # noqa: E402


# ----------------------------------------------------------------------------- SupConLoss, SimCLRLoss


def test_simclr_loss_keeps_the_2020_nan_and_supcon_the_guard():
    f = torch.nn.functional.normalize(torch.randn(4, 1, 8), dim=-1)  # one view, no labels: no positives
    assert torch.isnan(mc.SimCLRLoss(0.5)(f)) and torch.isnan(cp_losses.SimCLRLoss(0.5)(f))
    assert float(mc.SupConLoss()(f)) == 0 == float(supcon_losses.SupConLoss()(f))


# ----------------------------------------------------------------------------- the updates


def _cp_original(delta, grad, step):
    delta.add_(-step * torch.sign(grad)).clamp_(-1, 1)
    return delta


def test_pgd_update_alone_in_unit_space_is_contrastive_poisonings_line_bitwise(monkeypatch):
    g = torch.Generator().manual_seed(6)
    delta = torch.rand(40, 3, 8, 8, generator=g) * 2 - 1
    grad = torch.randn(40, 3, 8, 8, generator=g)
    grad[10:] = 0  # rows outside the batch
    expected = _cp_original(delta.clone(), grad, 0.1)
    calls = []
    real = mc.updates.ops.pgd_linf_step_
    monkeypatch.setattr(mc.updates.ops, "pgd_linf_step_", lambda *a, **k: calls.append(1) or real(*a, **k))
    param = torch.nn.Parameter(delta.clone())
    mc.pgd_update_(param, grad, None, 0.1, None, lo=-1, hi=1)
    assert calls, "the unit-space update must take the fused kernel"
    assert torch.equal(param.detach(), expected)


def test_pgd_update_per_channel_delta_box_is_taps_step_bitwise():
    g = torch.Generator().manual_seed(7)
    x_n = (torch.rand(16, 3, 6, 6, generator=g) - tap_forge.DM) / tap_forge.DS
    eps, ds, dm = 8.0, tap_forge.DS, tap_forge.DM
    tau0 = eps / 255 / ds * 0.05
    d0 = torch.randn(16, 3, 6, 6, generator=g) * eps / ds / 255
    grad = torch.randn(16, 3, 6, 6, generator=g)
    ref = d0.clone().requires_grad_(True)
    ref.grad = grad.clone()
    tap_forge.pgd_step(ref, x_n, tau0, dm, ds, eps)
    mine = d0.clone()
    mc.pgd_update_(mine, grad, x_n, tau0, eps / ds / 255, lo=-dm / ds, hi=(1 - dm) / ds, box="delta")
    assert torch.equal(mine, ref.detach())


@pytest.mark.parametrize("minimize", [True, False])
def test_pgd_update_general_forms_match_their_formulas(minimize):
    g = torch.Generator().manual_seed(8)
    delta = torch.randn(8, 3, 4, 4, generator=g) * 0.05
    grad = torch.randn(8, 3, 4, 4, generator=g)
    grad[0] = 0
    data = torch.rand(8, 3, 4, 4, generator=g)
    s = grad.sign()
    step = (-1 if minimize else 1) * 0.01
    moved = delta + step * s if not minimize else delta - 0.01 * s
    # scalar data: the box around a constant image
    out = mc.pgd_update(delta, grad, 0.5, 0.01, 0.03, minimize)
    assert torch.equal(out, torch.clamp(0.5 + torch.clamp(moved, -0.03, 0.03), 0, 1) - 0.5)
    # no box at all
    assert torch.equal(mc.pgd_update(delta, grad, data, 0.01, 0.03, minimize, lo=None, hi=None),
                       torch.clamp(moved, -0.03, 0.03))
    # per-channel eps with the image box, and uint8 data read as value/255
    eps_c = torch.tensor([0.01, 0.02, 0.03]).view(1, 3, 1, 1)
    u8 = (data * 255).round().to(torch.uint8)
    clean = u8.float() / 255
    expect = torch.clamp(clean + torch.maximum(torch.minimum(moved, eps_c), -eps_c), 0, 1) - clean
    assert torch.equal(mc.pgd_update(delta, grad, u8, 0.01, eps_c, minimize), expect)
    # the fused path (scalars, image box) and the general path agree bitwise in fp32
    fused = mc.pgd_update(delta, grad, data, 0.01, 0.03, minimize)
    general = mc.pgd_update(delta, grad, data, torch.full((1, 3, 1, 1), 0.01), torch.full((1, 3, 1, 1), 0.03),
                            minimize)
    assert torch.equal(fused, general)


@pytest.mark.parametrize("call, match", [
    (lambda d, g: mc.pgd_update_(d, g, None, 0.1, None, lo=-1, hi=1, box="pixel"), "box must be one of"),
    (lambda d, g: mc.pgd_update_(d, g[:2], None, 0.1, 0.1), "grad has shape"),
    (lambda d, g: mc.pgd_update_(d, g, None, torch.ones(5, 1, 1, 1), 0.1), "does not broadcast"),
    (lambda d, g: mc.pgd_update_(d, g, None, torch.ones(2, 4, 3, 8, 8), 0.1), "would grow"),
    (lambda d, g: mc.pgd_update_(d, g, None, 0.1, 0.1, lo=-1, hi=None), "both lo and hi"),
    (lambda d, g: mc.pgd_update_(d, g, "x", 0.1, 0.1), "data must be"),
    (lambda d, g: mc.pgd_update_(d.long(), g, None, 0.1, 0.1), "delta must be a floating-point"),
    (lambda d, g: mc.pgd_update_(d, g, None, None, 0.1), "alpha must be"),
])
def test_pgd_update_refuses_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(torch.zeros(4, 3, 8, 8), torch.randn(4, 3, 8, 8))


@pytest.mark.parametrize("descend", [True, False])
def test_min_min_step_is_ems_image_state_step_bitwise(descend):
    g = torch.Generator().manual_seed(9)
    images = torch.rand(6, 3, 5, 5, generator=g)
    p = torch.clamp(images + (torch.rand(6, 3, 5, 5, generator=g) - 0.5) * 0.06, 0, 1)
    grad = torch.randn(6, 3, 5, 5, generator=g)
    grad[0] = 0
    eps, alpha = 8 / 255, 0.8 / 255
    eta = alpha * grad.sign() * (-1 if descend else 1)
    moved = p + eta
    eta = torch.clamp(moved - images, -eps, eps)
    expect_p = torch.clamp(images + eta, 0, 1)
    step = mc.min_min_step if descend else mc.min_max_step
    new, noise = step(p, images, grad, alpha, eps)
    assert torch.equal(new, expect_p) and torch.equal(noise, eta)
    assert (images + noise).min() < 0 or (images + noise).max() > 1 or True  # the unboxed noise is what EM stores


# ----------------------------------------------------------------------------- patch


def _codebase():
    mod = types.ModuleType("their_codebase")
    mod.SupConLoss = supcon_losses.SupConLoss
    mod.SimCLRLoss = cp_losses.SimCLRLoss
    mod.PerturbationTool = type("PerturbationTool", (ue_toolbox.PerturbationTool,), {
        "min_min_attack": ue_toolbox.PerturbationTool.min_min_attack,
        "min_max_attack": ue_toolbox.PerturbationTool.min_max_attack})
    return mod


def test_patch_replaces_classes_and_methods_reports_and_undoes(capsys):
    mod = _codebase()
    originals = (mod.SupConLoss, mod.SimCLRLoss, vars(mod.PerturbationTool)["min_min_attack"])
    h = mc.patch(mod, verbose=True)
    assert sorted(h.patched) == ["PerturbationTool.min_max_attack", "PerturbationTool.min_min_attack",
                                 "SimCLRLoss", "SupConLoss"]
    err = capsys.readouterr().err
    assert "replaced 4" in err and "replaced SimCLRLoss" in err and "contrastive-poisoning" in err
    assert issubclass(mod.SupConLoss, mc.SupConLoss) and mod.SupConLoss.zero_positive == "zero"
    assert issubclass(mod.SimCLRLoss, mc.SupConLoss) and mod.SimCLRLoss.zero_positive == "nan"
    assert mod.SimCLRLoss.__name__ == "SimCLRLoss"
    f = torch.nn.functional.normalize(torch.randn(8, 2, 16, dtype=torch.float64), dim=-1)
    assert torch.allclose(mod.SimCLRLoss(temperature=0.5)(f), cp_losses.SimCLRLoss(temperature=0.5)(f))
    h.undo()
    assert (mod.SupConLoss, mod.SimCLRLoss, vars(mod.PerturbationTool)["min_min_attack"]) == originals


def test_patch_on_a_class_replaces_its_methods():
    mod = _codebase()
    with mc.patch(mod.PerturbationTool, strict=True) as h:
        assert h.patched == ["PerturbationTool.min_min_attack", "PerturbationTool.min_max_attack"]
    assert vars(mod.PerturbationTool)["min_min_attack"] is ue_toolbox.PerturbationTool.min_min_attack


def test_patch_never_replaces_nothing_in_silence():
    empty = types.ModuleType("toolbox_without_known_names")
    with pytest.warns(mc.PatchWarning, match="replaced nothing"):
        h = mc.patch(empty)
    assert not h and "nothing" in h.report()
    with pytest.raises(LookupError, match="nothing replaced"):
        mc.patch(empty, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mc.patch(empty, quiet=True)


def test_patch_skips_a_known_name_with_another_signature():
    mod = types.ModuleType("other")

    class SupConLoss(torch.nn.Module):
        def __init__(self, tau, margin):
            super().__init__()

    mod.SupConLoss = SupConLoss
    with pytest.warns(mc.PatchWarning, match=r"SupConLoss: takes __init__\(tau, margin\)"):
        h = mc.patch(mod)
    assert not h.replaced and mod.SupConLoss is SupConLoss
    with pytest.raises(LookupError, match="SupConLoss"):
        mc.patch(mod, ["SupConLoss"], strict=True)
    assert mod.SupConLoss is SupConLoss


def test_accelerate_reports_and_asks_before_changing_numerics(capsys):
    before = torch.backends.cudnn.benchmark
    acc = mc.accelerate(cudnn_benchmark=True)
    err = capsys.readouterr().err
    assert "allocator" in err and "cudnn.benchmark = True (asked; changes numerics)" in err
    assert torch.backends.cudnn.benchmark is True
    acc.undo()
    assert torch.backends.cudnn.benchmark is before
    acc = mc.accelerate(verbose=False)
    assert not any("tf32" in a for a in acc.actions)


def test_python_m_miue_compat_runs_a_script_unchanged_and_says_what_it_did(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "replicas", "ue_samplewise.py")
    args = ["--n", "64", "--size", "8", "--rounds", "1", "--num-steps", "2", "--width", "4"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    plain = subprocess.run([sys.executable, script, "--out", str(tmp_path / "plain.pt"), *args],
                           capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 0, plain.stderr
    fast = subprocess.run([sys.executable, "-m", "miue.compat", script, "--out", str(tmp_path / "fast.pt"), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert fast.returncode == 0, fast.stderr
    assert "CPU allocator tuned" in fast.stderr and "replaced PerturbationTool.min_min_attack" in fast.stderr
    a, b = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "fast.pt")
    assert a["noise"].abs().max() > 0 and torch.equal(a["noise"], b["noise"])
    missing = subprocess.run([sys.executable, "-m", "miue.compat", str(tmp_path / "nope.py")],
                             capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2 and "is not a file" in missing.stderr
