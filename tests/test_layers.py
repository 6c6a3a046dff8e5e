"""The package is grouped by layer (docs/design.md): ops, craft, data, evaluation, compat. The
modules that moved keep their old import names, as the very same module objects (so that
monkeypatching either name patches both), and every sub-package is in the wheel."""

import ast
import importlib
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
MOVED = {
    "miue.victims": "miue.evaluation.victims",
    "miue.defenses": "miue.evaluation.defenses",
    "miue.metrics": "miue.evaluation.metrics",
    "miue.folder": "miue.data.folder",
    "miue.release": "miue.data.release",
    "miue.protect": "miue.data.protect",
}


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_old_names_are_the_moved_modules(old, new):
    mod = importlib.import_module(old)
    assert mod is importlib.import_module(new)
    parent, _, leaf = old.rpartition(".")
    assert getattr(importlib.import_module(parent), leaf) is mod
    # `from miue.<old> import name` gives the moved module's object
    public = [n for n in vars(mod) if not n.startswith("_")]
    assert public and all(getattr(mod, n) is getattr(importlib.import_module(new), n) for n in public)


def test_the_data_package_exports_its_loaders():
    import miue.data
    from miue.data import loaders

    for name in miue.data.__all__:
        assert getattr(miue.data, name) is getattr(loaders, name)


def test_every_subpackage_is_in_setup_py():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    listed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "packages":
            listed = {e.value for e in node.value.elts}
    found = {"miue"} | {"miue." + d for d in os.listdir(os.path.join(ROOT, "miue"))
                        if os.path.isfile(os.path.join(ROOT, "miue", d, "__init__.py"))}
    found.add("miue.kernels")  # kernels/ at the top level, installed as miue.kernels (package_dir)
    assert listed == found
