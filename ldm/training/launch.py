"""Devices, precision and the process layout of a training run, handed to Lightning Fabric.

Fabric reads the launcher's environment itself: ``torchrun`` (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``), SLURM's ``srun`` (``SLURM_NTASKS``, ``SLURM_PROCID``,
``SLURM_LOCALID``, ``SLURM_NODEID``, ``SLURM_NODELIST``) or, with neither, it starts
``--devices`` processes of this script on this machine. This module only fills the numbers
Fabric needs up front (processes per node, nodes) from the same variables when the flags say
``auto``, and picks the strategy: DDP (no per-forward buffer broadcast, as the original) whenever
there is more than one process, NCCL on CUDA and gloo on CPU.

Precision: ``fp32`` (``32-true``), ``bf16`` (``bf16-mixed``), ``fp16`` (``16-mixed`` with a
gradient scaler, on CPU too). Mixed precision is autocast only: inputs keep their dtype (box and
keypoint coordinates stay float32), unlike Fabric's default, which casts every input tensor.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import torch
from lightning.fabric import Fabric
from lightning.fabric.plugins import MixedPrecision
from lightning.fabric.strategies import DDPStrategy

from ldm.devices import resolve_device

__all__ = ["AutocastPrecision", "process_layout", "make_fabric"]


class AutocastPrecision(MixedPrecision):
    """Fabric's AMP plugin without its cast of the module inputs (the autocast does the rest)."""

    def convert_input(self, data: Any) -> Any:
        return data


def _first_int(value: str) -> int:
    """``"4(x2),2"`` (SLURM's per-node task counts) -> 4."""
    m = re.match(r"\s*(\d+)", value)
    if not m:
        raise ValueError(f"cannot read a task count from {value!r}")
    return int(m.group(1))


def process_layout(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(processes per node, nodes)`` as the launcher set them up: torchrun, then SLURM (the order
    Fabric detects them in), else ``(1, 1)``."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_WORLD_SIZE", world))
        return local, max(world // max(local, 1), 1)
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        ntasks = int(env["SLURM_NTASKS"])
        nodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
        per_node = env.get("SLURM_NTASKS_PER_NODE")
        return (_first_int(per_node) if per_node else max(ntasks // nodes, 1)), nodes
    return 1, 1


def _no_buffer_sync() -> dict:
    """DDP without the per-forward buffer broadcast (the original's ``broadcast_buffers=False``;
    newer torch spells it ``forward_sync_buffers``). The UNet's buffers are constants."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def make_fabric(cfg) -> Fabric:
    """A :class:`~lightning.fabric.Fabric` for ``cfg`` (a :class:`~ldm.training.config.TrainConfig`):
    ``--device``, ``--devices``, ``--num_nodes``, ``--strategy``, ``--precision``. Not launched yet."""
    accelerator = resolve_device(cfg.device).type
    per_node, nodes = process_layout()
    devices = per_node if cfg.devices == "auto" else int(cfg.devices)
    num_nodes = nodes if cfg.num_nodes == "auto" else int(cfg.num_nodes)
    strategy: Any = cfg.strategy
    if strategy == "ddp" or (strategy == "auto" and devices * num_nodes > 1):
        strategy = DDPStrategy(**_no_buffer_sync())
    precision = cfg.fabric_precision
    plugins = None
    if precision in ("16-mixed", "bf16-mixed"):
        plugins = [AutocastPrecision(precision, device=accelerator if accelerator != "mps" else "mps")]
        precision = None
    return Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                  precision=precision, plugins=plugins)


def grad_scaler(fabric: Fabric) -> "torch.amp.GradScaler | None":
    """The gradient scaler of ``16-mixed`` (None otherwise)."""
    return getattr(fabric.strategy.precision, "scaler", None)
