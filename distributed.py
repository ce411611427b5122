"""Small ``torch.distributed`` helpers (training.md §3).

Every helper degrades gracefully to the single-process case: when ``torch.distributed`` is
unavailable or not initialised, the rank is 0, the world size 1 and collectives are no-ops.

Launch model: ``torchrun --nproc_per_node=N main.py ...`` sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup_distributed` reads them and
initialises the default process group (NCCL on CUDA, gloo otherwise).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "env_world_size", "env_rank", "env_local_rank", "setup_distributed", "cleanup_distributed",
    "is_dist", "get_rank", "get_world_size", "is_main_process", "synchronize", "reduce_sum", "reduce_mean",
    "gather_grad", "all_gather", "broadcast_object", "reduce_loss_dict",
]


# -- launcher environment --------------------------------------------------------------------
def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """Global ``RANK`` set by torchrun (0 when absent)."""
    return int(os.environ.get("RANK", "0"))


def env_local_rank(default: int = 0) -> int:
    """``LOCAL_RANK`` set by torchrun; ``default`` (the legacy ``--local_rank`` flag) when absent."""
    return int(os.environ.get("LOCAL_RANK", default))


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device, local_rank: int = 0) -> DistInfo:
    """Initialise the default process group when ``WORLD_SIZE > 1`` (``init_method="env://"``).

    ``device`` is the device type chosen for training; on CUDA the process binds to
    ``cuda:LOCAL_RANK`` and uses NCCL, otherwise gloo. Ends with a barrier.
    """
    world = env_world_size()
    local_rank = env_local_rank(local_rank)
    if world <= 1:
        return DistInfo(0, local_rank, 1, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    info = DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), backend)
    synchronize()
    return info


def cleanup_distributed() -> None:
    if is_dist():
        dist.destroy_process_group()


# -- queries -----------------------------------------------------------------------------------
def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


# -- collectives -------------------------------------------------------------------------------
def synchronize() -> None:
    """Barrier (no-op for a single process)."""
    if get_world_size() > 1:
        dist.barrier()


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """All-reduce (SUM) of a clone; ``tensor`` itself when not distributed."""
    if not is_dist():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (every rank gets the result)."""
    return reduce_sum(tensor) / get_world_size()


def gather_grad(params) -> None:
    """Average ``.grad`` over ranks in place (manual DDP; unused by the trainer, which uses DDP)."""
    world = get_world_size()
    if world > 1:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad.data, op=dist.ReduceOp.SUM)
                p.grad.data.div_(world)


def all_gather(data: Any) -> list:
    """Any picklable object from every rank -> list ordered by rank (``[data]`` for one process)."""
    if get_world_size() == 1:
        return [data]
    out = [None] * get_world_size()
    dist.all_gather_object(out, data)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_loss_dict(loss_dict: dict) -> dict:
    """Mean of each scalar over ranks, on every rank (the original reduced to rank 0 only)."""
    world = get_world_size()
    if world < 2:
        return loss_dict
    with torch.no_grad():
        keys = sorted(loss_dict)
        values = torch.stack([torch.as_tensor(loss_dict[k], dtype=torch.float64).reshape(()) for k in keys])
        if dist.get_backend() == "nccl":
            values = values.cuda()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = (values / world).cpu()
    return {k: float(v) for k, v in zip(keys, values)}
