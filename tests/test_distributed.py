"""Process layout through Lightning Fabric: torchrun's and SLURM's environments resolve to the right
rank / world size / strategy (no processes started), and a 2-process gloo run of main.py under
torchrun ends with identical weights on both ranks."""
from __future__ import annotations

import os
import re

import pytest
import torch

from _train_helpers import main_cmd, run_main, shared_tiny_root
from ldm.training.config import TrainConfig
from ldm.training.launch import make_fabric, process_layout

LAUNCHER_VARS = ("TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                 "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env():
    """No launcher variables; everything Fabric touches (environment, rank-zero flag) restored after."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only

    saved, ranks = dict(os.environ), (rank_zero_only.rank, utils_rank_zero_only.rank)
    for k in list(os.environ):
        if k in LAUNCHER_VARS or k.startswith("SLURM_"):
            del os.environ[k]
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)
    rank_zero_only.rank, utils_rank_zero_only.rank = ranks


def test_single_process_without_launcher(clean_env):
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.fabric.strategies import SingleDeviceStrategy

    assert process_layout() == (1, 1)
    fabric = make_fabric(TrainConfig(device="cpu"))
    assert (fabric.global_rank, fabric.world_size) == (0, 1)
    assert isinstance(fabric.strategy, SingleDeviceStrategy)
    assert isinstance(fabric._connector.cluster_environment, LightningEnvironment)


def test_torchrun_environment(clean_env):
    from lightning.fabric.plugins.environments import TorchElasticEnvironment
    from lightning.fabric.strategies import DDPStrategy

    clean_env.update(TORCHELASTIC_RUN_ID="abc", RANK="5", LOCAL_RANK="1", WORLD_SIZE="8", LOCAL_WORLD_SIZE="4",
                     GROUP_RANK="1", MASTER_ADDR="10.0.0.7", MASTER_PORT="29501")
    assert process_layout() == (4, 2)
    fabric = make_fabric(TrainConfig(device="cpu", precision="bf16"))
    kwargs = fabric.strategy._ddp_kwargs
    assert isinstance(fabric.strategy, DDPStrategy)
    assert kwargs.get("forward_sync_buffers", kwargs.get("broadcast_buffers")) is False
    env = fabric.strategy.cluster_environment
    assert isinstance(env, TorchElasticEnvironment)
    assert (fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size) == (5, 1, 1, 8)
    assert (env.main_address, env.main_port) == ("10.0.0.7", 29501)
    assert fabric.strategy.precision.precision == "bf16-mixed"


def test_slurm_single_node_environment(clean_env):
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.fabric.strategies import DDPStrategy

    clean_env.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1", SLURM_PROCID="1",
                     SLURM_LOCALID="1", SLURM_NODEID="0", SLURM_NODELIST="gpu-node07", SLURM_JOB_ID="4242",
                     SLURM_JOB_NAME="gligen")
    assert process_layout() == (2, 1)
    fabric = make_fabric(TrainConfig(device="cpu", precision="fp16"))
    env = fabric.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and isinstance(fabric.strategy, DDPStrategy)
    assert (fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size) == (1, 1, 0, 2)
    assert env.main_address == "gpu-node07" and env.main_port == 15000 + 4242
    assert fabric.strategy.precision.scaler is not None  # fp16 scales the loss, on CPU too


def test_slurm_multi_node_environment(clean_env):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    clean_env.update(SLURM_NTASKS="8", SLURM_NTASKS_PER_NODE="4(x2)", SLURM_NNODES="2", SLURM_PROCID="6",
                     SLURM_LOCALID="2", SLURM_NODEID="1", SLURM_NODELIST="node[03-04]", SLURM_JOB_ID="123456",
                     SLURM_JOB_NAME="gligen")
    assert process_layout() == (4, 2)
    fabric = make_fabric(TrainConfig(device="cpu"))
    assert isinstance(fabric.strategy.cluster_environment, SLURMEnvironment)
    assert (fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size) == (6, 2, 1, 8)
    assert fabric.strategy.cluster_environment.main_address == "node03"
    # an interactive SLURM shell is not a launcher
    clean_env["SLURM_JOB_NAME"] = "bash"
    assert process_layout() == (1, 1)


def test_torchrun_two_processes_gloo(tmp_path, tmp_path_factory):
    data = shared_tiny_root(tmp_path_factory)
    out = str(tmp_path / "out")
    res = run_main(main_cmd(data, out, "ddp", "--batch_size", "2", "--total_iters", "12", "--save_every_iters", "6",
                            torchrun_procs=2), timeout=400)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    m = re.search(r"trainable parameter sha256 per rank: \['(\w+)', '(\w+)'\]", res.stdout)
    assert m, res.stdout[-2000:]
    assert m.group(1) == m.group(2), "ranks hold different weights"
    assert res.stdout.count("Training finished") == 1  # rank-zero printing

    from ldm.checkpoint import build_from_checkpoint, load_checkpoint_file

    run = os.path.join(out, "ddp", "tag00")
    assert sorted(f for f in os.listdir(run) if f.startswith("checkpoint_")) == [
        "checkpoint_00000001.pth", "checkpoint_00000007.pth", "checkpoint_00000012.pth", "checkpoint_latest.pth"]
    ckpt = load_checkpoint_file(os.path.join(run, "checkpoint_latest.pth"))
    assert ckpt["iters"] == 12 and len(ckpt["rng"]) == 2 and ckpt["loader"]["world_size"] == 2
    assert ckpt["loader"]["batch_size"] == 2  # per process
    assert ckpt["config_dict"]["_content"]["distributed"] is True
    assert ckpt["config_dict"]["_content"]["total_batch_size"] == 4
    assert not any(k.startswith(("module.", "_forward_module.")) for k in ckpt["model"])
    # the two ranks drew different randomness (seed + rank)
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    models = build_from_checkpoint(os.path.join(run, "checkpoint_latest.pth"))
    assert models.model.input_blocks[0][0].in_channels == 4
