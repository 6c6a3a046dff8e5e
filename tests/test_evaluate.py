"""Tests of miue.evaluation.victims (the function miue.evaluate): the victim-training protocol that measures unlearnability.

Tiny synthetic data only: 1×16×16 uint8 images whose class is a bright horizontal bar
(rows 2+3k .. 4+3k for class k; invariant to the horizontal flip, robust to the ±2 px crop),
the 16-wide ``cnn-small`` victim, batch 32, 1-8 epochs (each run well under a second).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import miue.evaluation.defenses as Dfn
from miue.evaluation.victims import (EVAL_PRESETS, OPTIMIZER_BUILDERS, OPTIMIZERS, SCHEDULE_BUILDERS, SCHEDULES, EvalConfig,
                          EvalResult, accuracy, evaluate, pgd_attack, random_crop)
from miue.models import ARCHS, build_model

SIZE = 16
CLASSES = 4
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


# --------------------------------------------------------------------------- data


def bars(y, seed, channels=1):
    """uint8 images N×C×16×16: dark noise plus a bright bar in the row band of content class y."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    x = rng.integers(0, 80, (len(y), channels, SIZE, SIZE)).astype(np.int64)
    for k in range(CLASSES):
        x[y == k, :, 2 + 3 * k:5 + 3 * k, :] += 150
    return np.clip(x, 0, 255).astype(np.uint8)


def learnable(n, seed, channels=1):
    y = np.arange(n, dtype=np.int64) % CLASSES
    return bars(y, seed, channels), y


def shortcut(n, seed):
    """Images whose bar is independent of the label (a random permutation of the labels), with
    a class-dependent shortcut: the two top and two bottom rows set to grey level 100 + 50·y.
    The label is learnable only from the shortcut, which clean images do not carry."""
    rng = np.random.default_rng(seed + 1000)
    y = np.arange(n, dtype=np.int64) % CLASSES
    x = bars(rng.permutation(y), seed)
    for k in range(CLASSES):
        x[y == k, :, :2, :] = 100 + 50 * k
        x[y == k, :, SIZE - 2:, :] = 100 + 50 * k
    return x, y


@pytest.fixture(scope="module")
def data():
    xtr, ytr = learnable(200, 0)
    xte, yte = learnable(100, 1)
    return xtr, ytr, xte, yte


def run(xtr, ytr, xte, yte, **kw):
    opts = dict(arch="cnn-small", preset="quick", epochs=3, batch_size=32, lr=0.05, device="cpu", progress=False)
    opts.update(kw)
    return evaluate(xtr, ytr, xte, yte, **opts)


def same_run(a: EvalResult, b: EvalResult) -> bool:
    return (a.train_loss_history == b.train_loss_history and a.train_acc_history == b.train_acc_history
            and a.test_acc_history == b.test_acc_history)


# --------------------------------------------------------------------------- the result


def test_learns_learnable_data_and_result_fields(data):
    res = run(*data, epochs=4)
    assert isinstance(res, EvalResult)
    assert res.epochs == [1, 2, 3, 4]
    assert len(res.test_acc_history) == len(res.train_acc_history) == len(res.train_loss_history) == 4
    assert res.test_acc == res.test_acc_history[-1]
    assert all(0 <= a <= 1 for a in res.test_acc_history + res.train_acc_history)
    assert all(math.isfinite(v) and v > 0 for v in res.train_loss_history)
    assert res.train_loss_history[-1] < res.train_loss_history[0]
    assert res.test_acc > 0.7, res.test_acc_history  # chance is 0.25
    assert res.seconds > 0
    cfg = res.config
    assert cfg["arch"] == "cnn-small" and cfg["epochs"] == 4 and cfg["batch_size"] == 32 and cfg["lr"] == 0.05
    assert cfg["preset"] == "quick" and cfg["defense"] is None and cfg["poison_ratio"] == 1.0 and cfg["at_eps"] is None
    d = res.to_dict()
    assert "model" not in d and d["test_acc"] == res.test_acc
    json.dumps(d)  # serialisable
    # the trained model is attached, and reproduces the reported accuracy
    acc = accuracy(res.model, torch.from_numpy(data[2]), torch.from_numpy(data[3]), CPU)
    assert acc == res.test_acc


def test_eval_every(data):
    res = run(*data, epochs=3, eval_every=2)
    assert res.epochs == [2, 3]
    assert len(res.test_acc_history) == 2 and len(res.train_acc_history) == 3
    assert res.test_acc == res.test_acc_history[-1]


def test_deterministic_for_a_seed(data):
    a = run(*data, epochs=2, seed=5)
    b = run(*data, epochs=2, seed=5)
    assert same_run(a, b)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = run(*data, epochs=2, seed=6)
    assert a.train_loss_history != c.train_loss_history


def test_does_not_touch_global_rng(data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(*data, epochs=1)
    assert torch.equal(torch.rand(3), expected)


def test_input_forms_agree(data):
    xtr, ytr, xte, yte = data
    ref = run(xtr, ytr, xte, yte, epochs=2)
    # float images in [0, 1] (uint8 / 255) and torch tensors give the same run
    f = run(torch.from_numpy(xtr).float() / 255, torch.from_numpy(ytr), xte.astype(np.float32) / 255, list(yte), epochs=2)
    assert same_run(ref, f)
    # N×H×W and N×H×W×1 layouts too
    hw = run(xtr[:, 0], ytr, xte[:, 0], yte, epochs=2)
    hwc = run(np.ascontiguousarray(xtr.transpose(0, 2, 3, 1)), ytr, xte, yte, epochs=2)
    assert same_run(ref, hw) and same_run(ref, hwc)


def test_three_channels():
    xtr, ytr = learnable(64, 0, channels=3)
    xte, yte = learnable(32, 1, channels=3)
    res = run(xtr, ytr, xte, yte, epochs=1)
    assert res.model.body[0].in_channels == 3
    assert len(res.test_acc_history) == 1


def test_num_classes_override(data):
    res = run(*data, epochs=1, num_classes=10)
    assert res.model.head.out_features == 10


# --------------------------------------------------------------------------- poison ratio


def test_poison_ratio_needs_clean_images(data):
    with pytest.raises(ValueError, match="clean_images"):
        run(*data, poison_ratio=0.5)


def test_poison_ratio_zero_uses_clean_images(data):
    xtr, ytr, xte, yte = data
    garbage = np.random.default_rng(9).integers(0, 256, xtr.shape, dtype=np.uint8)
    on_clean = run(xtr, ytr, xte, yte, poison_ratio=0.0, clean_images=xtr, epochs=2)
    mixed = run(garbage, ytr, xte, yte, poison_ratio=0.0, clean_images=xtr, epochs=2)
    assert same_run(on_clean, mixed)
    # ratio 1: the released images are used, the clean ones ignored
    all_garbage = run(garbage, ytr, xte, yte, poison_ratio=1.0, clean_images=xtr, epochs=2)
    assert same_run(all_garbage, run(garbage, ytr, xte, yte, epochs=2))
    assert not same_run(all_garbage, on_clean)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_poison_ratio_mixes(data, monkeypatch, ratio):
    """Capture the training set after mixing through a pass-through preprocessing defense."""
    xtr, ytr, xte, yte = data
    poisoned = np.full_like(xtr, 255)
    seen = {}

    def capture(images):
        seen["x"] = images.clone()
        return images

    monkeypatch.setitem(Dfn.REGISTRY, "grayscale", dataclasses.replace(Dfn.REGISTRY["grayscale"], fn=capture))
    run(poisoned, ytr, xte, yte, poison_ratio=ratio, clean_images=xtr, epochs=1, defense="grayscale")
    x = seen["x"]
    assert x.shape == xtr.shape and x.dtype == torch.uint8
    is_poison = (x == 255).flatten(1).all(1)
    is_clean = (x == torch.from_numpy(xtr)).flatten(1).all(1)
    assert torch.all(is_poison ^ is_clean), "each image must come whole from one of the two sets"
    frac = is_poison.float().mean().item()
    assert abs(frac - ratio) < 0.1, frac


def test_clean_images_shape_must_match(data):
    xtr, ytr, xte, yte = data
    with pytest.raises(ValueError, match="clean_images"):
        run(xtr, ytr, xte, yte, poison_ratio=0.5, clean_images=xtr[:10])


# --------------------------------------------------------------------------- defenses


@pytest.mark.parametrize("defense,at_eps", [(d, 4 / 255) for d in Dfn.DEFENSES] + [("at", 8 / 255)])
def test_every_defense_runs(defense, at_eps):
    xtr, ytr = learnable(64, 0)
    xte, yte = learnable(32, 1)
    res = run(xtr, ytr, xte, yte, epochs=1, defense=defense, at_eps=at_eps)
    assert len(res.test_acc_history) == 1 and 0 <= res.test_acc <= 1
    assert math.isfinite(res.train_loss_history[0])
    assert res.config["defense"] == defense
    assert res.config["at_eps"] == (at_eps if defense == "at" else None)


def test_preprocessing_defense_changes_training(data):
    plain = run(*data, epochs=1)
    assert not same_run(plain, run(*data, epochs=1, defense="bitdepth"))


def test_paper_preset_with_at_uses_at_schedule(data):
    res = run(*data, preset="paper", defense="at", epochs=1, lr=None, batch_size=64)
    assert res.config["lr"] == 0.1 and res.config["weight_decay"] == 5e-4 and res.config["schedule"] == "step40-80"
    assert res.config["arch"] == "cnn-small"


def test_presets():
    assert EVAL_PRESETS["paper"]["arch"] == "resnet18" and EVAL_PRESETS["paper"]["epochs"] == 200
    assert EVAL_PRESETS["paper"]["lr"] == 0.5 and EVAL_PRESETS["paper"]["batch_size"] == 128
    assert EVAL_PRESETS["paper"]["crop"] and EVAL_PRESETS["paper"]["flip"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(preset="slow"), ValueError, "preset must be one of"),
        (dict(defense="sharpen"), ValueError, "defense must be None or one of"),
        (dict(arch="resnet9"), ValueError, "arch must be one of"),
        (dict(epochs=0), ValueError, "epochs must be a positive int"),
        (dict(epochs=-2), ValueError, "epochs must be a positive int"),
        (dict(epochs=2.5), ValueError, "epochs must be a positive int"),
        (dict(poison_ratio=1.5), ValueError, "poison_ratio must lie in"),
        (dict(poison_ratio=-0.1), ValueError, "poison_ratio must lie in"),
        (dict(defense="at", at_eps=0.0), ValueError, "at_eps"),
        (dict(defense="at", at_eps=2.0), ValueError, "at_eps"),
    ],
)
def test_bad_options(data, kw, exc, match):
    with pytest.raises(exc, match=match):
        run(*data, **kw)


def test_bad_arrays(data):
    xtr, ytr, xte, yte = data
    with pytest.raises(ValueError, match="train_labels has 199 entries but train_images has 200"):
        run(xtr, ytr[:-1], xte, yte)
    with pytest.raises(ValueError, match="test_labels has 100 entries but test_images has 99"):
        run(xtr, ytr, xte[:-1], yte)
    with pytest.raises(ValueError, match="differ in shape"):
        run(xtr, ytr, xte[:, :, :12, :12], yte)
    with pytest.raises(ValueError, match="differ in shape"):
        run(xtr, ytr, np.repeat(xte, 3, axis=1), yte)
    with pytest.raises(TypeError, match="labels must be integers"):
        run(xtr, ytr.astype(np.float32), xte, yte)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run(xtr.astype(np.float32), ytr, xte, yte)  # floats in 0..255
    with pytest.raises(ValueError, match="empty"):
        run(xtr[:0], ytr[:0], xte, yte)


def test_eval_every_zero_rejected_up_front(data):
    with pytest.raises(ValueError, match="eval_every"):
        run(*data, epochs=1, eval_every=0)


def test_batch_size_zero_rejected_clearly(data):
    with pytest.raises(ValueError, match="batch_size"):
        run(*data, epochs=1, batch_size=0)


@pytest.mark.parametrize("case", ["negative", "num_classes_too_small"])
def test_label_range_rejected_up_front(data, case):
    xtr, ytr, xte, yte = data
    kw = {}
    if case == "negative":
        ytr = ytr.copy()
        ytr[0] = -1
    else:
        kw["num_classes"] = 2
    with pytest.raises(ValueError, match="label"):
        run(xtr, ytr, xte, yte, epochs=1, **kw)


# --------------------------------------------------------------------------- augmentation and attack helpers


@pytest.mark.parametrize("pad", [2, 4])
def test_random_crop_is_a_window_of_the_padded_image(pad):
    g = torch.Generator().manual_seed(pad)
    x = torch.rand(6, 3, 10, 10, generator=g) + 0.5  # strictly positive: the zero padding is visible
    out = random_crop(x, pad, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    offsets = set()
    for n in range(x.shape[0]):
        matches = [(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)
                   if torch.equal(out[n], xp[n, :, i:i + 10, j:j + 10])]
        assert len(matches) == 1, f"image {n}: {matches}"
        offsets.add(matches[0])
    assert len(offsets) > 1, "offsets must be drawn per image"
    # deterministic for a generator seed
    assert torch.equal(out, random_crop(x, pad, torch.Generator().manual_seed(1)))


def test_random_crop_covers_all_offsets():
    x = torch.arange(1, 26, dtype=torch.float32).view(1, 1, 5, 5).repeat(400, 1, 1, 1)
    out = random_crop(x, 1, torch.Generator().manual_seed(0))
    xp = F.pad(x[:1], (1, 1, 1, 1))[0]
    windows = {(i, j): xp[:, i:i + 5, j:j + 5] for i in range(3) for j in range(3)}
    hits = {k: 0 for k in windows}
    for n in range(400):
        (k,) = [k for k, w in windows.items() if torch.equal(out[n], w)]
        hits[k] += 1
    assert all(v > 15 for v in hits.values()), hits


@pytest.mark.parametrize("eps", [4 / 255, 8 / 255])
def test_pgd_attack(eps):
    torch.manual_seed(0)
    model = build_model("cnn-small", 3, channels=1, image_size=8).eval()
    x = torch.rand(8, 1, 8, 8)
    x[:2] = 0.0  # the box binds
    x[2:4] = 1.0
    y = torch.arange(8) % 3
    adv = pgd_attack(model, x, y, eps, 2 / 255, 10, torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and not adv.requires_grad
    assert (adv - x).abs().max().item() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max().item() > eps / 2, "the attack must move the images"
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    again = pgd_attack(model, x, y, eps, 2 / 255, 10, torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)


def test_accuracy_helper():
    torch.manual_seed(0)
    model = build_model("cnn-small", 3, channels=1, image_size=8)
    x = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        model.eval()
        pred = model(x.float() / 255).argmax(1)
    assert accuracy(model, x, pred, CPU, batch_size=3) == 1.0
    assert accuracy(model, x, (pred + 1) % 3, CPU) == 0.0
    assert accuracy(model, x.float() / 255, pred, CPU) == 1.0


# --------------------------------------------------------------------------- the principle


def test_shortcut_makes_data_unlearnable():
    """A victim trained on images whose labels are learnable only from a class-dependent
    shortcut learns the shortcut (it classifies held-out shortcut images) and fails on clean
    test images, while the same victim trained on clean data succeeds."""
    xte, yte = learnable(100, 1)
    xc, yc = learnable(200, 0)
    xs, ys = shortcut(200, 2)
    clean = run(xc, yc, xte, yte, epochs=8)
    poisoned = run(xs, ys, xte, yte, epochs=8)
    xh, yh = shortcut(100, 3)
    learned_shortcut = accuracy(poisoned.model, torch.from_numpy(xh), torch.from_numpy(yh), CPU)
    assert clean.test_acc > 0.9, clean.test_acc_history
    assert learned_shortcut > 0.7, learned_shortcut
    assert poisoned.test_acc < 0.45, poisoned.test_acc_history
    assert clean.test_acc - poisoned.test_acc > 0.5


def test_adam_recipe_and_overrides():
    """The ``adam`` preset trains with Adam and no augmentation; optimizer/augment override a preset."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(64) % 4
    r = evaluate(x, y, x[:16], y[:16], preset="adam", arch="mlp", epochs=2, progress=False, device="cpu")
    assert r.config["optimizer"] == "adam" and not r.config["crop"] and not r.config["flip"]
    assert len(r.test_acc_history) == 2 and 0 <= r.test_acc <= 1
    r2 = evaluate(x, y, x[:16], y[:16], preset="quick", arch="resnet-small", epochs=1, optimizer="adam", augment=False,
                  progress=False, device="cpu")
    assert r2.config["optimizer"] == "adam" and not r2.config["crop"]
    with pytest.raises(ValueError, match="optimizer"):
        evaluate(x, y, x[:16], y[:16], preset="quick", epochs=1, optimizer="rmsprop", progress=False, device="cpu")


# --------------------------------------------------------------------------- the configuration (issue 48)


def _config_before_issue_48(preset, defense=None, *, arch=None, epochs=None, batch_size=None, lr=None, optimizer=None,
                            augment=None, at_eps=4 / 255, poison_ratio=1.0, seed=0, device="cpu", amp=False):
    """result.config as evaluate() built it inline before EvalConfig (kept here as the reference)."""
    cfg = dict(EVAL_PRESETS[preset])
    dfn = Dfn.REGISTRY[defense] if defense is not None else None
    if dfn is not None:
        cfg.update(dfn.recipe.get(preset, {}))
    cfg.setdefault("optimizer", "sgd")
    for k, v in (("arch", arch), ("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("optimizer", optimizer)):
        if v is not None:
            cfg[k] = v
    if augment is not None:
        cfg["crop"] = cfg["flip"] = bool(augment)
    adversarial = dfn is not None and dfn.kind == "adversarial"
    return {**cfg, "defense": defense, "poison_ratio": poison_ratio, "seed": seed,
            "at_eps": at_eps if adversarial else None, "preset": preset, "device": device, "amp": amp}


OVERRIDES = [{}, dict(arch="mlp", epochs=3, batch_size=17, lr=0.2), dict(optimizer="adam", augment=False),
             dict(optimizer="sgd", augment=True, at_eps=8 / 255, poison_ratio=0.25, seed=7), dict(lr=1, augment=0)]


@pytest.mark.parametrize("preset", list(EVAL_PRESETS))
@pytest.mark.parametrize("overrides", OVERRIDES)
def test_config_record_is_the_dict_of_before(preset, overrides):
    """result.config, produced from the EvalConfig, is the dict evaluate() recorded before it (keys in
    the same order: results.json files compare it): the preset, then the defense's recipe for the
    preset, then the explicit arguments; augment sets crop and flip."""
    for defense in (None, *Dfn.DEFENSES):
        got = EvalConfig.build(preset, defense, **overrides).record(CPU, False)
        want = _config_before_issue_48(preset, defense, **overrides)
        assert list(got.items()) == list(want.items()), (defense, got, want)


def test_evaluate_records_the_config_of_before(data):
    res = run(*data, preset="paper", defense="at", epochs=1, lr=None, batch_size=64, augment=False, seed=3)
    want = _config_before_issue_48("paper", "at", arch="cnn-small", epochs=1, batch_size=64, augment=False, seed=3)
    assert list(res.config.items()) == list(want.items())
    assert want["schedule"] == "step40-80" and want["lr"] == 0.1  # the defense's recipe for the preset


def test_evaluate_takes_a_config(data):
    cfg = EvalConfig.build("quick", "cutout", arch="cnn-small", epochs=2, batch_size=32, lr=0.05, seed=1)
    by_config = evaluate(*data, config=cfg, device="cpu", progress=False)
    by_keywords = run(*data, defense="cutout", epochs=2, seed=1)
    assert same_run(by_config, by_keywords) and by_config.config == by_keywords.config
    with pytest.raises(TypeError, match=r"not both.*\['epochs'\]"):
        evaluate(*data, config=cfg, epochs=3, device="cpu", progress=False)
    with pytest.raises(TypeError, match="config must be an EvalConfig"):
        evaluate(*data, config=dataclasses.asdict(cfg), device="cpu", progress=False)


def test_config_is_frozen_and_precedence():
    cfg = EvalConfig.build("paper", "at")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    assert (cfg.epochs, cfg.lr, cfg.schedule, cfg.arch) == (100, 0.1, "step40-80", "resnet18")  # the defense's recipe
    assert EvalConfig.build("paper", "at", lr=0.3, schedule="cosine").lr == 0.3  # explicit arguments win
    assert EvalConfig.build("paper", "at", lr=None).lr == 0.1  # None keeps the recipe's value
    assert EvalConfig.build("quick", "at").epochs == EVAL_PRESETS["quick"]["epochs"]  # no recipe for quick
    assert (EvalConfig.build("adam", augment=True).crop, EvalConfig.build("adam", augment=True).flip) == (True, True)
    assert EvalConfig.build("adam").optimizer == "adam" and EvalConfig.build("quick").optimizer == "sgd"
    assert dataclasses.replace(cfg, seed=4).seed == 4
    with pytest.raises(TypeError, match="unexpected keyword argument 'nesterov'"):
        EvalConfig.build("quick", nesterov=True)
    with pytest.raises(ValueError, match="augment or crop/flip"):
        EvalConfig.build("quick", augment=False, crop=True)


@pytest.mark.parametrize("name,value,choices", [
    ("optimizer", "rmsprop", OPTIMIZERS), ("arch", "resnet9", ARCHS), ("schedule", "linear", SCHEDULES),
    ("optimizer", ["sgd"], OPTIMIZERS), ("schedule", "", SCHEDULES),
])
def test_config_refuses_unknown_names(name, value, choices):
    """An unknown optimizer, arch or schedule is refused naming the argument and listing the choices,
    whether the config is built or constructed directly."""
    with pytest.raises(ValueError) as built:
        EvalConfig.build("quick", **{name: value})
    assert str(built.value) == f"{name} must be one of {tuple(choices)}, got {value!r}"
    fields = dict(dataclasses.asdict(EvalConfig.build("quick")), **{name: value})
    with pytest.raises(ValueError, match=f"^{name} must be one of"):
        EvalConfig(**fields)


@pytest.mark.parametrize("kw", [dict(preset="slow"), dict(preset=["quick"]), dict(defense="sharpen"),
                                dict(defense="AT"), dict(defense=3)])
def test_config_refuses_unknown_preset_and_defense(kw):
    name = next(iter(kw))
    choices = tuple(EVAL_PRESETS) if name == "preset" else Dfn.DEFENSES
    with pytest.raises(ValueError) as err:
        EvalConfig.build(**kw)
    none_or = "None or " if name == "defense" else ""
    assert str(err.value) == f"{name} must be {none_or}one of {choices}, got {kw[name]!r}"
    fields = dict(dataclasses.asdict(EvalConfig.build("quick")), **kw)
    with pytest.raises(ValueError, match=f"^{name} must be"):
        EvalConfig(**fields)


@pytest.mark.parametrize("kw,match", [
    (dict(epochs=0), "epochs must be a positive int"), (dict(epochs=2.0), "epochs must be a positive int"),
    (dict(epochs=True), "epochs must be a positive int"), (dict(batch_size=-1), "batch_size must be a positive int"),
    (dict(eval_every=0), "eval_every must be a positive int"), (dict(lr=0), "lr must be a positive number"),
    (dict(lr=math.inf), "lr must be a positive number"), (dict(lr="0.1"), "lr must be a positive number"),
    (dict(momentum=-0.1), "momentum must be a non-negative number"),
    (dict(weight_decay=math.nan), "weight_decay must be a non-negative number"),
    (dict(poison_ratio=1.01), r"poison_ratio must lie in \[0, 1\]"),
    (dict(poison_ratio=math.nan), r"poison_ratio must lie in \[0, 1\]"),
    (dict(defense="at", at_eps=0.0), r"at_eps must lie in \(0, 1\]"),
    (dict(defense="at", at_eps=1.5), r"at_eps must lie in \(0, 1\]"),
    (dict(crop=1), "crop must be True or False"), (dict(seed=1.5), "seed must be an int"),
])
def test_config_refuses_bad_numbers(kw, match):
    with pytest.raises(ValueError, match="^" + match):
        EvalConfig.build("quick", **kw)


def test_at_eps_is_checked_and_recorded_only_under_adversarial_training():
    assert EvalConfig.build("quick", "cutout", at_eps=2.0).record(CPU, False)["at_eps"] is None
    assert EvalConfig.build("quick", "at", at_eps=8 / 255).record(CPU, False)["at_eps"] == 8 / 255


def test_schedules_and_optimizers_are_registries():
    """The learning rate per epoch of every schedule, and every optimizer, come from their registries."""
    assert OPTIMIZERS == tuple(OPTIMIZER_BUILDERS) == ("sgd", "adam") and SCHEDULES == tuple(SCHEDULE_BUILDERS)
    model = torch.nn.Linear(2, 2)
    for name in OPTIMIZERS:
        cfg = EvalConfig.build("quick", optimizer=name, lr=0.5)
        opt = OPTIMIZER_BUILDERS[name](model.parameters(), cfg)
        assert type(opt).__name__.lower() == name and opt.param_groups[0]["lr"] == 0.5
        assert opt.param_groups[0]["weight_decay"] == cfg.weight_decay

    def lrs(schedule, epochs):
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched, out = SCHEDULE_BUILDERS[schedule](opt, epochs), []
        for _ in range(epochs):
            out.append(opt.param_groups[0]["lr"])
            opt.step()  # (no gradients: the weights stay)
            sched.step()
        return out

    assert lrs("constant", 3) == [1.0] * 3
    assert lrs("cosine", 4) == pytest.approx([(1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    step = lrs("step40-80", 100)
    assert step[39] == 1.0 and step[40] == pytest.approx(0.1) and step[79] == pytest.approx(0.1)
    assert step[80] == pytest.approx(0.01) and step[99] == pytest.approx(0.01)


def test_victims_name_no_defense():
    """miue/evaluation/victims.py applies a defense by its kind (miue.evaluation.defenses.REGISTRY), never by its name: no
    string constant of the module (a comparison, a dict key, a membership test, a match case) is a
    defense's name."""
    import ast
    import inspect

    import miue.evaluation.victims as V

    tree = ast.parse(inspect.getsource(V))
    named = sorted(f"line {node.lineno}: {node.value!r}" for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in Dfn.REGISTRY)
    assert not named, f"miue/evaluation/victims.py names defenses: {named}"
