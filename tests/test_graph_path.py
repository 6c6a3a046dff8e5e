"""The ``cuda_graphs`` path on a machine without a GPU: the engine's graphed PGD pass against its
eager pass (the graph replaced by a stand-in that replays the captured step eagerly), and
``GraphedPGDStep``'s capture and replay on the requested GPU (torch.cuda replaced by a recorder).
What only a card can show (the capture itself) is in test_cuda.py."""

import contextlib

import numpy as np
import pytest
import torch

from miue.craft import attack as attack_mod
from miue.craft import graphs
from miue.craft.engine import Engine
from miue.presets import make_config

EPS = 8 / 255


class _ReplayEagerly:
    """Stands in for GraphedPGDStep: keeps the step it was given and runs it where a replay would."""

    built = 0

    def __init__(self, step, device, eps, d, clean_f, c_box, y):
        type(self).built += 1
        self.step, self.c_box = step, c_box.clone()
        self.eps = torch.tensor(float(eps), dtype=torch.float64)

    def run(self, d, clean_f, c_box, y, alpha, steps):
        a = torch.tensor(alpha, dtype=torch.float64)
        total = torch.zeros(())
        for _ in range(steps):
            total += self.step(d, clean_f, c_box, y, a, self.eps)
        return total


def _images(n=32, size=8):
    g = np.random.default_rng(3)
    x = g.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    x[:, :, :2] = 0  # pixels on both edges of the box, where the box binds
    x[:, :, -2:] = 255
    return torch.from_numpy(x), torch.arange(n) % 4


@pytest.mark.parametrize("objective", ["miue", "em", "pil"])
def test_graphed_pass_equals_the_eager_pass(objective, monkeypatch):
    """Full PGD batches go through the graph, so the graphed step must be the eager step: same
    objective, same box (PIL's has none), bitwise the same δ."""
    monkeypatch.setattr(attack_mod, "GraphedPGDStep", _ReplayEagerly)
    monkeypatch.setattr(attack_mod, "graphs_possible", lambda device: True)
    x, y = _images()
    deltas = []
    for graphed in (False, True):
        cfg = make_config("cnn", objective=objective, eps=EPS, num_classes=4, pgd_steps=3, pgd_batch_size=16,
                          train_epochs=1, cuda_graphs=graphed, seed=1)
        torch.manual_seed(0)
        eng = Engine(cfg, x, y, None, torch.device("cpu"), False)
        eng.attack.pgd_pass(2 / 255)
        assert eng.graph_status == ("captured" if graphed else None)
        deltas.append(eng.store.delta_batch(torch.arange(len(x))).clone())
    assert deltas[0].abs().max() > 0
    assert torch.equal(deltas[0], deltas[1])


class _FakeCuda:
    """Records which device is current when graphs.py captures, replays and makes its streams."""

    def __init__(self):
        self.current = 0
        self.log = []

    @contextlib.contextmanager
    def device(self, dev):
        prev, self.current = self.current, torch.device(dev).index
        try:
            yield
        finally:
            self.current = prev

    def Stream(self, device=None):  # noqa: N802 - torch.cuda's name
        return _FakeStream()

    def current_stream(self, device=None):
        return _FakeStream()

    @contextlib.contextmanager
    def stream(self, s):
        self.log.append(("warm-up", self.current))
        yield

    def CUDAGraph(self):  # noqa: N802
        fake = self

        class _G:
            def replay(self):
                fake.log.append(("replay", fake.current))
        return _G()

    @contextlib.contextmanager
    def graph(self, g):
        self.log.append(("capture", self.current))
        yield


class _FakeStream:
    def wait_stream(self, other):
        pass


def test_capture_and_replay_happen_on_the_requested_gpu(monkeypatch):
    """``torch.cuda.graph`` captures on the *current* device's stream: with cuda:0 current and the
    run on cuda:1, the capture must still happen with cuda:1 current, or it records nothing."""
    fake = _FakeCuda()
    for name in ("device", "Stream", "current_stream", "stream", "CUDAGraph", "graph"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    real_zeros, real_full = torch.zeros, torch.full
    monkeypatch.setattr(graphs.torch, "zeros", lambda *a, device=None, **k: real_zeros(*a, **k))
    monkeypatch.setattr(graphs.torch, "full", lambda *a, device=None, **k: real_full(*a, **k))
    d = torch.zeros(2, 3)

    def step(d, clean_f, c_box, y, alpha, eps):
        return d.sum()

    g = graphs.GraphedPGDStep(step, torch.device("cuda", 1), EPS, d, d, d, torch.zeros(2))
    g.run(d, d, d, torch.zeros(2), 0.01, steps=2)
    assert fake.current == 0  # put back afterwards
    assert fake.log == [("warm-up", 1), ("capture", 1), ("replay", 1), ("replay", 1)]


def test_graphs_possible_only_on_cuda():
    assert graphs.graphs_possible(torch.device("cuda", 0))
    assert not graphs.graphs_possible(torch.device("cpu"))
