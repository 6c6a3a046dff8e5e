"""The crafting configuration is checked once, where it is made (CraftConfig.__post_init__).

Before, four places checked parts of it (craft_fast, Engine.__init__, the release and
make_config) and disagreed: make_config(rounds=0) or CraftConfig(storage="x") went through
and failed later or never. Each field now carries its documentation and its check, and every
way of making a configuration (the constructor, make_config, craft_fast, a checkpoint's saved
configuration) meets the same check.
"""

import dataclasses
import math

import pytest

import miue
from miue.presets import CHECKS, PRESETS, CraftConfig, check_field, make_config

FIELDS = dataclasses.fields(CraftConfig)
_BAD_BY_KIND = {
    "positive int": [0, -1, 1.5, True, "3", None],
    "int >= 0": [-1, 2.0, False, None],
    "number >= 0": [-0.1, math.nan, math.inf, "1", None, True],
    "number > 0": [0, -1.0, math.nan, None],
    "fraction": [-0.01, 1.01, math.nan, None],
    "budget": [0, 0.0, 1.5, -8 / 255, math.nan, None, "8/255", True],
    "bool": [0, 1, "yes", None],
    "int": [1.0, "0", None, True],
}


def _bad_values(f):
    if f.metadata["choices"] is not None:
        return ["no-such-choice", 3] + ([] if None in f.metadata["choices"] else [None])
    return _BAD_BY_KIND.get(f.metadata["kind"], [])


def test_every_field_is_documented_and_every_kind_is_known():
    for f in FIELDS:
        assert f.metadata.get("doc"), f"{f.name} has no documentation"
        assert f.metadata["kind"] in (None, *CHECKS), f.name
    assert set(_BAD_BY_KIND) == set(CHECKS)  # a new kind gets its bad values here


@pytest.mark.parametrize("f", [f for f in FIELDS if _bad_values(f)], ids=lambda f: f.name)
def test_each_bad_value_is_refused_where_the_config_is_made(f):
    for bad in _bad_values(f):
        with pytest.raises(ValueError, match=f"^{f.name} must be"):
            CraftConfig(**{f.name: bad})
        with pytest.raises(ValueError, match=f.name):
            check_field(f.name, bad)


def test_defaults_and_every_preset_pass():
    CraftConfig()
    for p in PRESETS:
        make_config(p)


@pytest.mark.parametrize("change,word", [
    (dict(rounds=0), "rounds"),  # make_config accepted these before: only craft_fast looked
    (dict(pgd_batch_size=-4), "pgd_batch_size"),
    (dict(storage="ram"), "storage"),  # only the Engine looked
    (dict(pgd_bn="frozen"), "pgd_bn"),
    (dict(lr_schedule="step"), "lr_step_every"),  # a rule across fields
    (dict(delta_dtype="int8", eps=0.9), "int8"),
])
def test_make_config_refuses_what_the_engine_used_to(change, word):
    with pytest.raises(ValueError, match=word):
        make_config("cnn", **change)


def test_craft_fast_refuses_before_any_work(monkeypatch):
    import miue.craft.run as run

    monkeypatch.setattr(run, "prepare_inputs", lambda *a, **k: pytest.fail("inputs read despite a bad config"))
    for bad in (dict(eps=None), dict(seed=None), dict(storage="ram"), dict(train_steps=-1), dict(temperature=0)):
        with pytest.raises(ValueError):
            miue.craft_fast([[0]], [0], preset="cnn", progress=False, **bad)


def test_a_changed_value_is_checked_again_on_replace():
    cfg = make_config("cnn")
    with pytest.raises(ValueError, match="rounds"):
        dataclasses.replace(cfg, rounds=0)


def test_schedule_choices_are_the_engine_registries():
    """CraftConfig's checked values for ``schedule`` and ``lr_schedule`` are exactly the
    registries the engine dispatches on (miue/craft/schedules.py, miue/craft/surrogate.py):
    a name added to one and not the other fails here, not mid-run."""
    import dataclasses

    from miue.craft.schedules import SCHEDULES
    from miue.craft.surrogate import LR_SCHEDULES
    from miue.presets import CraftConfig

    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(CraftConfig)}
    assert set(choices["schedule"]) == set(SCHEDULES)
    assert set(choices["lr_schedule"]) == set(LR_SCHEDULES)
