"""Crafting options used by the effectiveness study's ablations: a fixed number of surrogate
steps per round (``train_steps``), EM's stopping rule (``stop_train_acc``) and batch norm
in train mode during PGD (``pgd_bn``)."""

import pytest
import torch
import torch.nn as nn

from miue.craft import craft_fast
from miue.craft.engine import Engine
from miue.presets import make_config


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 4
    return x, y


class _Counting(nn.Module):
    """A surrogate that counts its training-mode forward calls (class attribute: survives the copy)."""

    train_calls = 0

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if self.training:
            type(self).train_calls += 1
        return self.fc(self.body(x))


@pytest.mark.usefixtures("epoch_rounds")
def test_train_steps_fixes_surrogate_steps_per_round():
    x, y = _data(64)
    _Counting.train_calls = 0
    craft_fast(x, y, preset="cnn", surrogate=_Counting(), rounds=2, pgd_steps=1, train_batch_size=16,
               progress=False, device="cpu")
    per_epoch = _Counting.train_calls
    assert per_epoch == 2 * 4  # one epoch per round: 64 / 16 steps
    _Counting.train_calls = 0
    r = craft_fast(x, y, preset="cnn", surrogate=_Counting(), rounds=2, pgd_steps=1, train_batch_size=16,
                   train_steps=11, progress=False, device="cpu")
    assert _Counting.train_calls == 2 * 11  # more steps than an epoch: wraps into fresh permutations
    assert r.config["train_steps"] == 11
    assert r.history[0]["train_images_per_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("n", [32, 96])
def test_cnn_preset_budget_does_not_depend_on_the_data_size(n):
    """The shipped cnn preset (the demo preset before issue 25): 235 surrogate steps of 256
    images per round (one epoch of 60,000), on 32 images as on 96, instead of an epoch of
    whatever the data holds."""
    assert make_config("cnn").train_steps == 235
    x, y = _data(n)
    _Counting.train_calls = 0
    r = craft_fast(x, y, preset="cnn", surrogate=_Counting(), rounds=1, pgd_steps=1, progress=False, device="cpu")
    assert _Counting.train_calls == 235
    assert r.config["train_steps"] == 235 and r.config["train_batch_size"] == 256


@pytest.mark.usefixtures("epoch_rounds")
def test_tests_run_the_cpu_presets_with_epoch_rounds():
    """conftest's ``epoch_rounds`` fixture, for the tests that ask for it (the ones above count on it)."""
    assert make_config("cnn").train_steps == make_config("demo").train_steps == make_config("cpu").train_steps == 0



@pytest.mark.usefixtures("epoch_rounds")
def test_stop_train_acc_ends_crafting_and_resumes_stopped(tmp_path):
    x, y = _data(64)
    kw = dict(preset="cnn", rounds=3, pgd_steps=1, progress=False, device="cpu", stop_train_acc=1e-9,
              checkpoint_dir=str(tmp_path))
    r = craft_fast(x, y, **kw)
    assert len(r.history) == 1 and r.history[0]["stopped"]
    assert torch.count_nonzero(r.delta) == 0  # stopped before the first PGD pass
    again = craft_fast(x, y, **kw)  # resuming a stopped run does not run more rounds
    assert len(again.history) == 1 and torch.equal(again.delta, r.delta)


@pytest.mark.usefixtures("epoch_rounds")
def test_pgd_bn_train_keeps_running_statistics():
    x, y = _data(64)
    cfg = make_config("cnn", rounds=1, pgd_steps=2, pgd_bn="train", num_classes=4)
    eng = Engine(cfg, x, y, None, torch.device("cpu"), progress=False)
    eng.train_epoch()
    bn = [m for m in eng.model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in bn]
    eng.attack.pgd_pass(1 / 255)
    for m, (mean, var, mom) in zip(bn, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var) and m.momentum == mom
    assert torch.count_nonzero(eng.store.delta) > 0
    eval_run = craft_fast(x, y, preset="cnn", rounds=1, pgd_steps=2, progress=False, device="cpu")
    train_run = craft_fast(x, y, preset="cnn", rounds=1, pgd_steps=2, pgd_bn="train", progress=False, device="cpu")
    assert not torch.equal(eval_run.delta, train_run.delta)  # batch statistics change the gradients


@pytest.mark.parametrize("bad", [dict(pgd_bn="frozen"), dict(train_steps=-1), dict(stop_train_acc=1.5)])
def test_bad_options_are_named(bad):
    x, y = _data(16)
    with pytest.raises(ValueError, match=next(iter(bad))):
        craft_fast(x, y, preset="cnn", rounds=1, progress=False, device="cpu", **bad)


@pytest.mark.usefixtures("epoch_rounds")
def test_pgd_batch_size_is_accepted_under_its_config_name():
    """The ablation `pgd_batch=1024` passes the CraftConfig field name; it must mean the same as
    batch_size (it used to clash with it inside craft_fast with a bare TypeError)."""
    x, y = _data(32)
    a = craft_fast(x, y, preset="cnn", rounds=1, pgd_steps=1, progress=False, device="cpu", pgd_batch_size=8)
    b = craft_fast(x, y, preset="cnn", rounds=1, pgd_steps=1, progress=False, device="cpu", batch_size=8)
    assert a.config["pgd_batch_size"] == b.config["pgd_batch_size"] == 8
    assert torch.equal(a.delta, b.delta)
    with pytest.raises(TypeError, match="batch_size or pgd_batch_size"):
        craft_fast(x, y, preset="cnn", rounds=1, progress=False, device="cpu", batch_size=8, pgd_batch_size=16)
