"""bf16 autocast on the CPU (issue 25): where it turns on, the ops under it, and a crafting
round in bf16 against the same round in fp32.

The precision tests need a CPU with native bf16 (AMX or avx512_bf16: this project's machines and
CI have both); elsewhere they skip, and the fall-back test checks that ``amp`` becomes fp32.
"""

from __future__ import annotations

import logging

import pytest
import torch

import miue
from miue import _amp
from miue.ops import reference
from miue.craft import craft_fast

pytestmark = pytest.mark.usefixtures("epoch_rounds")  # the cpu presets with one surrogate epoch per round (conftest.py)

native = pytest.mark.skipif(not _amp.cpu_bf16_supported(), reason="this CPU has no native bf16")


def _class_data(n=96, classes=4, size=16, seed=0):
    """Images with a class-dependent pattern under noise: a surrogate learns them in a round."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    patterns = torch.rand(classes, 1, size, size, generator=g)
    x = (0.6 * patterns[y] + 0.4 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8), y


# ----------------------------------------------------------------------------- where amp turns on


def test_env_override_and_fallback_logs_why(monkeypatch, caplog):
    monkeypatch.setenv("MIUE_CPU_BF16", "0")
    _amp._warned.clear()
    with caplog.at_level(logging.WARNING, logger="miue"):
        assert _amp.resolve_amp(True, torch.device("cpu")) is False
        assert _amp.resolve_amp(True, torch.device("cpu")) is False
    lines = [r.getMessage() for r in caplog.records if "fp32 instead of bf16" in r.getMessage()]
    assert len(lines) == 1 and "MIUE_CPU_BF16=0" in lines[0]  # one line, with the reason
    monkeypatch.setenv("MIUE_CPU_BF16", "1")
    assert _amp.resolve_amp(True, torch.device("cpu")) is True
    assert _amp.resolve_amp(False, torch.device("cpu")) is False


def test_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("MIUE_CPU_BF16", raising=False)
    monkeypatch.setattr(_amp, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    ok, why = _amp.cpu_bf16_reason()
    assert not ok and "amx_bf16" in why
    monkeypatch.setattr(_amp, "_cpu_flags", lambda: frozenset({"avx512f", "amx_bf16", "amx_tile"}))
    assert _amp.cpu_bf16_reason() == (True, "native bf16 on this CPU (amx_bf16)")


def test_craft_without_native_bf16_runs_fp32_and_records_it(monkeypatch):
    monkeypatch.setenv("MIUE_CPU_BF16", "0")
    x, y = _class_data(32)
    r = craft_fast(x, y, preset="cnn", rounds=1, pgd_steps=1, amp=True, device="cpu", progress=False)
    assert r.config["amp"] is False


# ----------------------------------------------------------------------------- the ops under autocast


@native
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_loss_ops_under_cpu_autocast_match_the_same_call_outside_it(backend):
    """The ops turn autocast off inside: bf16 features give the same loss and gradient inside an
    autocast region as outside (where they failed with a dtype error before issue 25), and both
    are within bf16-input tolerance of the float64 oracle on the same bf16 values."""
    if backend not in miue.available_backends():
        pytest.skip(f"{backend} not built")
    g = torch.Generator().manual_seed(1)
    f = torch.randn(48, 32, generator=g).to(torch.bfloat16)
    y = torch.randint(0, 5, (48,), generator=g)

    def run(autocast):
        leaf = f.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            sup = miue.supcon_loss(leaf, y, 0.1, backend=backend)
            intra = miue.intra_class_cosine_loss(leaf, y, 5, backend=backend)
            z, _, sums, _ = miue.grouped_normalize(leaf, y, 5, backend=backend)
        (g_sup,) = torch.autograd.grad(sup, leaf)
        return sup.detach(), intra.detach(), sums.detach(), g_sup

    inside, outside = run(True), run(False)
    for a, b in zip(inside, outside):
        assert a.dtype == b.dtype and torch.equal(a, b)
    want = reference.eager_supcon_loss(f.double(), y, 0.1)
    assert abs(inside[0].double().item() - want.item()) <= 1e-3 * abs(want.item())  # z is rounded to bf16


# ----------------------------------------------------------------------------- a crafting round


@pytest.mark.slow
@native
@pytest.mark.parametrize("objective", ["miue", "em"])
def test_a_bf16_round_against_the_same_round_in_fp32(objective):
    """One round of the demo preset (ResNet-8 surrogate) in fp32 and in bf16 autocast from the
    same seed. Stated tolerances: the surrogate's training loss within 5% and the PGD objective
    within 10% (bf16 keeps 8 bits of mantissa in the convolutions), δ inside the ε ball and the
    box in both, and at least 80% of δ's nonzero pixels moved in the same direction (random
    signs would agree on half)."""
    x, y = _class_data(96)
    kw = dict(preset="demo", objective=objective, rounds=1, pgd_steps=3, batch_size=48, train_batch_size=32,
              device="cpu", progress=False, seed=0)
    fp32 = craft_fast(x, y, amp=False, **kw)
    bf16 = craft_fast(x, y, amp=True, **kw)
    assert fp32.config["amp"] is False and bf16.config["amp"] is True
    h32, h16 = fp32.history[-1], bf16.history[-1]
    assert abs(h16["train_loss"] - h32["train_loss"]) <= 0.05 * abs(h32["train_loss"])
    assert abs(h16["objective_loss"] - h32["objective_loss"]) <= 0.10 * abs(h32["objective_loss"]) + 1e-3
    eps = fp32.config["eps"]
    clean = x.float() / 255
    for r in (fp32, bf16):
        assert r.delta.abs().max() <= eps + 1e-7
        assert ((clean + r.delta) >= -1e-6).all() and ((clean + r.delta) <= 1 + 1e-6).all()
        released = r.images.float()
        assert (released - x.float()).abs().max() <= round(eps * 255)
    moved = (fp32.delta != 0) | (bf16.delta != 0)
    agree = (torch.sign(fp32.delta) == torch.sign(bf16.delta))[moved].float().mean().item()
    print(f"{objective}: sign agreement of delta, bf16 vs fp32: {agree:.3f} of {int(moved.sum())} moved pixels; "
          f"objective {h32['objective_loss']:.4f} (fp32) vs {h16['objective_loss']:.4f} (bf16)")
    assert agree >= 0.80


@native
def test_pgd_gradient_sign_agreement_bf16_vs_fp32():
    """The quantity a sign step uses: sign(∇_δ L) of the supcon loss through the ResNet-8
    surrogate, fp32 against bf16 autocast, on the same weights and inputs. Pixels whose fp32
    gradient is tiny may flip; the large ones must not (≥ 95% agreement on the top half by
    magnitude, ≥ 80% overall)."""
    from miue.models import build_model

    x, y = _class_data(64, size=28)
    torch.manual_seed(0)
    model = build_model("resnet-small", 4, channels=1, image_size=28, normalize=True).eval().requires_grad_(False)
    xf = x.float() / 255

    def grad(amp):
        d = torch.zeros_like(xf, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            f, _ = model(xf + d, return_features=True)
            loss = miue.supcon_loss(f, y, 0.1)
        return torch.autograd.grad(loss, d)[0]

    g32, g16 = grad(False), grad(True)
    same = torch.sign(g32) == torch.sign(g16)
    big = g32.abs() >= g32.abs().median()
    print(f"gradient sign agreement: {same.float().mean():.3f} overall, {same[big].float().mean():.3f} on the top half")
    assert same.float().mean() >= 0.80
    assert same[big].float().mean() >= 0.95


@pytest.mark.slow
@native
def test_victim_training_in_bf16_on_the_cpu():
    """evaluate(amp=True) trains and tests the victim under CPU bf16 autocast (recorded in its
    config) and learns the same easy task as in fp32: both well above chance."""
    from miue.evaluation.victims import evaluate

    x, y = _class_data(128, size=16)
    runs = {amp: evaluate(x, y, x, y, preset="adam", arch="cnn-small", epochs=6, batch_size=32, seed=0, amp=amp,
                          device="cpu", progress=False) for amp in (False, True)}
    assert runs[True].config["amp"] is True and runs[False].config["amp"] is False
    assert runs[True].test_acc > 0.6 and runs[False].test_acc > 0.6
