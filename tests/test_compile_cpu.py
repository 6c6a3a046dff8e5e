"""The compiled engine path (``compile=True``: torch.compile of the surrogate, the `fast`
preset's path) on the CPU with inductor, against the eager engine.

* The PGD objective (surrogate features -> our supcon custom op) compiles with
  ``fullgraph=True`` (a graph break anywhere in it, the loss included, is an error) and its
  loss and input gradient match eager within 1e-5 relative (inductor may reorder float32
  sums; SPEC's fp32 accuracy bar).
* Two crafting rounds with ``compile=True`` on tiny data (64 one-channel 8×8 images,
  ``cnn-small``) record no graph break and give the δ of the eager run: δ takes signed
  gradient steps, so an element can only move by a whole step where a gradient component
  near zero changes sign under the compiled kernels' rounding; we require at most 1% of the
  elements to differ (each by at most 2·α_max + 1e-6, one flipped step) and the mean
  absolute difference to stay below 1% of ε. (Measured here: see the assertion messages.)
"""

import pytest
import torch
from torch._dynamo.utils import counters

import miue
from miue.models import build_model

pytestmark = [pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile unavailable"),
              pytest.mark.usefixtures("epoch_rounds")]  # the cnn preset with one surrogate epoch per round


def _data(n=64, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % classes
    return images, labels


def _graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def test_objective_compiles_fullgraph():
    torch.manual_seed(0)
    model = build_model("cnn-small", 4, channels=1, image_size=8, normalize=True).eval()
    images, y = _data()
    x = images.float().div(255)

    def objective(inp):
        feats, logits = model(inp, return_features=True)
        return miue.supcon_loss(feats, y, 0.1)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(objective, fullgraph=True)
    xe = x.clone().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    le = objective(xe)
    (ge,) = torch.autograd.grad(le, xe)
    lc = compiled(xc)
    (gc,) = torch.autograd.grad(lc, xc)
    assert _graph_breaks() == 0, dict(counters["graph_break"])
    assert abs(lc.item() - le.item()) <= 1e-5 * abs(le.item()), (lc.item(), le.item())
    assert (gc - ge).norm().item() <= 1e-5 * ge.norm().item() + 1e-12, ((gc - ge).norm().item(), ge.norm().item())


def test_craft_compile_matches_eager():
    images, labels = _data()
    kw = dict(preset="cnn", rounds=2, pgd_steps=2, batch_size=32, train_batch_size=32, device="cpu", seed=0,
              progress=False, amp=False, channels_last=False)
    eager = miue.craft_fast(images, labels, compile=False, **kw)
    torch._dynamo.reset()
    counters.clear()
    compiled = miue.craft_fast(images, labels, compile=True, **kw)
    assert _graph_breaks() == 0, dict(counters["graph_break"])
    eps = 8 / 255
    de, dc = eager.delta.double(), compiled.delta.double()
    assert dc.abs().max().item() <= eps + 1e-7
    diff = (dc - de).abs()
    alpha_max = max(h["alpha"] for h in eager.history)
    frac = (diff > 1e-6).double().mean().item()
    assert frac <= 0.01, f"{frac:.4%} of delta elements differ"
    assert diff.max().item() <= 2 * alpha_max + 1e-6, diff.max().item()
    assert diff.mean().item() <= 0.01 * eps, diff.mean().item()
    # the surrogate losses of the two runs agree too
    for he, hc in zip(eager.history, compiled.history):
        for key in ("objective_loss", "train_loss"):
            assert abs(he[key] - hc[key]) <= 1e-3 * abs(he[key]) + 1e-5, (key, he[key], hc[key])


def test_resolve_backend_is_marked_constant_as_torch_marks_it():
    """miue.ops._backend marks resolve_backend without importing torch._dynamo (import time):
    the mark must be the one torch.compiler.assume_constant_result gives on this torch."""
    from miue.ops._backend import _constant_result, resolve_backend

    def f():
        return 0

    def g():
        return 0

    marked = torch.compiler.assume_constant_result(f)
    ours = _constant_result(g)
    torch_marks = {k: v for k, v in vars(marked).items()}
    assert torch_marks and torch_marks == {k: v for k, v in vars(ours).items()}
    assert {k: v for k, v in vars(resolve_backend).items() if k in torch_marks} == torch_marks


def test_backend_choice_under_compile(monkeypatch):
    """What docs/ops.md promises (issue 39): under torch.compile a new ``backend=`` value runs
    the new backend, while ``use_backend()`` changed after the first compilation is not seen
    (resolve_backend is an assume_constant_result) until ``torch.compiler.reset()``."""
    from miue.ops import _cpp, reference

    if "cpp" not in miue.available_backends():
        pytest.skip("needs the compiled extension")
    calls = []
    for name, module in (("reference", reference), ("cpp", _cpp)):
        real = module.supcon_fwd
        monkeypatch.setattr(module, "supcon_fwd", lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    f = torch.randn(16, 8)
    y = torch.arange(16) % 3

    torch.compiler.reset()

    @torch.compile(backend="eager", fullgraph=True)
    def by_argument(x, backend):
        return miue.supcon_loss(x, y, backend=backend)

    by_argument(f, "reference")
    by_argument(f, "cpp")
    assert calls == ["reference", "cpp"]

    calls.clear()
    torch.compiler.reset()

    @torch.compile(backend="eager", fullgraph=True)
    def by_context(x):
        return miue.supcon_loss(x, y)

    with miue.use_backend("reference"):
        by_context(f)
    with miue.use_backend("cpp"):
        by_context(f)  # the compiled code keeps the backend it was traced with
    assert calls == ["reference", "reference"]
    torch.compiler.reset()
    with miue.use_backend("cpp"):
        by_context(f)
    assert calls[-1] == "cpp"
    torch.compiler.reset()
