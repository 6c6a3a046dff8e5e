"""Tests of the command line (miue.cli): run in-process through ``main([...])`` and once as
``python -m miue``. Crafting uses scikit-learn's bundled 8×8 digits (10 per class, one round
of one PGD step); evaluation one epoch of ``cnn-small``. ``miue demo`` itself is too slow
here: only its --help runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import miue
from miue.cli import build_parser, main
from miue.evaluation.defenses import DEFENSES
from miue.models import ARCHS

pytestmark = pytest.mark.usefixtures("epoch_rounds")  # crafting tests: one epoch per round (conftest)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


CRAFT = ["--preset", "cnn", "--rounds", "1", "--pgd-steps", "1", "--per-class", "10", "--quiet"]


@pytest.fixture(scope="module")
def poisons(tmp_path_factory):
    """A poisons file crafted once through the CLI: (path, stdout, stderr, exit status)."""
    path = str(tmp_path_factory.mktemp("cli") / "digits.npz")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["craft", "digits", "--out", path, *CRAFT])
    return path, out.getvalue(), err.getvalue(), rc


# --------------------------------------------------------------------------- info


def test_info_text(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends" in out and "torch" in out and "miue" in out
    assert "reference" in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"miue", "torch", "backends"} <= set(info)
    assert info["miue"] == miue.__version__
    assert info["torch"] == torch.__version__
    assert info["backends"] == miue.available_backends() and "reference" in info["backends"]


def test_info_subprocess(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "miue", "info"], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "backends" in p.stdout and "reference" in p.stdout


# --------------------------------------------------------------------------- craft and evaluate


def test_craft_writes_loadable_result(poisons):
    path, out, err, rc = poisons
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(f"wrote {path}") and "100 images" in lines[0] and "objective miue" in lines[0]
    res = miue.CraftResult.load(path)
    assert res.images.dtype == torch.uint8 and tuple(res.images.shape) == (100, 1, 8, 8)
    assert res.labels.shape == (100,) and torch.bincount(res.labels).tolist() == [10] * 10
    assert res.config["dataset"] == "digits"
    assert len(res.config["classes"]) == 10


def test_craft_options_and_png_export(tmp_path, capsys):
    out = tmp_path / "em.pt"
    png = tmp_path / "png"
    rc = main(["craft", "digits", "--out", str(out), "--objective", "em", "--eps", "0.0156862745", "--classwise",
               "--png-dir", str(png), "--seed", "3", "--train-steps", "2", *CRAFT])
    assert rc == 0, capsys.readouterr().err
    line = capsys.readouterr().out.strip()
    assert "objective em" in line and "eps 0.01569" in line
    res = miue.CraftResult.load(str(out))
    assert len(res.labels) == 100
    assert res.config["train_steps"] == 2  # --train-steps reaches the crafting config
    files = [f for _, _, fs in os.walk(png) for f in fs if f.endswith(".png")]
    assert len(files) == 100


def test_craft_amp_flag_reaches_the_config(tmp_path, monkeypatch):
    """--amp on/off overrides the preset's bf16 autocast (the effective value is recorded: on
    only where native bf16 exists, here forced by MIUE_CPU_BF16)."""
    monkeypatch.setenv("MIUE_CPU_BF16", "1")
    for flag, want in (("on", True), ("off", False)):
        out = tmp_path / f"{flag}.npz"
        assert main(["craft", "digits", "--out", str(out), "--amp", flag, *CRAFT]) == 0
        assert miue.CraftResult.load(str(out)).config["amp"] is want


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("4 / 255", 4 / 255), ("0.0314", 0.0314), ("1", 1.0),
                                         ("1/1", 1.0)])
def test_eps_as_fraction_or_float(text, value):
    for argv, dest in ((["craft", "digits", "--out", "x.npz", "--eps", text], "eps"),
                       (["evaluate", "x.npz", "--at-eps", text], "at_eps")):
        assert getattr(build_parser().parse_args(argv), dest) == value  # exactly: 8/255 is the float 8 / 255


@pytest.mark.parametrize("text", ["8/0", "8/", "/255", "8//255", "eight/255", "0", "-8/255", "300/255", "nan", "1/2/3"])
def test_bad_eps_exits_2_naming_the_option(text, capsys):
    with pytest.raises(SystemExit) as e:
        main(["craft", "digits", "--out", "x.npz", "--eps", text])
    assert e.value.code == 2
    assert "--eps" in capsys.readouterr().err


def test_craft_eps_fraction_no_suffix_and_extend(tmp_path, capsys):
    out, ck = tmp_path / "poisons", str(tmp_path / "ck")
    rc = main(["craft", "digits", "--out", str(out), "--eps", "4/255", "--checkpoint-dir", ck, *CRAFT])
    assert rc == 0, capsys.readouterr().err
    assert f"wrote {out}.npz" in capsys.readouterr().out and not out.exists()
    res = miue.CraftResult.load(f"{out}.npz")
    assert res.config["eps"] == 4 / 255 and res.delta.abs().max() <= 4 / 255
    more = list(CRAFT)
    more[more.index("--rounds") + 1] = "2"
    argv = ["craft", "digits", "--out", str(out), "--eps", "4/255", "--checkpoint-dir", ck, *more]
    assert main(argv) == 1  # a finished 1-round run is not silently extended
    assert "extend=True" in capsys.readouterr().err
    assert main(argv + ["--extend"]) == 0, capsys.readouterr().err
    res2 = miue.CraftResult.load(f"{out}.npz")
    assert [h["round"] for h in res2.history] == [1, 2]
    assert res2.config["schedule_changes"] == [{"round": 1, "rounds_before": 1, "rounds_after": 2}]


def test_evaluate_prints_accuracy_and_writes_json(poisons, tmp_path, capsys):
    path = poisons[0]
    js = tmp_path / "out.json"
    rc = main(["evaluate", path, "--preset", "quick", "--epochs", "1", "--arch", "cnn-small", "--quiet", "--json", str(js)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"clean test accuracy of a cnn-small victim trained on {path}")
    acc = float(lines[0].rsplit(":", 1)[1])
    data = json.loads(js.read_text())
    assert abs(data["test_acc"] - acc) < 1e-4
    assert data["config"]["arch"] == "cnn-small" and data["config"]["epochs"] == 1 and data["config"]["preset"] == "quick"
    assert len(data["test_acc_history"]) == 1


def test_evaluate_adam_recipe_and_overrides(poisons, tmp_path, capsys):
    js = tmp_path / "adam.json"
    rc = main(["evaluate", poisons[0], "--preset", "adam", "--epochs", "1", "--arch", "mlp", "--quiet", "--json", str(js)])
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads(js.read_text())["config"]
    assert cfg["optimizer"] == "adam" and not cfg["crop"] and cfg["arch"] == "mlp"
    rc = main(["evaluate", poisons[0], "--preset", "quick", "--epochs", "1", "--arch", "cnn-small", "--quiet",
               "--optimizer", "adam", "--augment", "off", "--json", str(js)])
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads(js.read_text())["config"]
    assert cfg["optimizer"] == "adam" and not cfg["flip"] and cfg["preset"] == "quick"


def test_evaluate_with_defense(poisons, capsys):
    rc = main(["evaluate", poisons[0], "--preset", "quick", "--epochs", "1", "--arch", "cnn-small", "--quiet",
               "--defense", "cutout", "--dataset", "digits"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "with defense cutout" in cap.out


# --------------------------------------------------------------------------- errors


def _assert_one_line_error(err: str, command: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"miue {command}: error:"), err
    assert "Traceback" not in err


def test_missing_dataset_path(tmp_path, capsys):
    rc = main(["craft", str(tmp_path / "no-such-dir"), "--out", str(tmp_path / "x.npz"), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 1
    _assert_one_line_error(cap.err, "craft")
    assert "no-such-dir" in cap.err
    assert not (tmp_path / "x.npz").exists()


def test_missing_poisons_file(tmp_path, capsys):
    rc = main(["evaluate", str(tmp_path / "missing.npz"), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 1
    _assert_one_line_error(cap.err, "evaluate")


def test_evaluate_bad_dataset_and_poison_ratio(poisons, capsys):
    path = poisons[0]
    assert main(["evaluate", path, "--dataset", "/no/such/dataset", "--quiet"]) == 1
    _assert_one_line_error(capsys.readouterr().err, "evaluate")
    # poisons crafted on a subset cannot be mixed with the full clean training set
    assert main(["evaluate", path, "--poison-ratio", "0.5", "--preset", "quick", "--epochs", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    _assert_one_line_error(err, "evaluate")
    assert "poison-ratio" in err
    assert main(["evaluate", path, "--poison-ratio", "1.5", "--preset", "quick", "--epochs", "1", "--quiet"]) == 1
    _assert_one_line_error(capsys.readouterr().err, "evaluate")
    assert main(["evaluate", path, "--epochs", "0", "--preset", "quick", "--quiet"]) == 1
    _assert_one_line_error(capsys.readouterr().err, "evaluate")


def test_debug_env_reraises(tmp_path, monkeypatch):
    monkeypatch.setenv("MIUE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):  # the original exception, not the one-line error
        main(["evaluate", str(tmp_path / "missing.npz"), "--quiet"])


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["craft"],
        ["craft", "digits"],  # --out is required
        ["craft", "digits", "--out", "x.npz", "--eps", "abc"],
        ["craft", "digits", "--out", "x.npz", "--preset", "nope"],
        ["craft", "digits", "--out", "x.npz", "--objective", "nope"],
        ["craft", "digits", "--out", "x.npz", "--backend", "cuda"],
        ["evaluate"],
        ["evaluate", "x.npz", "--defense", "nope"],
        ["evaluate", "x.npz", "--arch", "nope"],
        ["evaluate", "x.npz", "--preset", "fast"],
        ["evaluate", "x.npz", "--epochs", "two"],
        ["info", "--bogus"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command,options",
    [
        (None, ["info", "craft", "evaluate", "demo", "--verbose"]),
        ("info", ["--json"]),
        ("craft", ["--out", "--preset", "--objective", "--eps", "--rounds", "--pgd-steps", "--batch-size", "--train-steps", "--arch", "--amp",
                   "--classwise", "--per-class", "--delta-dtype", "--release-rounding", "--checkpoint-dir", "--extend",
                   "--png-dir", "--device", "--backend", "--seed", "--quiet"]),
        ("evaluate", ["--dataset", "--preset", "--arch", "--epochs", "--defense", "--at-eps", "--poison-ratio", "--json",
                      "--device", "--seed", "--quiet"]),
        ("demo", ["--out-dir", "--methods", "--quick", "--preset", "--train-per-class", "--device", "--seed", "--quiet"]),
    ],
)
def test_help(command, options, capsys):
    with pytest.raises(SystemExit) as e:
        main(([command] if command else []) + ["--help"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage: miue" in out
    for opt in options:
        assert opt in out, (command, opt)


def test_parser_choices_follow_the_registries():
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    ev = sub.choices["evaluate"]
    defense = next(a for a in ev._actions if a.dest == "defense")
    arch = next(a for a in ev._actions if a.dest == "arch")
    assert tuple(defense.choices) == tuple(DEFENSES)
    assert tuple(arch.choices) == tuple(ARCHS)


# --------------------------------------------------------------------------- demo --methods


def test_demo_methods_choices_follow_the_objectives():
    from miue.demo import DEFAULT_METHODS, NAMES
    from miue.presets import OBJECTIVES

    demo = next(a for a in build_parser()._actions if a.dest == "command").choices["demo"]
    methods = next(a for a in demo._actions if a.dest == "methods")
    assert tuple(methods.choices) == tuple(NAMES)
    from miue.objectives import OBJECTIVES as RECORDS

    # every objective, and the matched variant of every objective with a published recipe
    assert set(NAMES) == set(OBJECTIVES) | {f"{n}-matched" for n, o in RECORDS.items() if o.published}
    assert methods.default == list(DEFAULT_METHODS) == ["miue", "em", "em-matched", "random"]
    assert build_parser().parse_args(["demo", "--methods", "tap", "ops", "em-matched"]).methods == \
        ["tap", "ops", "em-matched"]


def test_demo_rejects_unknown_methods(capsys, tmp_path):
    from miue.demo import run_demo

    with pytest.raises(SystemExit) as e:
        main(["demo", "--methods", "nope", "--out-dir", str(tmp_path / "d")])
    assert e.value.code == 2 and "--methods" in capsys.readouterr().err
    for bad, match in (((), "at least one"), (("miue", "bogus"), "bogus")):
        with pytest.raises(ValueError, match=match):
            run_demo(out_dir=str(tmp_path / "d"), methods=bad)
    with pytest.raises(ValueError, match="preset must be one of"):
        run_demo(out_dir=str(tmp_path / "d"), preset="paper")
    with pytest.raises(SystemExit):
        main(["demo", "--preset", "paper", "--out-dir", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()  # refused before any work


@pytest.fixture
def tiny_demo(monkeypatch):
    """miue.demo with its quick subsets cut to 5 images per class (skips without Fashion-MNIST)."""
    from miue import demo
    from miue.data import load_dataset

    try:
        load_dataset("fashion-mnist", "test")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not available (apt-get install dataset-fashion-mnist): {exc}")
    monkeypatch.setitem(demo.QUICK, "train_per_class", 5)
    monkeypatch.setitem(demo.QUICK, "test_per_class", 5)
    return demo


@pytest.mark.slow
def test_demo_methods_runs_the_chosen_objectives(monkeypatch, tmp_path, capsys, tiny_demo):
    """A tiny demo (5 images per class, one round, one victim epoch) with two training-free
    objectives and EM, crafted with the `cpu` preset: the report, table, poisons and figure
    follow --methods, and the preset reaches the crafting (its ResNet-8 surrogate)."""
    demo = tiny_demo
    monkeypatch.setitem(demo.QUICK, "rounds", 1)
    out = tmp_path / "demo"
    report = demo.run_demo(out_dir=str(out), quick=True, progress=False, methods=("ops", "em", "lsp", "ops"),
                           victim_epochs=1, preset="cpu")
    em = "EM (published)"
    assert report["preset"] == "cpu" and report["craft"][em]["config"]["arch"] == "resnet-small"
    assert report["craft"][em]["config"]["recipe"] == "published"
    assert build_parser().parse_args(["demo", "--preset", "cpu"]).preset == "cpu"
    assert list(report["victims"]) == ["clean", "OPS", em, "LSP"]  # order kept, duplicate dropped
    assert list(report["craft"]) == ["OPS", em, "LSP"] and set(report["lens"]) == {"OPS", em, "LSP"}
    assert set(report["checks"]) == {"clean_at_least_0.88_cnn-sgd", "clean_at_least_0.88_cnn-adam"}  # no MI-UE checks
    # both victim recipes judge every poison, and cnn-sgd once more on the JPEG-10 release
    assert list(report["test_acc"][em]) == ["cnn-sgd", "cnn-adam", "cnn-sgd+jpeg10"]
    assert report["victims"][em]["cnn-sgd+jpeg10"]["config"]["defense"] == "jpeg"
    assert report["craft"][em]["config"]["subset"] == {"train_per_class": 5, "seed": 0, "test_per_class": 5}
    assert report["machine"]["cores"] >= 1 and "native_bf16" in report["machine"]
    for f in ("report.json", "figure.png", "ops.npz", "em.npz", "lsp.npz"):
        assert (out / f).is_file(), f
    assert not (out / "miue.npz").exists()
    table = capsys.readouterr().out
    assert "OPS" in table and "LSP" in table and "MI-UE" not in table and "targets:" not in table
    assert "jobs, " in table and "elapsed" in table  # one progress line per stage, also off a terminal



def test_demo_victims_are_the_effectiveness_studys():
    """The demo's two victim recipes are the study's cnn-sgd and cnn-adam cells, so the study's
    crafting-seed spread (docs/effectiveness.md) is the spread of the demo's own numbers."""

    from miue import demo
    from miue.evaluation.victims import VICTIM_RECIPES

    assert demo.VICTIMS == {v: VICTIM_RECIPES[v] for v in ("cnn-sgd", "cnn-adam")}
    assert demo.LENS_VICTIM in demo.VICTIMS and demo.TRAIN_PER_CLASS == 1000


@pytest.mark.slow
def test_demo_runs_its_jobs_in_worker_processes(tmp_path, tiny_demo):
    """workers=2: crafts and victims in two spawned processes; the same report layout as one
    process, every victim of every poison, the lens where it belongs."""
    demo = tiny_demo
    kw = dict(quick=True, progress=False, methods=("random", "ops"), victim_epochs=1, preset="cnn")
    two = demo.run_demo(out_dir=str(tmp_path / "two"), workers=2, **kw)
    one = demo.run_demo(out_dir=str(tmp_path / "one"), workers=1, **kw)
    assert two["environment"]["workers"] == 2
    for key in ("victims", "test_acc", "lens", "craft"):
        assert list(two[key]) == list(one[key]) == (["random", "OPS"] if key in ("lens", "craft")
                                                    else ["clean", "random", "OPS"])
    assert all(list(v) == ["cnn-sgd", "cnn-adam", "cnn-sgd+jpeg10"] for v in two["test_acc"].values())
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "two" / "ops.npz")["images"]),
                       torch.from_numpy(np.load(tmp_path / "one" / "ops.npz")["images"]))  # (training-free: same poison)
    with pytest.raises(ValueError, match="workers"):
        demo.run_demo(out_dir=str(tmp_path / "bad"), workers=0, **kw)
