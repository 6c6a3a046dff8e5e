"""What crosses processes under torch.distributed: rank and world size, the summed round
metrics, the agreed resume round, and the final all-gather of the δ shards. Rank r of W owns
the images r, r+W, r+2W, ... (see :class:`miue.craft.engine.Engine`)."""

from __future__ import annotations

import torch


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n_global: int, rank: int, world: int) -> torch.Tensor | None:
    """The image indices rank ``rank`` owns (None in one process: all of them)."""
    return torch.arange(rank, n_global, world) if world > 1 else None


def all_reduce_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """The sums over ranks of scalar tensors (one all_reduce, float64)."""
    import torch.distributed as dist

    flat = torch.stack([v.detach().double().reshape(()) for v in values])
    dist.all_reduce(flat)
    return list(flat)


def agree_min(value: int) -> int:
    """The smallest ``value`` over all ranks (one all_reduce)."""
    import torch.distributed as dist

    t = torch.tensor([float(value)])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def gather_delta(local: torch.Tensor, n_global: int, world: int) -> torch.Tensor:
    """Every rank's δ shard, assembled in image order on every rank (one all_gather at the end)."""
    import torch.distributed as dist

    n_max = -(-n_global // world)
    pad = torch.zeros((n_max,) + tuple(local.shape[1:]), dtype=local.dtype)
    pad[: local.shape[0]] = local
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty_like(pad, device=backend_device) for _ in range(world)]
    dist.all_gather(parts, pad.to(backend_device))
    full = torch.empty((n_global,) + tuple(local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        idx = torch.arange(r, n_global, world)
        full[idx] = part[: idx.numel()].cpu()
    return full
