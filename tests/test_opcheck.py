"""torch.library.opcheck on every miue:: op and backend, on the samples each op module offers
(``sample_inputs`` of miue/ops/<op>.py), and torch.compile(fullgraph=True) smoke tests (one per
op), including that new PGD step sizes do not recompile."""

import importlib

import pytest
import torch

import miue

from _util import make_features
from _util import cpu_backends

BACKENDS = cpu_backends(include_reference=True)


def registered_ops() -> list[str]:
    """The registered ``miue::`` ops (forward and backward), e.g. ``miue::supcon_loss_backward``."""
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("miue::"))


def op_module_name(op: str) -> str:
    """The module of op ``miue::X``: ``X`` without a trailing ``_backward`` and a trailing ``_``."""
    name = op.split("::", 1)[1]
    return name.removesuffix("_backward").rstrip("_")


def op_module(op: str):
    return importlib.import_module(f"miue.ops.{op_module_name(op)}")


def takes_backend(op: str) -> bool:
    """Whether op ``miue::X`` carries the backend name (its last argument)."""
    return "str backend" in str(getattr(torch.ops.miue, op.split("::", 1)[1]).default._schema)


def samples(op: str, backend: str, device="cpu", dtype=torch.float32):
    """The op module's samples that call ``op``."""
    return [s for s in op_module(op).sample_inputs(device=device, dtype=dtype, backend=backend)
            if s.op.name() == op]


OPS = registered_ops()
# every backend for the ops that take one; the others (supcon_views_loss: PyTorch's arithmetic) once
CASES = [(op, b) for op in OPS for b in (BACKENDS if takes_backend(op) else ["reference"])]


def test_every_op_has_a_module_with_samples():
    """Every registered miue:: op (forward and backward) is covered by the ``sample_inputs`` of
    its own module miue/ops/<op>.py, the module defines the op, and every sample names a
    registered op."""
    assert {"miue::supcon_loss", "miue::supcon_loss_backward", "miue::pgd_linf_step_", "miue::project_linf_",
            "miue::supcon_views_loss"} <= set(OPS)
    for op in OPS:
        mod = op_module(op)
        assert callable(getattr(mod, "sample_inputs", None)), f"{mod.__name__} has no sample_inputs"
        got = samples(op, "reference")
        assert got, f"{mod.__name__}.sample_inputs() has no sample of {op}"
        source = open(mod.__file__, encoding="utf-8").read()
        assert f'custom_op("{op}"' in source, f"{op} is not defined in {mod.__file__}"
        for s in mod.sample_inputs():
            assert s.op.name() in OPS and op_module_name(s.op.name()) == mod.__name__.rsplit(".", 1)[1]


def test_the_index_names_the_functions():
    """miue.ops (the index) exports every public name it exported before the ops moved to their own
    modules, and a name shared with a module (miue.ops.supcon_loss) is the function, as in miue."""
    import miue.ops as ops

    for name in ("grouped_normalize", "supcon_loss", "intra_class_cosine_loss", "pgd_linf_step_", "project_linf_"):
        assert name in ops.__all__ and callable(getattr(ops, name)) and getattr(ops, name) is getattr(miue, name)
        assert getattr(ops, name).__module__ == f"miue.ops.{name.rstrip('_')}"
    assert set(ops.__all__) <= set(dir(ops)) and callable(ops.supcon_views_loss)
    assert issubclass(ops.MIUESupConLoss, torch.nn.Module) and issubclass(ops.IntraClassCosineLoss, torch.nn.Module)


@pytest.mark.parametrize("name, backend", CASES, ids=[f"{op.split('::')[1]}-{b}" for op, b in CASES])
def test_opcheck(name, backend):
    for s in samples(name, backend):
        torch.library.opcheck(s.op, s.args, s.kwargs)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_opcheck_float64(backend):
    for name in OPS:
        if "pgd" in name or "project" in name or not takes_backend(name):
            continue
        for s in samples(name, backend, dtype=torch.float64):
            torch.library.opcheck(s.op, s.args, s.kwargs)


def compiled_calls(backend):
    f, y = make_features(10, 6, num_classes=3, seed=1)

    def gn(x):
        z, inv, s, n = miue.grouped_normalize(x, y, 3, backend=backend)
        return z.sum() + inv.sum() + s.sum() + n.sum()

    return f, {
        "grouped_normalize": gn,
        "supcon_loss": lambda x: miue.supcon_loss(x, y, backend=backend),
        "intra_class_cosine_loss": lambda x: miue.intra_class_cosine_loss(x, y, 3, backend=backend),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["grouped_normalize", "supcon_loss", "intra_class_cosine_loss"])
def test_compile_fullgraph_loss_ops(backend, name):
    torch._dynamo.reset()
    f, fns = compiled_calls(backend)
    fn = fns[name]
    x1 = f.clone().requires_grad_(True)
    x2 = f.clone().requires_grad_(True)
    eager = fn(x1)
    compiled = torch.compile(fn, fullgraph=True)(x2)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    eager.backward()
    compiled.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_pgd_no_recompile(backend):
    torch._dynamo.reset()
    delta = torch.zeros(2, 3, 8, 8)
    grad = torch.randn(2, 3, 8, 8)
    clean = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)

    @torch.compile(fullgraph=True)
    def step(d, g, c, alpha, eps):
        miue.pgd_linf_step_(d, g, c, alpha, eps, backend=backend)
        miue.project_linf_(d, c, eps, backend=backend)
        return d

    expected = delta.clone()
    # Python floats: dynamo specialises the first value and makes the argument dynamic when
    # it sees a second one (automatic dynamic), so at most one recompilation happens.
    for alpha in (0.5 / 255, 0.45 / 255):
        step(delta, grad, clean, alpha, 8 / 255)
        miue.pgd_linf_step_(expected, grad, clean, alpha, 8 / 255, backend="reference")
    assert torch.equal(delta, expected)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(1, 6):  # the alpha ramp changes the step every round
            alpha = (0.2 + 0.04 * i) / 255
            step(delta, grad, clean, alpha, 8 / 255)
            miue.pgd_linf_step_(expected, grad, clean, alpha, 8 / 255, backend="reference")
    assert torch.equal(delta, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_pgd_tensor_step_never_recompiles(backend):
    torch._dynamo.reset()
    delta = torch.zeros(64)
    grad = torch.randn(64)
    clean = torch.rand(64)

    @torch.compile(fullgraph=True)
    def step(d, alpha):
        return miue.pgd_linf_step_(d, grad, clean, alpha, 0.03, backend=backend)

    step(delta, torch.tensor(0.01))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for a in (0.02, 0.005, -0.01):
            step(delta, torch.tensor(a))
    expected = torch.zeros(64)
    for a in (0.01, 0.02, 0.005, -0.01):
        miue.pgd_linf_step_(expected, grad, clean, a, 0.03, backend="reference")
    assert torch.equal(delta, expected)
