"""The δ store: clean images and sample-wise δ, resident on the device, in pinned host memory,
or (``storage="disk"``) in a memory-mapped file beside the checkpoints."""

from __future__ import annotations

import os

import numpy as np
import torch

from miue.presets import DELTA_DTYPES  # the choices of CraftConfig.delta_dtype (and the CLI)

_DTYPES = dict(zip(DELTA_DTYPES, (torch.float32, torch.float16, torch.int8), strict=True))


def file_tensor(path: str, shape: tuple, dtype: torch.dtype, fresh: bool) -> torch.Tensor:
    """A tensor backed by a shared memory map of ``path`` (created zero-filled, sparse, when
    ``fresh`` or missing): its pages live in the page cache, not in the process's anonymous memory."""
    numel = int(np.prod(shape))
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if fresh or not os.path.exists(path) or os.path.getsize(path) != nbytes:
        with open(path, "wb") as fh:
            fh.truncate(nbytes)
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.from_file(path, shared=True, size=numel, dtype=dtype).view(shape)


class DeltaStore:
    """Clean images and δ, resident on the device or in (pinned) host memory.

    δ is kept as float32, float16, or int8 in units of 1/255. Batches are gathered by index
    into float32 device tensors and written back the same way.
    """

    def __init__(self, clean: torch.Tensor, delta: torch.Tensor, delta_dtype: str, device: torch.device, resident: bool,
                 int8_limit: int = 127, delta_file: str | None = None):
        self.device = device
        self.resident = resident and delta_file is None
        self.delta_dtype = delta_dtype
        self.int8_limit = int8_limit  # floor(eps·255): int8 δ never leaves the ε ball
        self.delta_file = delta_file
        if delta_file is not None:  # disk: δ memory-mapped, clean images as given (e.g. a memory-mapped cache)
            self.clean = clean.cpu()
            self.delta = file_tensor(delta_file, tuple(delta.shape), _DTYPES[delta_dtype], fresh=True)
            return
        home = device if resident else torch.device("cpu")
        pin = (not resident) and device.type == "cuda"
        self.clean = clean.to(home)
        self.delta = self._encode(delta).to(home)
        if pin:
            self.clean = self.clean.pin_memory()
            self.delta = self.delta.pin_memory()

    # -- δ codecs
    def _encode(self, d: torch.Tensor) -> torch.Tensor:
        if self.delta_dtype == "float32":
            return d.float()
        if self.delta_dtype == "float16":
            return d.half()
        return torch.round(d.float() * 255).clamp_(-self.int8_limit, self.int8_limit).to(torch.int8)

    def _decode(self, d: torch.Tensor) -> torch.Tensor:
        if self.delta_dtype == "int8":
            return d.float() / 255
        return d.float()

    def _idx(self, idx: torch.Tensor) -> torch.Tensor:
        return idx.to(self.clean.device, non_blocking=True)

    def clean_batch(self, idx):
        return self.clean.index_select(0, self._idx(idx)).to(self.device, non_blocking=True)

    def delta_batch(self, idx):
        d = self.delta.index_select(0, self._idx(idx)).to(self.device, non_blocking=True)
        return self._decode(d)

    def write_delta(self, idx, values):
        self.delta.index_copy_(0, self._idx(idx), self._encode(values).to(self.delta.device, non_blocking=True))

    def delta_full(self) -> torch.Tensor:
        return self._decode(self.delta).cpu()


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < 0.5 * free
