"""CUDA-graph capture of one sample-wise PGD step (the ``cuda_graphs`` option)."""

from __future__ import annotations

import torch


def graphs_possible(device: torch.device) -> bool:
    """Whether the PGD step can be captured on ``device`` (CUDA only)."""
    return device.type == "cuda"


class GraphedPGDStep:
    """One sample-wise PGD step (surrogate forward, objective, backward w.r.t. δ, fused signed
    step and projection) captured once as a CUDA graph on static batch buffers, then replayed
    ``pgd_steps`` times per full batch: the step's few hundred kernel launches become one.
    The step size is a device scalar, so one capture serves every round.

    ``step(d, clean_f, c_box, y, alpha, eps)`` is the eager step: it updates ``d`` in place and
    returns the objective value. Capture and replay run with ``device`` current, whichever GPU
    the caller has current (``torch.cuda.graph`` captures on the current device's stream)."""

    def __init__(self, step, device: torch.device, eps: float, d, clean_f, c_box, y):
        self.device = device
        with torch.cuda.device(device):
            self._capture(step, eps, d, clean_f, c_box, y)

    def _capture(self, step, eps, d, clean_f, c_box, y):
        device = self.device
        self.d, self.clean_f, self.c_box, self.y = d.clone(), clean_f.clone(), c_box.clone(), y.clone()
        self.alpha = torch.zeros((), dtype=torch.float64, device=device)  # 0 during warm-up: δ unchanged
        # ε on the device, filled by a kernel: a CPU scalar would make the PGD launch copy it to
        # the device inside the capture (an unpinned host-to-device copy)
        eps_t = torch.full((), float(eps), dtype=torch.float64, device=device)

        def captured():
            return step(self.d, self.clean_f, self.c_box, self.y, self.alpha, eps_t)

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up (lazy initialisation, compilation) outside the capture
            for _ in range(3):
                captured()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = captured()

    def run(self, d, clean_f, c_box, y, alpha: float, steps: int) -> torch.Tensor:
        """``steps`` steps on the batch δ ``d`` (updated in place); the summed objective."""
        with torch.cuda.device(self.device):
            return self._run(d, clean_f, c_box, y, alpha, steps)

    def _run(self, d, clean_f, c_box, y, alpha, steps):
        self.d.copy_(d)
        self.clean_f.copy_(clean_f)
        self.c_box.copy_(c_box)
        self.y.copy_(y)
        self.alpha.fill_(alpha)
        total = torch.zeros((), device=d.device)
        for _ in range(steps):
            self.graph.replay()
            total += self.loss
        d.copy_(self.d)
        return total
