"""Training-free poisons (miue.shortcuts): bounds, determinism, and the class structure that
makes each one a shortcut."""

import pytest
import torch

from miue import shortcuts as S

pytestmark = pytest.mark.usefixtures("epoch_rounds")  # the cpu presets with one surrogate epoch per round (conftest.py)

EPS = 8 / 255


def _labels(n=60, k=4):
    return torch.arange(n) % k


@pytest.mark.parametrize("fn", [S.ar_noise, S.lsp_noise])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2, 9, 13)])
def test_linf_bound_and_determinism(fn, shape):
    y = _labels()
    d = fn(y, shape, EPS, seed=3)
    assert d.shape == (y.numel(), *shape) and d.dtype == torch.float32
    assert d.abs().max() <= EPS + 1e-7
    assert torch.allclose(d.abs().flatten(1).amax(1), torch.full((y.numel(),), EPS))  # every sample uses the budget
    assert torch.equal(d, fn(y, shape, EPS, seed=3))
    assert not torch.equal(d, fn(y, shape, EPS, seed=4))


def test_ar_noise_is_predicted_by_its_own_class_filter_only():
    y = _labels(40, 4)
    filters = S.ar_filters(4, 1, seed=0)
    d = S.ar_noise(y, (1, 16, 16), EPS, seed=0, filters=filters).double()

    def residual(x, b):  # x[i, j] - Σ b ⊙ window, interior pixels
        win = x.unfold(2, 3, 1).unfold(3, 3, 1)  # (n, 1, 14, 14, 3, 3), window ending at (i, j)
        pred = (win * b.view(1, 1, 1, 1, 3, 3)).sum((-1, -2))
        return (x[:, :, 2:, 2:] - pred).abs().mean((1, 2, 3))

    for k in range(4):
        own = residual(d[y == k], filters[k, 0])
        other = residual(d[y == k], filters[(k + 1) % 4, 0])
        assert own.max() < 1e-6 * EPS * 1e3  # float32 rounding of the scaled process only
        assert other.min() > 1e-3 * EPS


def test_lsp_is_patch_constant_and_linearly_separable():
    from sklearn.linear_model import LogisticRegression

    y = _labels(200, 10)
    d = S.lsp_noise(y, (1, 28, 28), EPS, seed=0)
    assert torch.equal(d[:, :, :7, :7], d[:, :, :1, :1].expand(-1, -1, 7, 7))  # 4×4 grid of 7×7 patches
    clf = LogisticRegression(max_iter=5000, C=100.0).fit(d.flatten(1).numpy(), y.numpy())
    assert clf.score(d.flatten(1).numpy(), y.numpy()) == 1.0


def test_ops_sets_one_distinct_extreme_pixel_per_class():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (80, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[:, :, 0, 0] = 0  # a constant corner: every class would pick it
    y = _labels(80, 4)
    pos, col = S.ops_pixels(x, y)
    assert len({tuple(p.tolist()) for p in pos}) == 4  # distinct positions
    assert set(col.flatten().tolist()) <= {0.0, 1.0}
    out = S.ops_images(x, y, pos, col)
    changed = (out != x).any(1).flatten(1).sum(1)
    assert changed.max() <= 1  # L0: at most one pixel per image
    for k in range(4):
        r, c = pos[k].tolist()
        assert torch.equal(out[y == k][:, :, r, c], (col[k] * 255).to(torch.uint8).expand(int((y == k).sum()), -1))
    assert torch.equal(out[:, :, :, :][(out != x).any(1).flatten(1).sum(1) == 0], x[changed == 0])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="eps"):
        S.ar_noise(_labels(), (1, 8, 8), 0.0)
    with pytest.raises(ValueError, match="shape"):
        S.lsp_noise(_labels(), (8, 8), EPS)
    with pytest.raises(TypeError, match="uint8"):
        S.ops_images(torch.rand(4, 1, 8, 8), _labels(4, 2))
    with pytest.raises(ValueError, match="distinct pixel positions"):
        S.ops_pixels(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), torch.arange(8))


@pytest.mark.parametrize("objective", ["ar", "lsp", "ops"])
def test_craft_fast_objectives(objective, tmp_path):
    """Through craft_fast: released uint8 images within ε (ar, lsp) or one pixel (ops) of the
    clean ones, deterministic, saved and loaded; classwise is refused."""
    from miue.craft import CraftResult, craft_fast

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = _labels(40, 4)
    r = craft_fast(x, y, objective=objective, preset="cnn", progress=False, device="cpu")
    diff = (r.images.int() - x.int()).abs()
    if objective == "ops":
        assert r.config["norm"] == "L0" and (diff.flatten(1) > 0).sum(1).max() <= 1
    else:
        assert r.config["norm"] == "Linf" and diff.max() <= 8 and r.delta.abs().max() <= EPS + 1e-7
    assert torch.equal(r.images, craft_fast(x, y, objective=objective, preset="cnn", progress=False).images)
    again = CraftResult.load(r.save(str(tmp_path / "r")))
    assert torch.equal(again.images, r.images)
    with pytest.raises(ValueError, match="classwise"):
        craft_fast(x, y, objective=objective, classwise=True, preset="cnn", progress=False)


def test_tap_trains_on_clean_then_attacks_towards_the_next_class(tmp_path, monkeypatch):
    """TAP: no PGD until the last round, then pgd_steps steps that raise p(y + 1); the
    surrogate never sees δ; bounds hold; a killed-and-resumed run equals an uninterrupted one."""
    from miue.craft import craft_fast
    from miue.craft.engine import tap_step_size, tap_target
    from miue.presets import make_config

    assert tap_target(torch.tensor([0, 1, 3]), 4).tolist() == [1, 2, 0]
    assert tap_step_size(make_config("cnn", eps=EPS, pgd_steps=10)) == pytest.approx(2.5 * EPS / 10)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = _labels(64, 4)
    r = craft_fast(x, y, objective="tap", recipe="matched", preset="cnn", rounds=3, pgd_steps=4, progress=False,
                   device="cpu")
    assert [("objective_loss" in h) for h in r.history] == [False, False, True]
    assert (r.images.int() - x.int()).abs().max() <= 8 and r.delta.abs().max() > 0
    # a run that dies in round 3 (after the checkpoint of round 2) resumes to the same δ
    from miue.craft.engine import Engine

    real = Engine.run_round

    def dies_in_round_3(self, e):
        if e == 3:
            raise RuntimeError("killed")
        return real(self, e)

    ck = str(tmp_path / "ck")
    kw = dict(objective="tap", recipe="matched", preset="cnn", rounds=3, pgd_steps=4, progress=False, checkpoint_dir=ck,
              device="cpu")
    monkeypatch.setattr(Engine, "run_round", dies_in_round_3)
    with pytest.raises(RuntimeError, match="killed"):
        craft_fast(x, y, **kw)
    monkeypatch.setattr(Engine, "run_round", real)
    again = craft_fast(x, y, **kw)
    assert torch.equal(again.delta, r.delta) and len(again.history) == 3


def test_rem_inner_maximisation_and_crafting(tmp_path):
    """REM: ρ stays within rem_eps (eps/2 by default) and raises the surrogate's loss; a
    crafting run respects the bounds and is deterministic."""
    import torch.nn.functional as F

    from miue.craft import craft_fast
    from miue.craft.engine import Engine
    from miue.presets import make_config

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = _labels(64, 4)
    cfg = make_config("cnn", objective="rem", recipe="matched", eps=EPS, num_classes=4)
    eng = Engine(cfg, x, y, None, torch.device("cpu"), progress=False)
    eng.train_epoch()
    eng.model.eval()
    eng.model.requires_grad_(False)
    xf = x.float() / 255
    rho = eng.surrogate.worst_rho(xf, y)
    assert rho.abs().max() <= EPS / 2 + 1e-7
    with torch.no_grad():
        assert F.cross_entropy(eng.model((xf + rho).clamp(0, 1)), y) > F.cross_entropy(eng.model(xf), y)
    kw = dict(objective="rem", recipe="matched", preset="cnn", rounds=2, pgd_steps=2, progress=False, device="cpu",
              rem_steps=2)
    r = craft_fast(x, y, **kw)
    assert (r.images.int() - x.int()).abs().max() <= 8 and r.delta.abs().max() > 0
    assert torch.equal(r.delta, craft_fast(x, y, **kw).delta)
