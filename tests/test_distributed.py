"""distributed.py helpers (single process) and a 2-process gloo run of main.py under torchrun."""
from __future__ import annotations

import os
import re

import torch

import distributed as D
from _train_helpers import main_cmd, run_main, shared_tiny_root


def test_helpers_degrade_to_single_process(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert (D.get_rank(), D.get_world_size(), D.is_main_process(), D.is_dist()) == (0, 1, True, False)
    D.synchronize()
    t = torch.ones(2)
    assert D.reduce_sum(t) is t and torch.equal(D.reduce_mean(t), t)
    assert D.all_gather({"a": 1}) == [{"a": 1}] and D.broadcast_object("x") == "x"
    assert D.reduce_loss_dict({"loss": 0.5}) == {"loss": 0.5}
    info = D.setup_distributed(torch.device("cpu"), local_rank=0)
    assert not info.distributed and info.world_size == 1
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert D.env_local_rank(0) == 3 and D.env_world_size() == 1


def test_torchrun_two_processes_gloo(tmp_path, tmp_path_factory):
    data = shared_tiny_root(tmp_path_factory)
    out = str(tmp_path / "out")
    res = run_main(main_cmd(data, out, "ddp", "--batch_size", "2", "--total_iters", "12", "--save_every_iters", "6",
                            torchrun_procs=2), timeout=400)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    m = re.search(r"trainable parameter sha256 per rank: \['(\w+)', '(\w+)'\]", res.stdout)
    assert m, res.stdout[-2000:]
    assert m.group(1) == m.group(2), "ranks hold different weights"

    from ldm.checkpoint import build_from_checkpoint, load_checkpoint_file

    run = os.path.join(out, "ddp", "tag00")
    assert sorted(f for f in os.listdir(run) if f.startswith("checkpoint_")) == [
        "checkpoint_00000001.pth", "checkpoint_00000007.pth", "checkpoint_00000012.pth", "checkpoint_latest.pth"]
    ckpt = load_checkpoint_file(os.path.join(run, "checkpoint_latest.pth"))
    assert ckpt["iters"] == 12 and len(ckpt["rng"]) == 2 and ckpt["loader"]["world_size"] == 2
    assert ckpt["config_dict"]["_content"]["distributed"] is True
    assert not any(k.startswith("module.") for k in ckpt["model"])
    # the two ranks drew different randomness (seed + rank)
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    models = build_from_checkpoint(os.path.join(run, "checkpoint_latest.pth"))
    assert models.model.input_blocks[0][0].in_channels == 4
