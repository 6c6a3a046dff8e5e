"""Backend selection (SPEC §2.5): available_backends, use_backend, backend=, MIUE_BACKEND,
auto choice, and the fallback when the compiled extension is missing."""

import os
import subprocess
import sys

import pytest
import torch

import miue
from miue.ops._backend import resolve_backend

CPU = torch.device("cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CPP = "cpp" in miue.available_backends()


def test_available_backends_lists_reference():
    names = miue.available_backends()
    assert names[0] == "reference"
    assert set(names) <= {"reference", "cpp", "triton"}


@pytest.mark.skipif(not HAS_CPP, reason="extension not built")
def test_auto_picks_cpp_on_cpu():
    assert resolve_backend(None, CPU) == "cpp"


def test_priority_argument_over_context_over_env(monkeypatch):
    monkeypatch.setenv("MIUE_BACKEND", "reference")
    assert resolve_backend(None, CPU) == "reference"
    if HAS_CPP:
        with miue.use_backend("cpp"):
            assert resolve_backend(None, CPU) == "cpp"
            assert resolve_backend("reference", CPU) == "reference"
            with miue.use_backend("reference"):
                assert resolve_backend(None, CPU) == "reference"
            assert resolve_backend(None, CPU) == "cpp"
    monkeypatch.setenv("MIUE_BACKEND", "auto")
    assert resolve_backend(None, CPU) == ("cpp" if HAS_CPP else "reference")


def test_bad_backend_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        miue.supcon_loss(torch.randn(3, 2), torch.tensor([0, 1, 0]), backend="cuda")
    with pytest.raises(ValueError, match="use_backend"):
        with miue.use_backend("fast"):
            pass


def test_bad_env_backend(monkeypatch):
    monkeypatch.setenv("MIUE_BACKEND", "nope")
    with pytest.raises(ValueError, match="MIUE_BACKEND"):
        miue.supcon_loss(torch.randn(3, 2), torch.tensor([0, 1, 0]))


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="triton"):
        miue.supcon_loss(torch.randn(3, 2), torch.tensor([0, 1, 0]), backend="triton")


def test_ops_route_to_the_chosen_backend(monkeypatch):
    calls = []
    from miue.ops import reference

    real = reference.supcon_fwd

    def spy(*args):
        calls.append("reference")
        return real(*args)

    monkeypatch.setattr(reference, "supcon_fwd", spy)
    with miue.use_backend("reference"):
        miue.supcon_loss(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    assert calls == ["reference"]


def _run(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_missing_extension_warns_once_and_falls_back():
    code = (
        "import sys, warnings, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'miue._C': raise ImportError('simulated: extension not built')\n"
        "sys.meta_path.insert(0, Block())\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import torch, miue\n"
        "    names = miue.available_backends()\n"
        "    loss = miue.supcon_loss(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))\n"
        "msgs = [str(x.message) for x in w if 'compiled extension' in str(x.message)]\n"
        "print(len(msgs), names, float(loss) > 0)\n"
    )
    out = _run(code, TRITON_INTERPRET="0", MIUE_SKIP_EXT="")
    assert out.returncode == 0, out.stderr
    count, *rest = out.stdout.split(" ", 1)
    assert count == "1", out.stdout
    assert "'cpp'" not in rest[0] and "True" in rest[0]


def test_skip_ext_is_silent():
    out = _run("import warnings; warnings.simplefilter('error'); import miue; print(miue.available_backends())",
               MIUE_SKIP_EXT="1", TRITON_INTERPRET="0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['reference']"


def _op_modules() -> dict[str, object]:
    """The op modules of miue.ops (miue/ops/<op>.py), by name: every public module but the oracle
    and the loss modules."""
    import importlib
    import pkgutil

    import miue.ops as ops

    names = [m.name for m in pkgutil.iter_modules(ops.__path__)
             if not m.name.startswith("_") and m.name not in ("reference", "modules")]
    return {n: importlib.import_module(f"miue.ops.{n}") for n in sorted(names)}


def test_every_backend_record_implements_every_op():
    """The backends are records (miue.ops._backend.REGISTRY); each module defines every function
    the custom ops call, as the reference backend (the oracle) does and with its parameters,
    checked here rather than when a call first fails. Without triton, miue.kernels' exports are
    read from its source. OP_BACKEND_FUNCTIONS is what each op module's custom ops call."""
    import ast
    import inspect

    from miue.ops import _backend as B

    assert B.BACKENDS == tuple(B.REGISTRY) == ("reference", "cpp", "triton")
    reference = B.REGISTRY["reference"].implementation()
    assert B.REGISTRY["reference"].missing() == []
    for name, rec in B.REGISTRY.items():
        assert rec.name == name and rec.devices and B.LOSS_DTYPES[name] == rec.loss_dtypes
        if name == "triton" and not B._triton_importable():
            source = open(os.path.join(ROOT, "kernels", "__init__.py"), encoding="utf-8").read()
            exported = next(ast.literal_eval(n.value) for n in ast.parse(source).body
                            if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "__all__")
            assert set(B.OP_FUNCTIONS) <= set(exported), f"miue.kernels lacks {set(B.OP_FUNCTIONS) - set(exported)}"
            continue
        assert rec.missing() == [], f"backend {name} lacks {rec.missing()}"
        impl = rec.implementation()
        for f in B.OP_FUNCTIONS:
            got, want = inspect.signature(getattr(impl, f)), inspect.signature(getattr(reference, f))
            assert list(got.parameters) == list(want.parameters), f"{name}.{f}{got} is not reference.{f}{want}"
    assert B.OP_FUNCTIONS == tuple(f for fs in B.OP_BACKEND_FUNCTIONS.values() for f in fs)
    modules = _op_modules()
    for op, mod in modules.items():  # the list is what the ops call
        source = inspect.getsource(mod)
        called = {f for f in B.OP_FUNCTIONS if f"impl.{f}(" in source or f").{f}(" in source}
        assert called == set(B.OP_BACKEND_FUNCTIONS.get(op, ())), op
        assert ("implementation(" in source) == (op in B.OP_BACKEND_FUNCTIONS), op


def test_one_file_per_op_in_every_layer():
    """One name per op (issue 48): every registered miue:: op (``X``, ``X_backward``, or ``X_`` in
    place) is the module miue/ops/X.py, which has tests/test_X.py; an op with backends
    (OP_BACKEND_FUNCTIONS) has exactly kernels/X.py, csrc/cpu/X.cpp and csrc/cuda/X.cu. No other
    kernel or C++ source: what two ops share lives in private modules and headers (kernels/_linf.py,
    csrc/cpu/linf.h, csrc/cuda/linf.cuh)."""
    from miue.ops import _backend as B

    registered = {n.split("::", 1)[1].removesuffix("_backward").rstrip("_")
                  for n in torch._C._dispatch_get_all_op_names() if n.startswith("miue::")}
    modules = set(_op_modules())
    assert registered == modules
    assert set(B.OP_BACKEND_FUNCTIONS) <= modules

    def stems(folder, ext):
        path = os.path.join(ROOT, *folder.split("/"))
        return {f[: -len(ext)] for f in os.listdir(path) if f.endswith(ext) and not f.startswith("_")}

    with_backends = set(B.OP_BACKEND_FUNCTIONS)
    assert stems("kernels", ".py") == with_backends
    assert stems("csrc/cpu", ".cpp") == with_backends
    assert stems("csrc/cuda", ".cu") == with_backends
    missing = sorted(m for m in modules if not os.path.exists(os.path.join(ROOT, "tests", f"test_{m}.py")))
    assert not missing, f"ops without tests/test_<op>.py: {missing}"
