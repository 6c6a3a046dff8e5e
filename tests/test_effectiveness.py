"""The effectiveness study's bookkeeping (benchmarks/effectiveness.py): cell caching, resume
checks, the summary over seeds, the targets and the report. The study itself runs in CI as
``effectiveness.py --quick`` (.ci/run)."""

import importlib.util
import json
import os
import re

import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "effectiveness.py")
spec = importlib.util.spec_from_file_location("effectiveness", _PATH)
eff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eff)


def _cell(poison, victim, seed, acc, method=None, budget=None, defense=None, mi=None):
    c = {"poison": poison, "method": method or poison.split("@")[0], "budget": budget, "victim": victim, "seed": seed,
         "defense": defense, "epochs": 3, "test_acc": acc, "test_acc_history": [acc]}
    if mi is not None:
        c["mi_nats"] = mi
    return eff.cell_id(poison, victim, seed, defense), c


def _data():
    cells = {}
    for v in eff.VICTIMS:
        for s in eff.SEEDS.get(v, (0,)):
            for pid, acc in (("clean", 0.9), ("miue@200", 0.3 + 0.01 * s), ("em@200", 0.5), ("ref-cw", 0.6)):
                cid, c = _cell(pid, v, s, acc, budget="200" if "@" in pid else None, mi=None if pid == "clean" else acc)
                cells[cid] = c
    cid, c = _cell("miue@200", "cnn-sgd", 0, 0.7, budget="200", defense="jpeg")
    cells[cid] = c
    poisons = {"miue@200": {"budget": "200"}, "em@200": {"budget": "200"}, "ref-cw": {"budget": None}}
    return {"setup": {"train_images": 100, "test_images": 50, "budgets": {"200": {}}}, "poisons": poisons, "cells": cells}


def test_ids():
    assert eff.poison_id("miue", "200") == "miue@200"
    assert eff.poison_id("miue", "200", "tau=0.5") == "miue@200+tau=0.5"
    assert eff.poison_id("random", "200") == "random" and eff.poison_id("ref-cw", "25") == "ref-cw"
    assert eff.cell_id("em@25", "mlp-adam", 0, None) == "em@25|mlp-adam|s0|none"


def test_summary_means_over_seeds_and_skips_defenses():
    s = eff.summarize(_data())
    mean, std, n = s["miue@200"]["cnn-sgd"]
    assert n == 3 and mean == pytest.approx(0.31) and std == pytest.approx(0.01, rel=1e-6)  # sample std (ddof=1) of 0.30, 0.31, 0.32
    assert s["miue@200"]["mlp-adam"][2] == 1  # one seed, and the jpeg cell is not mixed in


def test_targets():
    data = _data()
    t = eff.targets(data, eff.summarize(data), "200")
    m, e, good = t["miue_mean_le_em_mean"]
    assert good and m < e
    assert t["miue_cnn_sgd_le_20pct"][1] is False  # 31% > 20%
    assert all(g for *_, g in t["miue_le_half_clean_every_victim"])  # 30% <= 45%
    assert all(g for *_, g in t["clean_ge_88pct"])
    assert "miue_le_em_under_3_defenses" not in t  # only MI-UE was defended: no pair to compare


def test_targets_for_a_variant_and_under_defenses(tmp_path):
    """The deeper-surrogate ablation gets its own target lines (its miue and em rows), and the
    defense target counts the defenses where MI-UE ≤ EM: met at 3, 'not yet' while fewer are
    measured, MISSED once all are measured and fewer than 3 hold."""
    data = _data()
    v = "surrogate=resnet-small"
    for victim in eff.VICTIMS:
        for pid, acc in ((f"miue@200+{v}", 0.2), (f"em@200+{v}", 0.4)):
            cid, c = _cell(pid, victim, 0, acc, method=pid.split("@")[0], budget="200")
            data["cells"][cid] = c
    for i, d in enumerate(("jpeg", "cutout", "mixup")):
        for pid, acc in ((f"miue@200+{v}", 0.3), (f"em@200+{v}", 0.35 if i < 2 else 0.25)):
            cid, c = _cell(pid, "cnn-sgd", 0, acc, method=pid.split("@")[0], budget="200", defense=d)
            data["cells"][cid] = c
    t = eff.targets(data, eff.summarize(data), "200", v)
    assert t["miue_mean_le_em_mean"][2] and t["miue_cnn_sgd_le_20pct"][1]  # 20% on cnn-sgd meets it
    pairs, wins, good = t["miue_le_em_under_3_defenses"]
    assert [d for d, *_ in pairs] == ["jpeg", "cutout", "mixup"] and wins == 2 and not good
    with open(tmp_path / "results.json", "w") as fh:
        json.dump(data, fh)
    eff.report(str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert f"Targets at budget 200, poisons crafted with {v}:" in md
    assert "MI-UE ≤ EM under at least 3 defenses (cnn-sgd, seed 0): 2 of 3 measured" in md and "not yet" in md
    for d in ("ueraser", "blur", "at"):  # all six measured, MI-UE wins the last three: met
        for pid, acc in ((f"miue@200+{v}", 0.3), (f"em@200+{v}", 0.5)):
            cid, c = _cell(pid, "cnn-sgd", 0, acc, method=pid.split("@")[0], budget="200", defense=d)
            data["cells"][cid] = c
    assert eff.targets(data, eff.summarize(data), "200", v)["miue_le_em_under_3_defenses"][1:] == (5, True)


def test_report_writes_tables_and_plots(tmp_path):
    with open(tmp_path / "results.json", "w") as fh:
        json.dump(_data(), fh)
    eff.report(str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert "| miue@200 | 200 |" in md and "Spearman" in md and "jpeg" in md and "MISSED" in md
    assert "| none | 30.0 |" in md and "| jpeg | 70.0 |" in md  # the undefended seed-0 cell beside the defended one
    assert (tmp_path / "budget_curve.png").stat().st_size > 1000
    assert (tmp_path / "mi_scatter.png").stat().st_size > 1000


def test_results_refuse_overwrite_and_other_setup(tmp_path):
    path = str(tmp_path / "results.json")
    setup = {"dataset": "fashion-mnist", "train_per_class": 10, "test_per_class": None, "eps": 8 / 255, "quick": False}
    r = eff.Results(path, setup, resume=False)
    r.data["cells"]["x"] = {"test_acc": 0.5}
    r.save()
    with pytest.raises(SystemExit, match="--resume"):
        eff.Results(path, setup, resume=False)
    assert eff.Results(path, setup, resume=True).data["cells"]["x"]["test_acc"] == 0.5
    with pytest.raises(SystemExit, match="another setup"):
        eff.Results(path, {**setup, "train_per_class": 11}, resume=True)
    # results written before --surrogate-steps existed were one epoch per round (0)
    assert eff.Results(path, {**setup, "surrogate_steps": 0}, resume=True).data["cells"]["x"]
    with pytest.raises(SystemExit, match="another setup"):
        eff.Results(path, {**setup, "surrogate_steps": 235}, resume=True)


def test_results_two_runs_sharing_one_file_keep_each_others_cells(tmp_path):
    path = str(tmp_path / "results.json")
    setup = {"dataset": "fashion-mnist", "train_per_class": 10, "test_per_class": None, "eps": 8 / 255, "quick": False}
    eff.Results(path, setup, resume=False).save()
    a, b = eff.Results(path, setup, resume=True), eff.Results(path, setup, resume=True)
    a.data["cells"]["a"] = {"test_acc": 0.1}
    a.data["poisons"]["pa"] = {"seconds": 1}
    a.save()
    b.data["cells"]["b"] = {"test_acc": 0.2}
    b.save()  # b loaded before a saved: a's cell must survive b's write
    final = eff.Results(path, setup, resume=True).data
    assert final["cells"] == {"a": {"test_acc": 0.1}, "b": {"test_acc": 0.2}}
    assert final["poisons"] == {"pa": {"seconds": 1}}
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_budgets_stage_order_follows_methods_and_victims():
    """--methods and --victims set which cells the budgets stage measures and in which order:
    the clean references, seed 0 of every (method, victim), then the extra seeds."""
    import argparse

    study = object.__new__(eff.Study)
    study.quick = False
    study.budgets = {"25": eff.BUDGETS["25"]}
    study.victims = ["mlp-adam", "cnn-sgd"]
    study.seed_filter = None
    study.args = argparse.Namespace(methods=["rem", "ops", "em"])
    calls = []
    study.run_cell = lambda pid, method, budget, victim, seed, **kw: calls.append((pid, victim, seed))
    study.stage_budgets()
    assert calls == [("clean", "mlp-adam", 0), ("clean", "cnn-sgd", 0),
                     ("rem@25", "mlp-adam", 0), ("rem@25", "cnn-sgd", 0), ("ops", "mlp-adam", 0), ("ops", "cnn-sgd", 0),
                     ("em@25", "mlp-adam", 0), ("em@25", "cnn-sgd", 0),
                     ("rem@25", "cnn-sgd", 1), ("rem@25", "cnn-sgd", 2), ("ops", "cnn-sgd", 1), ("ops", "cnn-sgd", 2),
                     ("em@25", "cnn-sgd", 1), ("em@25", "cnn-sgd", 2), ("clean", "cnn-sgd", 1), ("clean", "cnn-sgd", 2)]
    study.seed_filter = {0}  # --seeds 0: one pass, no extra seeds
    calls.clear()
    study.stage_budgets()
    assert [c for c in calls if c[2] != 0] == [] and len(calls) == 8
    study.seed_filter = {1, 2}  # --seeds 1 2: only the extra seeds of the seeded victim
    calls.clear()
    study.stage_budgets()
    assert calls == [("rem@25", "cnn-sgd", 1), ("ops", "cnn-sgd", 1), ("em@25", "cnn-sgd", 1),
                     ("rem@25", "cnn-sgd", 2), ("ops", "cnn-sgd", 2), ("em@25", "cnn-sgd", 2),
                     ("clean", "cnn-sgd", 1), ("clean", "cnn-sgd", 2)]
    with pytest.raises(SystemExit):
        eff.main(["--victims", "vgg", "--out", "/nonexistent"])


def test_budgets_stage_with_a_variant_crafts_with_its_setting_and_skips_training_free_rows(tmp_path):
    """--budget-variant surrogate=resnet-small: the budgets stage's surrogate poisons get the
    variant's id and overrides (so 200 steps is the same poison as the ablation's), the
    training-free rows are left out, the clean reference stays; the report then gives that
    variant's targets at the new budget."""
    import argparse

    study = object.__new__(eff.Study)
    study.quick = False
    study.budgets = {"1000": eff.BUDGETS["1000"]}
    study.victims = ["cnn-sgd"]
    study.seed_filter = {0}
    study.args = argparse.Namespace(methods=["miue", "ops", "em"], budget_variant="surrogate=resnet-small")
    calls = []
    study.run_cell = lambda pid, method, budget, victim, seed, **kw: calls.append((pid, budget, kw.get("overrides")))
    study.stage_budgets()
    res = {"arch": "resnet-small"}
    assert calls == [("clean", None, None), ("miue@1000+surrogate=resnet-small", "1000", res),
                     ("em@1000+surrogate=resnet-small", "1000", res)]
    with pytest.raises(SystemExit):  # only the settings measured for both methods
        eff.main(["--budget-variant", "tau=0.5", "--out", "/nonexistent"])
    data = _data()
    cid, c = _cell("miue@1000+surrogate=resnet-small", "cnn-sgd", 0, 0.15, method="miue", budget="1000")
    data["cells"][cid] = c
    data["poisons"]["miue@1000+surrogate=resnet-small"] = {"budget": "1000"}
    with open(tmp_path / "results.json", "w") as fh:
        json.dump(data, fh)
    eff.report(str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert "Targets at budget 1000, poisons crafted with surrogate=resnet-small:" in md
    assert "- MI-UE ≤ 20% on cnn-sgd: 15.0%: met" in md
    assert "Targets at budget 200, poisons crafted with" not in md  # no variant cells at 200 in this file


def test_ablations_stage_follows_ablations_option_and_measures_em_for_surrogate_depth():
    import argparse

    study = object.__new__(eff.Study)
    study.quick = False
    study.victims = ["cnn-sgd"]
    study.seed_filter = None
    study.args = argparse.Namespace(ablations=["surrogate=resnet-small", "tau=0.05"])
    calls = []
    study.run_cell = lambda pid, method, budget, victim, seed, **kw: calls.append((pid, victim, seed))
    study.stage_ablations()
    assert calls == [("miue@200+surrogate=resnet-small", "cnn-sgd", 0), ("em@200+surrogate=resnet-small", "cnn-sgd", 0),
                     ("miue@200+tau=0.05", "cnn-sgd", 0)]
    calls.clear()
    study.args.methods = ["em"]  # --methods filters the ablated methods too
    study.stage_ablations()
    assert calls == [("em@200+surrogate=resnet-small", "cnn-sgd", 0)]
    # --victims given: the ablation runs on exactly those (resnet-sgd is not an ablation victim by
    # default); --seeds 1 2: the small-CNN victim's extra seeds, nothing on the single-seed victims
    study.victims, study.victims_given, study.seed_filter = ["resnet-sgd", "cnn-sgd"], True, {1, 2}
    calls.clear()
    study.stage_ablations()
    assert calls == [("em@200+surrogate=resnet-small", "cnn-sgd", 1), ("em@200+surrogate=resnet-small", "cnn-sgd", 2)]
    study.seed_filter = None
    calls.clear()
    study.stage_ablations()
    assert calls == [("em@200+surrogate=resnet-small", "resnet-sgd", 0), ("em@200+surrogate=resnet-small", "cnn-sgd", 0)]


def test_defenses_stage_follows_defenses_option_and_methods_filter():
    import argparse

    study = object.__new__(eff.Study)
    study.quick = False
    study.args = argparse.Namespace(defenses=["blur", "at"])
    calls = []
    study.run_cell = lambda pid, method, budget, victim, seed, **kw: calls.append((pid, victim, seed, kw["defense"]))
    study.stage_defenses()
    assert calls == [("miue@200", "cnn-sgd", 0, "blur"), ("em@200", "cnn-sgd", 0, "blur"), ("clean", "cnn-sgd", 0, "blur"),
                     ("miue@200", "cnn-sgd", 0, "at"), ("em@200", "cnn-sgd", 0, "at"), ("clean", "cnn-sgd", 0, "at")]
    calls.clear()
    study.args.methods = ["miue"]  # clean stays: it is the defense's own baseline
    study.stage_defenses()
    assert calls == [("miue@200", "cnn-sgd", 0, "blur"), ("clean", "cnn-sgd", 0, "blur"),
                     ("miue@200", "cnn-sgd", 0, "at"), ("clean", "cnn-sgd", 0, "at")]
    # --defense-variant: the poisons crafted with an ablation's setting, with its overrides; clean unchanged
    study.args.defense_variant = "surrogate=resnet-small"
    study.args.defenses = ["jpeg"]
    study.args.methods = ["miue", "em"]
    seen = []
    study.run_cell = lambda pid, method, budget, victim, seed, **kw: seen.append((pid, kw.get("overrides")))
    study.stage_defenses()
    assert seen == [("miue@200+surrogate=resnet-small", {"arch": "resnet-small"}),
                    ("em@200+surrogate=resnet-small", {"arch": "resnet-small"}), ("clean", None)]
    with pytest.raises(SystemExit):
        eff.main(["--defenses", "grayscale", "--out", "/nonexistent"])


def test_demo_and_cpu_presets_are_the_study_cells_they_are_named_after():
    """demo = the study's 50-step cell and cpu = its 200-step cell of the ResNet-8 surrogate in
    bf16: the same values as the runner's config for that cell, except the surrogate schedule
    spelled in steps (79 = one epoch of the study's 20,000 images at batch 256) instead of epochs."""
    import dataclasses
    import math

    from miue.presets import make_config

    for preset, budget in (("demo", "50"), ("cpu", "200")):
        study = make_config("cnn", train_steps=0, train_epochs=1, **eff.BUDGETS[budget],
                            **eff.ABLATIONS[eff.FRONTIER_VARIANT])
        shipped = make_config(preset)
        diff = {k for k, v in dataclasses.asdict(shipped).items() if dataclasses.asdict(study)[k] != v}
        assert diff == {"preset", "train_steps"}, (preset, diff)
        assert shipped.train_steps == math.ceil(10 * 2000 / study.train_batch_size) == 79
        assert shipped.rounds * shipped.pgd_steps == int(budget) and shipped.amp and shipped.arch == "resnet-small"


def test_crafting_cost_counts_every_round_of_a_resumed_craft(tmp_path):
    data = _data()
    # a craft resumed at round 3: the finishing process saw 12 s, its five rounds took 5 × 10 s
    data["poisons"]["miue@200"].update(craft_seconds=12.0, pgd_steps_per_image=200,
                                       history=[{"round": r, "seconds": 10.0, "objective_loss": 0.1} for r in range(5)])
    data["poisons"]["ref-cw"].update(craft_seconds=0.5, history=[])
    assert eff.craft_seconds(data["poisons"]["miue@200"]) == 50.0
    assert eff.craft_seconds(data["poisons"]["ref-cw"]) == 0.5  # no rounds: its wall time
    with open(tmp_path / "results.json", "w") as fh:
        json.dump(data, fh)
    eff.report(str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert "| miue@200 | 5 | 200 | 50 | 2.500 |" in md  # 1000 * 50 s / (100 images * 200 steps)
    assert "| ref-cw |" not in md.split("Crafting cost")[1].split("Plateau")[0]  # nothing crafted by PGD


def test_report_only_without_results_names_the_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        eff.main(["--report-only", "--out", str(tmp_path / "nowhere")])
    assert "no results.json" in capsys.readouterr().err


def test_targets_cover_every_measured_budget_and_runs_merge_their_budgets(tmp_path):
    data = _data()
    data["setup"]["budgets"] = {"25": {}}  # the last run measured only 25 steps; the 200-step poisons came before
    with open(tmp_path / "results.json", "w") as fh:
        json.dump(data, fh)
    assert eff.measured_budgets(data) == ["25", "200"]
    eff.report(str(tmp_path))
    assert "Targets at budget 200:" in (tmp_path / "results.md").read_text()
    # a run with --budgets 1000 resuming the file keeps the budgets the file already had
    setup = {k: v for k, v in data["setup"].items()}
    setup["budgets"] = {"1000": {"rounds": 100}}
    res = eff.Results(str(tmp_path / "results.json"), setup, resume=True)
    assert set(res.data["setup"]["budgets"]) == {"25", "1000"}
    res.save()
    with open(tmp_path / "results.json") as fh:
        assert set(json.load(fh)["setup"]["budgets"]) == {"25", "1000"}


# ----------------------------------------------------------------------------- issue 25: crafting seeds, frontier


def test_craft_seed_ids_round_trip():
    v = eff.FRONTIER_VARIANT
    assert eff.poison_id("miue", "50", v, 0) == f"miue@50+{v}"  # seed 0 keeps the old ids (cached cells stay valid)
    assert eff.poison_id("em", "50", v, 2) == f"em@50+{v}+cs2"
    assert eff.poison_id("random", "50", None, 2) == "random"
    for pid in ("miue@50", f"miue@50+{v}", f"em@200+{v}+cs1", "miue@25+tau=0.5+cs12"):
        base, cs = eff.split_craft_seed(pid)
        method, budget = base.split("@")[0], base.split("@")[1].split("+")[0]
        variant = base.split("+", 1)[1] if "+" in base else None
        assert eff.poison_id(method, budget, variant, cs) == pid


def _frontier_data(miue_accs, em_accs, victims=("cnn-sgd", "cnn-adam"), variant=None):
    """Poisons of both methods at budget 50 on the bf16 ResNet-8 (or ``variant``), one per
    crafting seed, with the given accuracies on each victim (seed 0)."""
    v = variant or eff.FRONTIER_VARIANT
    data = {"setup": {"train_images": 100, "test_images": 50, "budgets": {"50": {}}}, "poisons": {}, "cells": {}}
    for method, accs in (("miue", miue_accs), ("em", em_accs)):
        for cs, acc in enumerate(accs):
            pid = eff.poison_id(method, "50", v, cs)
            data["poisons"][pid] = {"method": method, "budget": "50", "pgd_steps_per_image": 50, "craft_seed": cs,
                                    "history": [{"round": 1, "seconds": 100.0 + cs, "objective_loss": 1.0}]}
            for victim in victims:
                cid, c = _cell(pid, victim, 0, acc, method=method, budget="50")
                data["cells"][cid] = c
    return data


def test_frontier_cost_is_the_median_over_crafting_seeds():
    """One craft that ran beside other jobs (three times as long) must not move the line's cost."""
    data = _frontier_data([0.20, 0.24, 0.22], [0.40, 0.30, 0.35])
    data["poisons"][eff.poison_id("miue", "50", eff.FRONTIER_VARIANT, 2)]["history"][0]["seconds"] = 300.0
    rows = {r["method"]: r for r in eff.frontier_rows(data)}
    assert rows["miue"]["craft_seconds"] == 101.0  # the mean would be 167
    assert rows["em"]["craft_seconds"] == 101.0


def test_frontier_rows_average_over_crafting_seeds():
    data = _frontier_data([0.20, 0.24, 0.22], [0.40, 0.30, 0.35])
    rows = {r["method"]: r for r in eff.frontier_rows(data)}
    m = rows["miue"]
    assert m["craft_seeds"] == [0, 1, 2] and m["surrogate"] == "ResNet-8, bf16" and m["craft_seconds"] == 101.0
    mean, std, n = m["mean_demo"]
    assert n == 3 and mean == pytest.approx(0.22) and std == pytest.approx(0.02)
    assert "mean_all" not in m  # resnet-sgd and mlp-adam not measured
    assert m["victims"]["cnn-sgd"][:2] == pytest.approx((0.22, 0.02))


def test_frontier_reports_a_victim_measured_on_some_crafting_seeds_only():
    """The expensive victims were measured on some crafting seeds only: the row shows them over
    those seeds, says which, and the 4-victim mean and its verdict use those seeds alone."""
    data = _frontier_data([0.20, 0.24, 0.22], [0.40, 0.30, 0.35])
    for method, accs in (("miue", {1: 0.30, 2: 0.34}), ("em", {1: 0.50, 2: 0.54})):
        for cs, acc in accs.items():
            pid = eff.poison_id(method, "50", eff.FRONTIER_VARIANT, cs)
            for victim in ("resnet-sgd", "mlp-adam"):
                cid, c = _cell(pid, victim, 0, acc, method=method, budget="50")
                data["cells"][cid] = c
    rows = {r["method"]: r for r in eff.frontier_rows(data)}
    m = rows["miue"]
    assert m["victims"]["resnet-sgd"][2] == 2 and m["victim_seeds"]["resnet-sgd"] == [1, 2]
    assert m["victims"]["cnn-sgd"][2] == 3 and m["mean_demo_seeds"] == [0, 1, 2]
    mean, std, n = m["mean_all"]
    assert n == 2 and m["mean_all_seeds"] == [1, 2]
    assert mean == pytest.approx(np.mean([(0.24 + 0.24 + 0.30 + 0.30) / 4, (0.22 + 0.22 + 0.34 + 0.34) / 4]))
    lines = eff._frontier_lines(data)
    row = next(ln for ln in lines if ln.startswith("| miue |"))
    assert "(n=2: seeds 1,2)" in row and "22.0 ± 2.0 (n=3) |" in row
    said = [ln for ln in lines if ln.startswith("- ResNet-8, bf16, 50 steps, mean over 4 victims")]
    assert len(said) == 1 and "crafting seeds 1,2 / 1,2" in said[0], said


def test_welch_p_matches_the_textbook_value():
    """Welch's t-test (unequal variances, Welch-Satterthwaite degrees of freedom), two-sided;
    Student's pooled test would give another p (0.014 here)."""
    from scipy import stats

    a, b = [0.20, 0.24, 0.22], [0.40, 0.30, 0.35]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t_stat = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    assert t_stat == pytest.approx(-4.181, abs=1e-3) and dof == pytest.approx(2.624, abs=1e-3)
    p = eff.welch_p(a, b)
    assert p == pytest.approx(2 * stats.t.sf(abs(t_stat), dof), rel=1e-9)
    assert p == pytest.approx(0.0323, abs=1e-4)
    assert eff.welch_p([0.2], b) is None and eff.welch_p([0.2, 0.2], [0.3, 0.3]) is None
    line = next(ln for ln in eff._frontier_lines(_frontier_data(a, b)) if "mean over cnn-sgd + cnn-adam" in ln)
    assert "Welch p = 0.03)" in line, line


def test_frontier_plot_draws_only_the_panels_whose_victims_were_measured(tmp_path):
    """The demo victims alone: one panel (the 4-victim panel would be empty); one victim only:
    no frontier plot, and no error."""
    import matplotlib.image as mpimg

    written = eff.plots(_frontier_data([0.20, 0.24, 0.22], [0.40, 0.30, 0.35]), str(tmp_path))
    assert str(tmp_path / "frontier.png") in written
    height, width = mpimg.imread(tmp_path / "frontier.png").shape[:2]
    assert width < 1.5 * height  # one panel (two panels are about 2.6 times as wide as high)
    one = tmp_path / "one"
    one.mkdir()
    written = eff.plots(_frontier_data([0.20, 0.24], [0.40, 0.30], victims=("cnn-sgd",)), str(one))
    assert not any(w.endswith("frontier.png") for w in written)


@pytest.mark.parametrize("label,variant", [(label, v) for label, v in eff.SURROGATES if v])
def test_frontier_plot_draws_every_surrogate_line(tmp_path, label, variant):
    """Every line of SURROGATES (the half-width ResNet-8 was added later) gets a row, a marker and a plot."""
    data = _frontier_data([0.20, 0.24], [0.40, 0.30], variant=variant)
    assert {r["surrogate"] for r in eff.frontier_rows(data)} == {label}
    assert str(tmp_path / "frontier.png") in eff.plots(data, str(tmp_path))


@pytest.mark.parametrize("miue,em,verdict", [
    ([0.20, 0.24, 0.22], [0.40, 0.30, 0.35], "MI-UE below EM beyond the crafting-seed spread"),  # 13 points vs std 5
    ([0.20, 0.30, 0.25], [0.28, 0.20, 0.30], "a tie within the crafting-seed spread"),  # 1 point vs std 5
    ([0.40, 0.42, 0.41], [0.20, 0.22, 0.21], "EM below MI-UE beyond the crafting-seed spread"),
    ([0.20], [0.40], "one crafting seed: no spread measured"),
])
def test_frontier_verdict_needs_the_difference_to_exceed_the_crafting_seed_spread(miue, em, verdict):
    lines = eff._frontier_lines(_frontier_data(miue, em))
    said = [ln for ln in lines if ln.startswith("- ResNet-8, bf16, 50 steps, mean over cnn-sgd + cnn-adam")]
    assert len(said) == 1 and said[0].endswith(verdict), said


def test_frontier_stage_crafts_each_seed_with_the_bf16_resnet8(monkeypatch):
    """--stages frontier: clean first, then for each crafting seed every budget × method ×
    victim, with the variant's overrides and the seed in the poison id."""
    study = eff.Study.__new__(eff.Study)
    study.args = type("A", (), {"methods": ["miue", "em", "random"], "craft_seeds": [0, 2], "budget_variant": None})()
    study.budgets = {"50": eff.BUDGETS["50"], "1000": eff.BUDGETS["1000"]}
    study.victims = ["cnn-sgd"]
    study.seed_filter = None
    study.quick = False
    study.craft_seed = 0
    seen = []
    study.run_cell = lambda pid, method, budget, victim, seed, **kw: seen.append((pid, budget, study.craft_seed,
                                                                                 kw.get("overrides")))
    study.stage_frontier()
    v = eff.FRONTIER_VARIANT
    assert [s[:3] for s in seen] == [("clean", None, 0), (f"miue@50+{v}", "50", 0), (f"em@50+{v}", "50", 0),
                                     (f"miue@50+{v}+cs2", "50", 2), (f"em@50+{v}+cs2", "50", 2)]
    assert all(s[3] == {"arch": "resnet-small", "amp": True} for s in seen[1:])
    assert study.craft_seed == 0


def test_precision_lines_set_fp32_beside_bf16_and_its_seed_spread():
    data = _frontier_data([0.20, 0.24, 0.22], [0.40, 0.30, 0.35])
    pid = "miue@50+surrogate=resnet-small"
    data["poisons"][pid] = {"method": "miue", "budget": "50", "pgd_steps_per_image": 50, "history": []}
    cid, c = _cell(pid, "cnn-sgd", 0, 0.30, method="miue", budget="50")
    data["cells"][cid] = c
    lines = eff._precision_lines(eff.frontier_rows(data))
    rows = [ln for ln in lines if ln.startswith("| ResNet-8 | miue | 50 |")]
    # no fp32 EM, no fp32 cnn-adam: no row
    assert rows == ["| ResNet-8 | miue | 50 | cnn-sgd | 30.0 | 22.0 | -8.0 | 2.0 (n=3) | 0 / 0,1,2 |"]
    assert len([ln for ln in lines if ln.startswith("| ")]) == 2  # the header and that row


def test_precision_lines_pair_the_half_width_resnet_too():
    """Every bf16 surrogate line with an fp32 twin gets rows, not only the ResNet-8."""
    rows = [{"method": "em", "budget": "50", "surrogate": "ResNet-8 half width, fp32",
             "victims": {"cnn-sgd": (0.30, 0.05, 3)}, "craft_seeds": [0, 1, 2]},
            {"method": "em", "budget": "50", "surrogate": "ResNet-8 half width, bf16",
             "victims": {"cnn-sgd": (0.25, 0.04, 3)}, "craft_seeds": [0, 1, 2]},
            {"method": "em", "budget": "200", "surrogate": "ResNet-8 half width, bf16",  # no fp32 twin at 200
             "victims": {"cnn-sgd": (0.20, 0.04, 3)}, "craft_seeds": [0, 1, 2]}]
    lines = eff._precision_lines(rows)
    assert [ln for ln in lines if ln.startswith("| ResNet-8 half width |")] == [
        "| ResNet-8 half width | em | 50 | cnn-sgd | 30.0 | 25.0 | -5.0 | 4.0 (n=3) | 0,1,2 / 0,1,2 |"]


# ----------------------------------------------------------------------------- the compare stage (issue 38)


def test_compare_stage_order_and_ids():
    """Clean victims and clean under each defense first, then crafting seed by crafting seed every
    row, its victims, then its victims under each defense, victim seed by victim seed. The headline
    defenses (JPEG-10, JPEG-75) judge every victim, the others only the defended two."""
    study = eff.Study.__new__(eff.Study)
    study.args = type("A", (), {"compare_rows": ["miue-demo", "em-published"], "craft_seeds": [0, 1],
                                "defenses": ["jpeg", "coin"], "victim_seeds": [0, 1]})()
    study.victims, study.victims_given, study.quick, study.craft_seed = ["cnn-sgd", "mlp-adam"], True, False, 0
    seen = []
    study.run_cell = lambda pid, method, budget, victim, seed, defense=None, **kw: seen.append(
        (pid, method, victim, defense, study.craft_seed, seed))
    study.stage_compare()
    per_seed = 2 + 2 + 1  # the victims; both under jpeg; cnn-sgd under coin (mlp-adam is not a defended victim)
    assert seen[:per_seed] == [("clean", "clean", "cnn-sgd", None, 0, 0), ("clean", "clean", "mlp-adam", None, 0, 0),
                               ("clean", "clean", "cnn-sgd", "jpeg", 0, 0), ("clean", "clean", "mlp-adam", "jpeg", 0, 0),
                               ("clean", "clean", "cnn-sgd", "coin", 0, 0)]
    assert seen[per_seed][5] == 1  # then victim seed 1 of the clean cells
    first = 2 * per_seed
    assert seen[first:first + 3] == [("cmp-miue-demo", "miue-demo", "cnn-sgd", None, 0, 0),
                                     ("cmp-miue-demo", "miue-demo", "mlp-adam", None, 0, 0),
                                     ("cmp-miue-demo", "miue-demo", "cnn-sgd", "jpeg", 0, 0)]
    assert ("cmp-em-published+cs1", "em-published", "mlp-adam", "jpeg", 1, 1) in seen
    assert not any(v == "mlp-adam" and d == "coin" for _, _, v, d, _, _ in seen)
    assert len(seen) == 2 * per_seed + 2 * 2 * 2 * per_seed
    assert eff.compare_id("pil", 0) == "cmp-pil" and eff.split_craft_seed("cmp-pil+cs2"[4:]) == ("pil", 2)
    for row, (preset, objective, recipe, _opts) in eff.COMPARE.items():  # every row is a real craft_fast call
        from miue.presets import make_config

        assert make_config(preset, objective=objective, recipe=recipe).recipe == recipe, row


def test_compare_table_means_per_seed_and_welch_p():
    cells = {}

    def add(pid, victim, acc, defense=None):
        cid, c = _cell(pid, victim, 0, acc, method=pid, defense=defense)
        c["peak_test_acc"] = acc + 0.1
        cells[cid] = c

    for v, a in (("cnn-sgd", 0.86), ("cnn-adam", 0.87)):
        add("clean", v, a)
    miue = {0: (0.20, 0.30), 1: (0.22, 0.34), 2: (0.24, 0.32)}
    em = {0: (0.40, 0.50), 1: (0.42, 0.52), 2: (0.44, 0.60)}
    for row, accs in (("miue-demo", miue), ("em-published", em)):
        for cs, (a, b) in accs.items():
            pid = eff.compare_id(row, cs)
            add(pid, "cnn-sgd", a)
            add(pid, "cnn-adam", b)
            add(pid, "cnn-sgd", a + 0.05, "jpeg")
            add(pid, "cnn-adam", b + 0.05, "jpeg")
    # the declared comparison's cells (crafting seeds >= 3, victim seed 1) stay out of these tables
    add(eff.compare_id("miue-demo", eff.DECLARED_FIRST_CRAFT_SEED), "cnn-sgd", 0.9)
    cid, c = _cell(eff.compare_id("miue-demo", 0), "cnn-sgd", 1, 0.9, method="miue-demo")
    cells[cid] = c
    data = {"setup": {"train_images": 100}, "cells": cells, "poisons": {}}
    table = eff.compare_rows(data)
    assert table["miue-demo"]["mean"] == {0: pytest.approx(0.25), 1: pytest.approx(0.28), 2: pytest.approx(0.28)}
    assert eff.DECLARED_FIRST_CRAFT_SEED not in table["miue-demo"]["cnn-sgd"]
    assert table["em-published"]["mean+jpeg"][2] == pytest.approx(0.57)
    assert table["miue-demo"]["peak:cnn-sgd"][1] == pytest.approx(0.32)
    text = "\n".join(eff.compare_lines(data))
    assert "| miue-demo | 0,1,2 | – | 27.0 ± 1.7 |" in text
    p = eff.welch_p([0.25, 0.28, 0.28], [0.45, 0.47, 0.52])
    assert f"| em-published | − {eff._fmt_p(p)} |" in text  # MI-UE lower on the mean, with its p
    assert eff._fmt_p(0.0004) == "<0.001" and eff._fmt_p(0.004) == "0.004" and eff._fmt_p(0.25) == "0.25"
    assert eff._fmt_p(0.0484) == "0.048" and eff._fmt_p(0.0504) == "0.050" and eff._fmt_p(0.056) == "0.06"  # never 0.05 beside a verdict
    assert eff._fmt_pts(-0.0004) == "+0.0" and eff._fmt_pts(-0.0123) == "-1.2" and eff._fmt_pts(0.051) == "+5.1"  # no -0.0
    verdicts = eff.compare_verdicts(data)
    assert len(verdicts) == 2 and verdicts[0].startswith("- no defense, em-published: MI-UE 27.0 ± 1.7 (n = 3)")
    assert verdicts[0].endswith("MI-UE lower (better)") and verdicts[1].startswith("- under JPEG-10, em-published")
    assert eff.compare_verdicts(data, "miue-cpu") == [] and "MI-UE (cpu)" not in eff.all_verdicts(data)
    # the cpu preset's row, once measured, gets its own verdicts, named in every line
    for cs, (a, b) in miue.items():
        pid = eff.compare_id("miue-cpu", cs)
        add(pid, "cnn-sgd", a - 0.1)
        add(pid, "cnn-adam", b - 0.1)
    cpu = eff.compare_verdicts(data, "miue-cpu")
    assert cpu[0].startswith("- no defense, miue-demo: MI-UE (cpu) 17.0 ± 1.7 (n = 3) vs 27.0 ± 1.7 (n = 3)")
    assert cpu[0].endswith("MI-UE (cpu) lower (better)")
    assert "MI-UE (`cpu`) against each row:" in eff.all_verdicts(data)
    assert "MI-UE (cpu) against each row" in "\n".join(eff.compare_lines(data))


def test_holm_permutation_and_welch_interval_match_hand_values():
    assert eff.holm([0.01, 0.04, 0.03, None]) == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), None]
    assert eff.holm([0.5, 0.2]) == [pytest.approx(0.5), pytest.approx(0.4)]
    # 3 against 3, fully separated: 2 of the 20 splits are as extreme, so p = 0.1 (never below)
    assert eff.permutation_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert eff.permutation_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    assert eff.permutation_p([1], [2, 3]) is None
    from scipy import stats

    a, b = [0.20, 0.24, 0.22], [0.40, 0.30, 0.35]
    lo, hi = eff.welch_interval(a, b)
    r = stats.ttest_ind(b, a, equal_var=False)
    ci = r.confidence_interval(0.95)
    assert (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def _declared_data(miue, em, seeds=(0, 1), victims=None, first=eff.DECLARED_FIRST_CRAFT_SEED):
    cells = {}
    for row, values in (("miue-cpu", miue), ("em-published", em)):
        for cs, acc in enumerate(values, start=first):
            for v in victims or eff.COMPARE_VICTIMS:
                for s in seeds:
                    for d in (None, "jpeg"):
                        cid, c = _cell(eff.compare_id(row, cs), v, s, acc + 0.01 * s, method=row, defense=d)
                        cells[cid] = c
    return {"setup": {"train_images": 100}, "cells": cells, "poisons": {}}


def test_declared_comparison_averages_victim_seeds_corrects_and_waits_for_five_seeds():
    data = _declared_data([0.20, 0.22, 0.21, 0.23, 0.19], [0.40, 0.42, 0.45, 0.38, 0.41])
    vals = eff.declared_values(data)
    assert vals["miue-cpu"][None][eff.DECLARED_FIRST_CRAFT_SEED] == pytest.approx(0.205)  # both victim seeds averaged in
    res = eff.declared_comparison(data)
    t = next(t for t in res["tests"] if t["ref"] == "miue-cpu" and t["row"] == "em-published" and t["defense"] is None)
    assert t["complete"] and t["diff"] == pytest.approx(0.202) and t["holm_p"] >= t["welch_p"]
    assert t["verdict"] == "MI-UE (`cpu`) better" and t["perm_p"] == pytest.approx(2 / 252)
    # Holm runs over all 12 declared primary tests; the 10 unfinished ones count as p = 1
    prim = [u for u in res["tests"] if u["primary"] and u["complete"]]
    assert len(prim) == 2 and t["family_done"] == 2 and t["family_size"] == 12
    p1, p2 = sorted(u["welch_p"] for u in prim)
    assert sorted(u["holm_p"] for u in prim) == [pytest.approx(12 * p1), pytest.approx(max(12 * p1, 11 * p2))]
    assert all(u["holm_p"] is None for u in res["tests"] if not u["complete"])
    # p = 0.0X at 5 seeds is not enough against a 12-test family: "not separated so far"
    close = eff.declared_comparison(_declared_data([0.20, 0.25, 0.22, 0.27, 0.21], [0.26, 0.30, 0.25, 0.33, 0.28]))
    c = next(u for u in close["tests"] if u["ref"] == "miue-cpu" and u["row"] == "em-published" and u["defense"] is None)
    assert c["welch_p"] < 0.05 <= c["holm_p"]
    assert c["verdict"].startswith("not separated so far (2 of 12 tests")
    # Welch's p >= 0.05: Holm cannot lower it, so "not separated" is final with the family unfinished
    far = eff.declared_comparison(_declared_data([0.20, 0.25, 0.22, 0.27, 0.21], [0.22, 0.26, 0.21, 0.28, 0.24]))
    f = next(u for u in far["tests"] if u["ref"] == "miue-cpu" and u["row"] == "em-published" and u["defense"] is None)
    assert f["welch_p"] >= 0.05 and f["verdict"] == "not separated"
    text = "\n".join(eff.declared_lines(data))
    assert "+20.2 [" in text and "MI-UE (`cpu`) better" in text
    summary = eff.declared_summary(data)
    assert "| MI-UE (`cpu`) | 21.5 ± 1.6 (n=5) | 21.5 ± 1.6 (n=5) | – |" in summary
    line = next(x for x in summary.splitlines() if x.startswith("- MI-UE (`cpu`) vs EM (published):"))
    assert line.startswith("- MI-UE (`cpu`) vs EM (published): no defense +20.2 [") and "JPEG-10 +20.2 [" in line
    assert line.endswith(": MI-UE (`cpu`) better") and line.count("Holm p") == 2
    assert "- MI-UE (`demo`) vs PIL (published): not judged yet (n = 0 and 0 of 5 crafting seeds)" in summary
    # four crafting seeds: no verdict, whatever p says
    few = eff.declared_comparison(_declared_data([0.20, 0.22, 0.21, 0.23], [0.40, 0.42, 0.45, 0.38]))
    assert all("not judged yet" in t["verdict"] for t in few["tests"] if t["a"] and t["b"])
    # a crafting seed without its second victim seed does not count
    assert eff.declared_values(_declared_data([0.2] * 5, [0.4] * 5, seeds=(0,))) == {}
    # crafting seeds 0-2 (poisons lost with the 2026-12-05 machine) never count
    early = eff.declared_values(_declared_data([0.2] * 5, [0.4] * 5, first=0))
    assert sorted(early["miue-cpu"][None]) == [3, 4]


def test_declared_progress_counts_cells_per_row_and_crafting_seed():
    data = _declared_data([0.2] * 2, [0.4] * 3)  # no defense and JPEG-10 only: 16 of the 24 cells
    first = eff.DECLARED_FIRST_CRAFT_SEED
    for c in data["cells"].values():
        c["seconds"] = 60.0
    data["poisons"] = {eff.compare_id("pil", first): {"craft_seconds": 6.0},
                       **{eff.compare_id("miue-cpu", cs): {"craft_seconds": 1800.0} for cs in (first, first + 1)}}
    lines = eff.declared_progress(data)
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert "of 24;" in lines[0] and f"seed {first + 4}" in lines[2]
    # what is left: 3 crafts at the row's median (1,800 s) + 8 + 8 + 3 x 24 cells at 60 s = 2.97 h
    assert rows["miue-cpu"] == "| miue-cpu | 0 of 5 | 16 | 16 | – | – | – | 3.0 |"
    assert rows["em-published"] == "| em-published | 0 of 5 | 16 | 16 | 16 | – | – | ? |"  # no craft time known
    assert rows["pil"].endswith("| * | – | – | – | – | 2.0 |")  # crafted, nothing measured
    assert rows["em-matched-cpu"].endswith("| 4.5 |")  # costed like miue-cpu, the same schedule
    assert lines[-1].startswith("Left to reach 5 crafting seeds per row: about 9.5 core-hours")
    assert "rows marked ? not counted" in lines[-1]
    # with JPEG-75 too, a crafting seed is complete
    for cid, c in list(data["cells"].items()):
        if c["defense"] == "jpeg":
            data["cells"][cid.replace("|jpeg", "|jpeg75")] = {**c, "defense": "jpeg75"}
    rows = {line.split(" | ")[0].strip("| "): line for line in eff.declared_progress(data) if line.startswith("| ")}
    assert rows["em-published"].startswith("| em-published | 3 of 5 | 24 | 24 | 24 |")


def test_a_recrafted_poison_joins_its_cells_only_if_it_is_the_same(tmp_path):
    """A poison whose cache is gone is crafted again; it may stand in for the first craft only
    with the same sha256. Otherwise the run stops and names --drop-poison, which removes the
    record and cells here and on disk (where save() would otherwise bring them back)."""
    import numpy as np

    images = np.arange(24, dtype=np.uint8).reshape(2, 1, 3, 4)
    other = images.copy()
    other[0, 0, 0, 0] += 1
    pid = eff.compare_id("miue-cpu", 6)
    cid, c = _cell(pid, "cnn-sgd", 0, 0.3, method="miue-cpu")
    data = {"setup": {}, "poisons": {pid: {"images_sha256": eff._images_sha256(images)}}, "cells": {cid: c}}
    eff._check_same_poison(data, pid, images)  # the same poison: its cells stand
    with pytest.raises(SystemExit, match=re.escape(f"--drop-poison {pid}")):
        eff._check_same_poison(data, pid, other)
    del data["poisons"][pid]["images_sha256"]
    with pytest.raises(SystemExit, match="cannot be checked"):
        eff._check_same_poison(data, pid, images)
    eff._check_same_poison({"poisons": {}, "cells": {}}, pid, other)  # nothing measured: nothing to mix
    # --drop-poison: gone from memory and from disk, other cells kept
    keep_id, keep = _cell(eff.compare_id("em-published", 6), "cnn-sgd", 0, 0.4, method="em-published")
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"setup": {}, "poisons": {pid: {}}, "cells": {cid: c, keep_id: keep}}))
    res = eff.Results(str(path), {}, resume=True)
    assert res.drop_poison(pid) == 1
    res.save()
    on_disk = json.loads(path.read_text())
    assert list(on_disk["cells"]) == [keep_id] and pid not in on_disk["poisons"]


def test_write_docs_splices_the_declared_blocks_and_leaves_the_rest(tmp_path):
    data = _declared_data([0.20, 0.22, 0.21, 0.23, 0.19], [0.40, 0.42, 0.45, 0.38, 0.41])
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("intro\n<!-- readme-declared:start -->\nold\n<!-- readme-declared:end -->\nend\n")
    (tmp_path / "docs" / "effectiveness.md").write_text(
        "a\n<!-- declared-verdicts:start -->\nold\n<!-- declared-verdicts:end -->\nb\n")
    eff.write_docs(data, str(tmp_path))
    readme = (tmp_path / "README.md").read_text()
    docs = (tmp_path / "docs" / "effectiveness.md").read_text()
    assert readme.startswith("intro\n<!-- readme-declared:start -->\n| release | no defense |") and readme.endswith("end\n")
    assert "old" not in readme and "old" not in docs
    assert "- MI-UE (`cpu`) vs EM (published): no defense +20.2 [" in docs and docs.endswith("b\n")
