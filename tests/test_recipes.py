"""The objective registry and the published recipes (miue/objectives.py): each recipe's order of
operations on a tiny run, the stop rules, ``recipe="matched"`` as the preset's schedule, PIL's
step against a hand computation, REM's per-batch loop, the paper-preset fixes."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import miue
from miue import objectives
from miue.craft.attack import Attack
from miue.craft.engine import Engine
from miue.craft.surrogate import Surrogate
from miue.presets import PRESET_VALUES, CraftConfig, make_config

pytestmark = pytest.mark.usefixtures("epoch_rounds")  # the cpu presets with one surrogate epoch per round (conftest.py)

EPS = 8 / 255


def _data(n=48, size=8, classes=4, seed=0):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (n, 1, size, size), dtype=np.uint8), np.arange(n) % classes


def _separable(n=64, size=8, classes=4):
    """Each class a flat grey level: any surrogate fits it in a few steps."""
    y = np.arange(n) % classes
    x = np.repeat((y * 60 + 20).astype(np.uint8)[:, None, None, None], size * size, 0).reshape(n, 1, size, size)
    return np.ascontiguousarray(x), y


# ------------------------------------------------------------------ the registry


def test_every_registered_objective_is_accepted_by_the_cli():
    from miue.cli import build_parser

    for name in objectives.NAMES:
        args = build_parser().parse_args(["craft", "digits", "--out", "x.npz", "--objective", name])
        assert args.objective == name
        for recipe in objectives.RECIPES:
            args = build_parser().parse_args(["craft", "digits", "--out", "x", "--objective", name, "--recipe", recipe])
            assert args.recipe == recipe
    with pytest.raises(SystemExit):
        build_parser().parse_args(["craft", "digits", "--out", "x", "--objective", "nonsense"])


def test_registry_records_are_complete():
    for name, obj in objectives.OBJECTIVES.items():
        assert obj.name == name and obj.summary and obj.paper
        assert obj.surrogate in ("poisoned", "clean", "none")
        assert obj.attack in ("every_round", "after_training")
        assert (obj.loss is None) == (obj.surrogate == "none" or name == "pil")
        if obj.published is not None:
            vals = obj.published.values(EPS)
            assert set(vals) <= set(CraftConfig.__dataclass_fields__), set(vals) - set(CraftConfig.__dataclass_fields__)
            assert "/" in obj.published.source  # names the repository it comes from
    assert set(objectives.NAMES) == {"miue", "miue-linear", "em", "tap", "rem", "pil", "random", "ar", "lsp", "ops"}


def test_unknown_recipe_and_objective_are_refused_by_name():
    x, y = _data()
    with pytest.raises(ValueError, match="recipe"):
        miue.craft_fast(x, y, preset="cnn", objective="em", recipe="authors", progress=False)
    with pytest.raises(ValueError, match="objective"):
        make_config("cnn", objective="emm")


# ------------------------------------------------------------------ matched = the preset's schedule


@pytest.mark.parametrize("objective", ["em", "tap", "rem"])
def test_matched_recipe_is_the_presets_schedule(objective):
    matched = make_config("demo", objective=objective, recipe="matched").to_dict()
    miue_cfg = make_config("demo", objective="miue").to_dict()
    for k in ("objective", "recipe"):
        matched.pop(k), miue_cfg.pop(k)
    assert matched == miue_cfg


def test_published_recipe_keeps_the_presets_surrogate_and_speed_options():
    for preset in ("demo", "cpu", "paper", "fast"):
        cfg = make_config(preset, objective="em")
        for k in ("arch", "amp", "channels_last", "compile", "cuda_graphs"):
            assert getattr(cfg, k) == PRESET_VALUES[preset][k], (preset, k)
        assert (cfg.train_steps, cfg.train_batch_size, cfg.pgd_steps, cfg.lr_schedule) == (10, 512, 20, "constant")
        assert cfg.alpha_start == cfg.alpha_end == pytest.approx(EPS / 10)
        assert (cfg.grad_clip, cfg.weight_decay, cfg.flip, cfg.input_norm, cfg.stop_eval_acc) == \
            (5.0, 5e-4, False, "none", 0.99)
    assert make_config("demo", objective="pil").arch == "pil-linear"  # PIL's surrogate is the method
    assert make_config("demo", objective="em", rounds=7, pgd_steps=5).rounds == 7  # overrides win


def test_matched_em_is_bitwise_the_published_path_with_the_presets_values():
    """recipe="matched" changes only the values the recipe sets: published EM with every recipe
    field set back to the preset's crafts the same δ bit for bit."""
    x, y = _data()
    kw = dict(preset="cnn", objective="em", rounds=2, pgd_steps=2, seed=3, progress=False, device="cpu")
    a = miue.craft_fast(x, y, recipe="matched", **kw)
    back = {k: v for k, v in PRESET_VALUES["cnn"].items() if k in objectives.get("em").published.values(EPS)}
    fields = {f: getattr(CraftConfig, f) for f in objectives.get("em").published.values(EPS) if f not in back}
    b = miue.craft_fast(x, y, recipe="published", **{**back, **fields, "rounds": 2, "pgd_steps": 2},
                        **{k: v for k, v in kw.items() if k not in ("rounds", "pgd_steps")})
    assert torch.equal(a.delta, b.delta)
    assert a.config["recipe"] == "matched" and b.config["recipe"] == "published"
    c = miue.craft_fast(x, y, recipe="published", **kw)
    assert not torch.equal(a.delta, c.delta)


# ------------------------------------------------------------------ EM's published order of operations


class _Spy:
    """Records the engine's calls in order: surrogate steps, PGD steps (with α), evaluations."""

    def __init__(self, monkeypatch):
        self.log = []
        orig_train, orig_pgd, orig_acc = Surrogate.step, Attack.step, Engine.poisoned_accuracy

        def train_step(sur, x, y, adversarial=False):
            self.log.append(("train", len(y), sur.opt.param_groups[0]["lr"]))
            return orig_train(sur, x, y, adversarial)

        def pgd_step(attack, d, clean_f, c_box, y, alpha, eps, box):
            self.log.append(("pgd", len(y), float(alpha)))
            return orig_pgd(attack, d, clean_f, c_box, y, alpha, eps, box)

        def acc(eng):
            a = orig_acc(eng)
            self.log.append(("eval", a))
            return a

        monkeypatch.setattr(Surrogate, "step", train_step)
        monkeypatch.setattr(Attack, "step", pgd_step)
        monkeypatch.setattr(Engine, "poisoned_accuracy", acc)

    def kinds(self):
        out = []
        for e in self.log:
            if not out or out[-1][0] != e[0]:
                out.append([e[0], 0])
            out[-1][1] += 1
        return [tuple(o) for o in out]


def test_em_published_order_of_operations(monkeypatch):
    spy = _Spy(monkeypatch)
    x, y = _data(n=40)
    r = miue.craft_fast(x, y, preset="cnn", objective="em", rounds=2, train_batch_size=16, batch_size=40,
                        stop_eval_acc=1.0, progress=False, device="cpu")
    # per round: 10 surrogate steps, then 20 PGD steps over the one 40-image batch, then one evaluation
    assert spy.kinds() == [("train", 10), ("pgd", 20), ("eval", 1), ("train", 10), ("pgd", 20), ("eval", 1)]
    assert [e[2] for e in spy.log if e[0] == "pgd"] == pytest.approx([EPS / 10] * 40)
    assert {e[2] for e in spy.log if e[0] == "train"} == {0.1}  # constant learning rate
    assert all(e[1] == 16 for e in spy.log if e[0] == "train")
    assert r.config["stop"] == "cap" and r.history[-1]["stop"] == "cap"  # (accuracy can never exceed 1.0)
    assert r.config["recipe"] == "published" and r.config["precision"] in ("fp32", "bf16")


def test_em_published_stop_fires_early_on_separable_data(monkeypatch):
    spy = _Spy(monkeypatch)
    x, y = _separable()
    r = miue.craft_fast(x, y, preset="cnn", objective="em", arch="cnn-small", progress=False, device="cpu")
    rounds = len(r.history)
    assert rounds < 10, rounds  # the cap is 100
    assert r.history[-1]["stopped"] and r.history[-1]["eval_acc"] > 0.99 and r.config["stop"] == "stop_eval_acc"
    assert all(h["eval_acc"] <= 0.99 for h in r.history[:-1])
    assert spy.log[-1][0] == "eval"  # the stop is measured after the pass, on the whole poisoned set


def test_em_published_eval_is_on_the_whole_poisoned_set_in_eval_mode(monkeypatch):
    seen = {}
    orig = Engine.poisoned_accuracy

    def acc(eng):
        modes = []
        h = eng.model.register_forward_pre_hook(lambda m, inp: modes.append((m.training, inp[0].shape[0])))
        try:
            return orig(eng)
        finally:
            h.remove()
            seen["modes"] = modes

    monkeypatch.setattr(Engine, "poisoned_accuracy", acc)
    x, y = _data(n=40)
    miue.craft_fast(x, y, preset="cnn", objective="em", rounds=1, batch_size=16, progress=False, device="cpu")
    assert [m for m, _ in seen["modes"]] == [False] * 3 and sum(n for _, n in seen["modes"]) == 40


def test_em_published_sequential_order_carries_over_and_resumes(tmp_path):
    x, y = _data(n=40)
    kw = dict(preset="cnn", objective="em", train_batch_size=16, pgd_steps=2, progress=False, device="cpu")
    whole = miue.craft_fast(x, y, rounds=3, stop_eval_acc=1.0, **kw)
    ck = str(tmp_path / "ck")
    miue.craft_fast(x, y, rounds=3, stop_eval_acc=1.0, checkpoint_dir=ck, **kw)
    import json
    import os

    st = torch.load(os.path.join(ck, "checkpoint.pt"), weights_only=False)
    assert st["cursor"] == (3 * 10 * 16) % 40 and json.loads(st["config"])["recipe"] == "published"
    again = miue.craft_fast(x, y, rounds=3, stop_eval_acc=1.0, checkpoint_dir=ck, **kw)  # resumes: nothing to do
    assert torch.equal(again.delta, whole.delta)


def test_grad_clip_bounds_the_surrogate_step(monkeypatch):
    norms = []
    orig = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *a, **k):
        params = list(params)
        out = orig(params, max_norm, *a, **k)
        norms.append(float(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).norm()))
        return out

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    x, y = _data(n=32)
    miue.craft_fast(x, y, preset="cnn", objective="em", rounds=1, pgd_steps=1, grad_clip=1e-3, progress=False,
                    device="cpu")
    assert len(norms) == 10 and max(norms) <= 1e-3 * (1 + 1e-4)


# ------------------------------------------------------------------ TAP and PIL


def test_tap_published_trains_on_clean_data_then_attacks_with_restarts(monkeypatch):
    spy = _Spy(monkeypatch)
    x, y = _data(n=32)
    r = miue.craft_fast(x, y, preset="cnn", objective="tap", train_epochs=2, pgd_steps=3, restarts=2, batch_size=32,
                        progress=False, device="cpu")
    # two clean epochs of batch 128 (one batch each), then 2 restarts × 3 steps of 0.05·ε, once
    assert spy.kinds() == [("train", 2), ("pgd", 6)]
    assert [e[2] for e in spy.log if e[0] == "pgd"] == pytest.approx([0.05 * EPS] * 6)
    assert len(r.history) == 1 and r.config["nesterov"] and r.config["input_norm"] == "cifar"
    assert float(r.delta.abs().max()) <= EPS + 1e-7


def test_restarts_keep_the_lowest_final_objective(monkeypatch):
    cfg = make_config("cnn", objective="tap", eps=EPS, num_classes=4, restarts=3, pgd_steps=1, train_epochs=1)
    x, y = _data(n=16)
    eng = Engine(cfg, torch.from_numpy(x), torch.from_numpy(y).long(), None, torch.device("cpu"), False)
    finals = iter([0.7, 0.2, 0.5])
    monkeypatch.setattr(Attack, "final_objective", lambda self, d, c, yy: torch.tensor(next(finals)))
    starts = []
    monkeypatch.setattr(Attack, "step", lambda self, d, *a: (starts.append(d.clone()), d.add_(len(starts)),
                                                            torch.zeros(()))[2])
    clean = torch.from_numpy(x)
    _, best = eng.attack.restarts(torch.zeros(16, 1, 8, 8), clean.float() / 255, clean, torch.from_numpy(y).long(),
                            torch.tensor(0.01), torch.tensor(EPS))
    assert torch.equal(best, starts[1] + 2)  # the second restart, moved by its one step


def test_pil_step_matches_a_hand_computation():
    """Two pixels, two classes, a fixed two-layer bias-free linear surrogate: one PGD step of PIL's
    loss (0.9·CE(f(−δ), y) + 0.1·KL(U ‖ softmax f(x + δ))) by hand in float64."""
    W1 = np.array([[1.0, -2.0], [0.5, 1.5]])
    W2 = np.array([[2.0, 0.0], [-1.0, 1.0]])
    x = np.array([[0.2, 0.7], [0.9, 0.1]])
    y = np.array([0, 1])
    d0 = np.array([[0.01, -0.02], [0.03, 0.0]])
    W = W2 @ W1

    def softmax(z):
        z = z - z.max(1, keepdims=True)
        return np.exp(z) / np.exp(z).sum(1, keepdims=True)

    # ∂/∂δ of CE(W(−δ), y): −Wᵀ(p − onehot); of KL(U ‖ p(x + δ)) = mean_i Σ_c U(log U − log p_c): Wᵀ(p − U)
    onehot = np.eye(2)[y]
    g_ce = -(softmax(-d0 @ W.T) - onehot) @ W / 2
    g_kl = (softmax((x + d0) @ W.T) - 0.5) @ W / 2
    g = 0.9 * g_ce + 0.1 * g_kl
    alpha = 0.8 / 255
    want = np.clip(d0 - alpha * np.sign(g), -EPS, EPS)

    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
            self.head = nn.Linear(2, 2, bias=False)
            self.body[1].weight.data = torch.tensor(W1, dtype=torch.float32)
            self.head.weight.data = torch.tensor(W2, dtype=torch.float32)

        def forward(self, z, return_features=False):
            h = self.body(z)
            return (h, self.head(h)) if return_features else self.head(h)

    cfg = make_config("cnn", objective="pil", eps=EPS, num_classes=2)
    clean = torch.tensor(x, dtype=torch.float32).view(2, 1, 1, 2)
    eng = Engine(cfg, clean, torch.tensor(y), Lin(), torch.device("cpu"), False)
    eng.model.eval()
    d = torch.tensor(d0, dtype=torch.float32).view(2, 1, 1, 2)
    eng.attack.step(d, clean, clean, torch.tensor(y), torch.tensor(alpha, dtype=torch.float64),
                    torch.tensor(EPS, dtype=torch.float64), eng.attack.box)
    np.testing.assert_allclose(d.view(2, 2).numpy(), want, atol=1e-7)
    # and the loss value itself
    got = objectives.pil_loss(lambda z: eng.model(z), clean, torch.tensor(d0, dtype=torch.float32).view(2, 1, 1, 2),
                              torch.tensor(y), 0.9)
    ce = -np.log(softmax(-d0 @ W.T)[np.arange(2), y]).mean()
    kl = (0.5 * (np.log(0.5) - np.log(softmax((x + d0) @ W.T)))).sum(1).mean()
    assert float(got.detach()) == pytest.approx(0.9 * ce + 0.1 * kl, rel=1e-5)


def test_pil_published_releases_within_eps_and_runs_once(monkeypatch):
    spy = _Spy(monkeypatch)
    x, y = _data(n=32)
    r = miue.craft_fast(x, y, preset="demo", objective="pil", train_epochs=2, pgd_steps=4, progress=False,
                        device="cpu")
    assert spy.kinds() == [("train", 2), ("pgd", 4)]
    assert r.config["arch"] == "pil-linear" and r.config["lr"] == 0.003
    diff = r.images.int() - torch.from_numpy(x).int()
    assert int(diff.abs().max()) <= 8 and int(diff.abs().max()) > 0


# ------------------------------------------------------------------ REM's per-batch loop


def test_rem_published_loop(monkeypatch):
    spy = _Spy(monkeypatch)
    x, y = _data(n=32)
    r = miue.craft_fast(x, y, preset="cnn", objective="rem", train_steps=4, rounds=2, train_batch_size=8,
                        batch_size=32, pgd_steps=2, eot_samples=2, rem_steps=1, progress=False, device="cpu")
    assert [h["train_steps"] for h in r.history] == [2, 2]
    assert "final_objective_loss" in r.history[-1] and "final_objective_loss" not in r.history[0]
    assert len([e for e in spy.log if e[0] == "train"]) == 4 and all(e[1] == 8 for e in spy.log if e[0] == "train")
    assert r.config["schedule"] == "per-batch" and r.config["rem_eps"] == pytest.approx(EPS / 2)
    assert float(r.delta.abs().max()) <= EPS + 1e-7 and float(r.delta.abs().max()) > 0


def test_rem_lr_steps_per_training_step():
    x, y = _data(n=32)
    r = miue.craft_fast(x, y, preset="cnn", objective="rem", train_steps=4, rounds=2, train_batch_size=8,
                        pgd_steps=1, eot_samples=1, rem_steps=1, lr_step_every=2, progress=False, device="cpu")
    assert [h["lr"] for h in r.history] == [pytest.approx(0.1), pytest.approx(0.01)]


# ------------------------------------------------------------------ the paper preset, precision, int8


def test_paper_alpha_end_is_tied_to_pgd_steps():
    assert make_config("paper").alpha_end == pytest.approx(0.4 / 255)
    assert make_config("paper", pgd_steps=20).alpha_end == pytest.approx(0.2 / 255)
    assert make_config("fast", pgd_steps=5).alpha_end == pytest.approx(0.8 / 255)
    assert make_config("paper", pgd_steps=20, alpha_end=0.3 / 255).alpha_end == pytest.approx(0.3 / 255)
    assert make_config("cnn", pgd_steps=20).alpha_end == PRESET_VALUES["cnn"]["alpha_end"]  # not the CPU presets


def test_resnet18_has_the_cifar_stem_at_every_size():
    from miue.models import build_model

    for size in (32, 84, 224):
        m = build_model("resnet18", 10, image_size=size)
        assert m.body.conv1.kernel_size == (3, 3) and m.body.conv1.stride == (1, 1)
        assert isinstance(m.body.maxpool, nn.Identity)
    m = build_model("resnet18-imagenet", 10, image_size=32)
    assert m.body.conv1.kernel_size == (7, 7) and isinstance(m.body.maxpool, nn.MaxPool2d)


def test_int8_delta_refuses_steps_below_one_level():
    x, y = _data(n=16)
    with pytest.raises(ValueError, match="int8"):
        miue.craft_fast(x, y, preset="paper", arch="cnn-small", rounds=1, delta_dtype="int8", progress=False,
                        device="cpu")
    r = miue.craft_fast(x, y, preset="cnn", rounds=1, pgd_steps=1, delta_dtype="int8", progress=False, device="cpu")
    assert r.config["delta_dtype"] == "int8"


def test_result_records_the_precision_that_ran(monkeypatch):
    x, y = _data(n=16)
    monkeypatch.setenv("MIUE_CPU_BF16", "0")
    r = miue.craft_fast(x, y, preset="demo", rounds=1, pgd_steps=1, progress=False, device="cpu")
    assert r.config["precision"] == "fp32" and "MIUE_CPU_BF16=0" in r.config["precision_reason"]
    monkeypatch.setenv("MIUE_CPU_BF16", "1")
    r = miue.craft_fast(x, y, preset="demo", rounds=1, pgd_steps=1, progress=False, device="cpu")
    assert r.config["precision"] == "bf16" and "precision_reason" not in r.config
    r = miue.craft_fast(x, y, preset="cnn", rounds=1, pgd_steps=1, progress=False, device="cpu")
    assert r.config["precision"] == "fp32" and "precision_reason" not in r.config


def test_recipe_fields_are_validated_by_name():
    x, y = _data(n=16)
    for bad, word in ((dict(lr_schedule="linear"), "lr_schedule"), (dict(delta_init="gauss"), "delta_init"),
                      (dict(restarts=0), "restarts"), (dict(grad_clip=-1.0), "grad_clip"),
                      (dict(stop_eval_acc=1.5), "stop_eval_acc"), (dict(train_order="random"), "train_order"),
                      (dict(schedule="per-batch"), "per-batch"), (dict(input_norm="cifar10"), "input_norm")):
        with pytest.raises(ValueError, match=word):
            miue.craft_fast(x, y, preset="cnn", objective="miue", rounds=1, progress=False, device="cpu", **bad)


def test_old_checkpoints_resume_as_matched(tmp_path):
    """A checkpoint written before recipes existed has no "recipe": it ran the preset's schedule."""
    import json
    import os

    x, y = _data(n=16)
    ck = str(tmp_path / "ck")
    kw = dict(preset="cnn", objective="em", rounds=2, pgd_steps=1, progress=False, device="cpu", checkpoint_dir=ck)
    miue.craft_fast(x, y, recipe="matched", rounds=1, **{k: v for k, v in kw.items() if k != "rounds"}, extend=False)
    path = os.path.join(ck, "checkpoint.pt")
    st = torch.load(path, weights_only=False)
    cfg = json.loads(st["config"])
    for k in [k for k in cfg if k not in ("objective", "eps", "rounds", "pgd_steps", "pgd_batch_size",
                                          "train_batch_size", "arch", "seed", "classwise", "temperature",
                                          "alpha_start", "alpha_end", "lr", "delta_dtype", "num_classes", "flip",
                                          "train_steps", "train_epochs", "stop_train_acc", "pgd_bn", "rem_eps",
                                          "rem_steps", "preset", "momentum", "weight_decay", "lr_min")]:
        del cfg[k]
    st["config"] = json.dumps(cfg)
    torch.save(st, path)
    with pytest.raises(ValueError, match="recipe"):
        miue.craft_fast(x, y, recipe="published", extend=True, **kw)
    r = miue.craft_fast(x, y, recipe="matched", extend=True, **kw)
    assert len(r.history) == 2


def test_poisoned_accuracy_counts_every_image():
    cfg = make_config("cnn", objective="em", eps=EPS, num_classes=4, pgd_batch_size=7)
    x, y = _separable(n=30)
    eng = Engine(cfg, torch.from_numpy(x), torch.from_numpy(y).long(), None, torch.device("cpu"), False)
    with torch.no_grad():
        preds = eng.model.eval()(torch.from_numpy(x).float() / 255).argmax(1)
    assert eng.poisoned_accuracy() == pytest.approx(float((preds == torch.from_numpy(y)).float().mean()))
    assert math.isfinite(eng.poisoned_accuracy())
    assert F.one_hot(torch.tensor([0]), 4).sum() == 1


def test_no_objective_name_is_a_literal_in_the_crafting_package():
    """Objectives carry their behaviour (miue/objectives.py: loss, input_loss, box, matched_step,
    generator, surrogate, attack, inner_max): the engine and the run read the record and never
    name an objective: no objective name is a string literal anywhere in miue/craft/ outside
    docstrings (issue 48)."""
    import ast
    import glob
    import os

    from miue.objectives import OBJECTIVES

    root = os.path.join(os.path.dirname(__file__), "..", "miue", "craft")
    found = []
    for path in sorted(glob.glob(os.path.join(root, "*.py"))):
        tree = ast.parse(open(path).read())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        found += [f"{os.path.basename(path)}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in OBJECTIVES
                  and id(n) not in docstrings]
    assert not found, f"objective names as literals in miue/craft/: {found}"


def test_no_objective_or_defense_name_is_compared_anywhere_in_the_package():
    """Behaviour is chosen by records: outside its registry (miue/objectives.py,
    miue/evaluation/defenses.py) no module of the package compares a value with an objective's or
    a defense's name (issue 48's rule, package-wide; miue/craft/ and the victims are stricter:
    no such literal at all)."""
    import ast
    import glob
    import os

    from miue.evaluation.defenses import REGISTRY
    from miue.objectives import OBJECTIVES

    names = set(OBJECTIVES) | set(REGISTRY)
    root = os.path.join(os.path.dirname(__file__), "..", "miue")
    found = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        if os.path.basename(path) in ("objectives.py", "defenses.py"):
            continue
        for cmp in ast.walk(ast.parse(open(path).read())):
            if isinstance(cmp, ast.Compare):
                found += [f"{os.path.relpath(path, root)}:{cmp.lineno} {n.value!r}"
                          for side in [cmp.left, *cmp.comparators] for n in ast.walk(side)
                          if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names]
    assert not found, f"names compared outside their registries: {found}"
