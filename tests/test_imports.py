"""The package ``miue`` has no import cycle (issue 15).

The graph is built from the source with ``ast``, without importing anything: one node per
module of ``miue/`` (``miue.craft`` is ``miue/craft/__init__.py``), one edge A -> B for every
``import B`` / ``from B import name`` in A, wherever it stands (module level or inside a
function: a lazy import still ties the two modules together). ``from P import name`` is an
edge to the module ``P.name`` when that is a module, else to ``P``. Importing a submodule
does not add an edge to its parent package (``miue.craft.store`` -> ``miue.craft`` only if the
code says so).
"""

from __future__ import annotations

import ast
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
PKG_DIR = os.path.join(ROOT, "miue")
# installed beside the package (setup.py): kernels/ as miue.kernels; the compiled extension
# miue._C imports nothing of ours (a leaf)
EXTRA_PACKAGES = {"miue.kernels": os.path.join(ROOT, "kernels")}
LEAVES = ("miue._C",)


def _modules(pkg_dir: str, pkg: str = "miue") -> dict[str, str]:
    """Module name -> file, for every .py file under pkg_dir."""
    found = {}
    for root, dirs, files in os.walk(pkg_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(root, pkg_dir)
        parts = [pkg] + ([] if rel == "." else rel.split(os.sep))
        for f in files:
            if f.endswith(".py"):
                name = ".".join(parts if f == "__init__.py" else parts + [f[:-3]])
                found[name] = os.path.join(root, f)
    return found


def import_graph(pkg_dir: str = PKG_DIR, pkg: str = "miue", extra_packages=None, leaves=()) -> dict[str, set[str]]:
    modules = _modules(pkg_dir, pkg)
    for name, directory in (extra_packages or {}).items():
        modules.update(_modules(directory, name))
    graph = {m: set() for m in list(modules) + list(leaves)}
    for mod, path in modules.items():
        is_pkg = path.endswith("__init__.py")
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    targets.append(sub if sub in graph else source)
            for t in targets:
                while t and t not in graph and "." in t:  # `import miue.craft.store as s` etc.
                    t = t.rsplit(".", 1)[0]
                if t in graph and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS, three colours)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = GREY
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = BLACK
                stack.pop()
                path.pop()
            elif colour[nxt] == GREY:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def test_miue_has_no_import_cycle():
    graph = import_graph(extra_packages=EXTRA_PACKAGES, leaves=LEAVES)
    assert {"miue.ops", "miue.craft", "miue.kernels"} <= set(graph)  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in miue/: " + " -> ".join(cycle)


def _write(root, files: dict[str, str]):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("files, cycle", [
    # a lazy import inside a function closes the loop (the _io <-> craft pattern)
    ({"__init__.py": "", "a.py": "import p.b\n", "b.py": "def f():\n    from p.a import x\n"}, True),
    # `from p import c` names the submodule p.c; the relative form is resolved too
    ({"__init__.py": "", "a.py": "from p import c\n", "c.py": "from .a import y\n"}, True),
    # the package __init__ re-exporting a submodule that imports a sibling: no cycle
    ({"__init__.py": "from p.a import x\n", "a.py": "from p.b import y\n", "b.py": "import os\n"}, False),
    # but a submodule importing a name from the package __init__ that imports it is one
    ({"__init__.py": "from p.a import x\n", "a.py": "from p import VERSION\n"}, True),
    ({"__init__.py": "", "s/__init__.py": "from p.s.m import f\n", "s/m.py": "from ..b import g\n",
      "b.py": "import p.s.m\n"}, True),
])
def test_cycle_finder_finds_cycles(tmp_path, files, cycle):
    _write(tmp_path / "p", files)
    found = find_cycle(import_graph(str(tmp_path / "p"), "p"))
    assert (found is not None) == cycle, found


if __name__ == "__main__":
    c = find_cycle(import_graph(extra_packages=EXTRA_PACKAGES, leaves=LEAVES))
    print("no cycle" if c is None else " -> ".join(c))
    sys.exit(c is not None)


def test_import_miue_is_light_and_evaluate_is_the_function():
    """``import miue`` loads the ops, not the crafting engine, the victims or torchvision (PEP 562:
    they load on first use); ``miue.evaluate`` is the function whether or not its module
    (``miue.evaluation.victims``) was imported first."""
    import json
    import subprocess

    code = """
import json, sys
import miue
light = [m for m in ("torchvision", "miue.craft", "miue.craft.engine", "miue.evaluation.victims", "miue.aot", "torch._dynamo")
         if m in sys.modules]
import miue.evaluation.victims
f = miue.evaluate
print(json.dumps({"light": light, "callable": callable(f) and f.__module__ == "miue.evaluation.victims",
                  "craft": miue.craft_fast.__module__}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"light": [], "callable": True, "craft": "miue.craft.run"}, got
