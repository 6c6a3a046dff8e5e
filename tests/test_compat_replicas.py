"""miue.compat on replicas of the codebases it stands in for (tests/replicas/, written from reading
them): each loop plain against accelerated, in one process, as docs/compat.md tells a user to run
it. Bitwise where the replaced code computes the same arithmetic; the Contrastive Poisoning loop
with our loss differs by the loss's rounding, so its check is a stated tolerance."""

import os
import sys

import torch

import miue.compat as mc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "replicas"))

import cp_losses  # noqa: E402
import cp_main  # noqa: E402
import miue_gen  # noqa: E402
import miue_utils  # noqa: E402
import tap_forge  # noqa: E402
import ue_samplewise  # noqa: E402
import ue_toolbox  # noqa: E402

def _miue_update(delta, data, alpha, eps):
    """The change docs/compat.md gives for the official MI-UE loop's four update lines."""
    mc.pgd_update_(delta, delta.grad, data, alpha, eps)
    delta.grad = None


def test_official_miue_loop_patched_gives_its_poison_bitwise(monkeypatch):
    """float64: the fused loss's gradient agrees with the official one to about 1e-12, so every
    sign, and so every update, is the same (fp32: see docs/compat.md for the measured share)."""
    args = dict(n=96, size=8, batch=48, iters=3, width=4, dtype=torch.float64)
    plain = miue_gen.run(**args)
    monkeypatch.setattr(miue_gen, "update", _miue_update)
    with mc.patch(miue_utils, strict=True), mc.patch(miue_gen, ["nt_xent"], strict=True):
        fast = miue_gen.run(**args)
    assert plain.abs().max() > 0 and torch.equal(plain, fast)


EM_ARGS = dict(n=96, size=8, rounds=2, train_step=3, num_steps=3, batch=48, width=4)


def test_em_loop_patched_gives_its_noise_bitwise():
    plain = ue_samplewise.run(**EM_ARGS)
    with mc.patch(ue_toolbox, strict=True) as h:
        assert sorted(h.patched) == ["PerturbationTool.min_max_attack", "PerturbationTool.min_min_attack"]
        fast = ue_samplewise.run(**EM_ARGS)
    assert plain.abs().max() > 0 and torch.equal(plain, fast)
    # the stored noise is eta before the [0, 1] box, as EM stores it
    images, _ = ue_samplewise.make_images(EM_ARGS["n"], EM_ARGS["size"])
    assert ((images + fast) < 0).any() or ((images + fast) > 1).any()


def _tap_accelerated(delta_slice, poison_imgs, tau, dm, ds, eps):
    """The one-line change docs/compat.md gives for APBench's ``_pgd_step`` (PGD branch)."""
    return mc.pgd_update_(delta_slice, delta_slice.grad, poison_imgs, tau, eps / ds / 255,
                          lo=-dm / ds, hi=(1 - dm) / ds, box="delta")


def test_tap_loop_with_the_per_channel_update_gives_its_delta_bitwise(monkeypatch):
    plain = tap_forge.forge(n=64, size=8, attackiter=3, pbatch=32, width=4)
    monkeypatch.setattr(tap_forge, "pgd_step", _tap_accelerated)
    fast = tap_forge.forge(n=64, size=8, attackiter=3, pbatch=32, width=4)
    assert torch.equal(plain, fast)


def _cp_accelerated(delta, step_size):
    """The one-line change docs/compat.md gives for Contrastive Poisoning's update."""
    mc.pgd_update_(delta, delta.grad, None, step_size, None, lo=-1, hi=1)


CP_ARGS = dict(n=96, size=8, batch=32, num_steps=2, width=4, model_steps=1, epochs=2)


def test_cp_loop_with_the_fused_update_gives_its_delta_bitwise(monkeypatch):
    plain = cp_main.run(**CP_ARGS)
    monkeypatch.setattr(cp_main, "update_delta", _cp_accelerated)
    fast = cp_main.run(**CP_ARGS)
    assert torch.equal(plain, fast)


def test_cp_loop_with_our_loss_too_stays_within_the_stated_tolerance(monkeypatch):
    """With SimCLRLoss replaced as well, the gradient differs by rounding (about 1e-7 relative),
    so a near-zero gradient may change sign: docs/compat.md states at most 0.1% of δ's elements
    moved by a step, everything else bitwise."""
    plain = cp_main.run(**CP_ARGS)
    monkeypatch.setattr(cp_main, "update_delta", _cp_accelerated)
    with mc.patch(cp_losses, strict=True):
        assert cp_main.cp_losses.SimCLRLoss.zero_positive == "nan"
        fast = cp_main.run(**CP_ARGS)
    differ = (plain != fast).float().mean().item()
    assert differ <= 1e-3, differ
