"""Training on another SD-1.x base: ``main.py --base_model`` takes the frozen UNet / VAE / text encoder
from any SD-1.x file instead of ``DATA_ROOT/official_ckpt_name``; a non-SD-1.x base is one error line."""
from __future__ import annotations

import glob
import os

import pytest
import torch

from _train_helpers import SD_NAME, main_cmd, run_main, shared_tiny_root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return shared_tiny_root(tmp_path_factory)


def _finetune(data_root: str, out: str, scale: float = 1.5) -> dict:
    """A 'community fine-tune' of the tiny SD: every float tensor scaled, saved as one .safetensors."""
    from safetensors.torch import save_file

    from ldm.checkpoint import load_checkpoint_file

    obj = load_checkpoint_file(os.path.join(data_root, SD_NAME))
    state = obj.get("state_dict", obj)
    tuned = {k: (v * scale if v.is_floating_point() and not k.startswith(("alphas", "betas", "sqrt", "log_one",
                                                                         "posterior", "model_ema"))
                 else v).contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    save_file(tuned, out)
    return tuned


def test_frozen_parts_come_from_the_base_model(data_root, tmp_path):
    base = str(tmp_path / "finetune.safetensors")
    tuned = _finetune(data_root, base)
    out = str(tmp_path / "OUT")
    res = run_main(main_cmd(data_root, out, "base", "--base_model", base, "--official_ckpt_name", "absent.ckpt",
                            "--total_iters", "2", "--save_every_iters", "2"))
    assert res.returncode == 0, res.stderr[-3000:]
    from ldm.checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(glob.glob(os.path.join(out, "base", "*", "checkpoint_latest.pth"))[0])
    vae = {k[len("first_stage_model."):]: v for k, v in tuned.items() if k.startswith("first_stage_model.")}
    assert vae and all(torch.equal(ckpt["autoencoder"][k], v) for k, v in vae.items())
    unet = {k[len("model.diffusion_model."):]: v for k, v in tuned.items() if k.startswith("model.diffusion_model.")}
    frozen = [k for k in unet if "fuser" not in k and "position_net" not in k]
    assert frozen and all(torch.equal(ckpt["model"][k], unet[k]) for k in frozen)  # frozen: still the base's


def test_a_base_that_is_not_sd1_is_one_error_line(data_root, tmp_path):
    from safetensors.torch import save_file

    bad = str(tmp_path / "sd2.safetensors")
    tuned = _finetune(data_root, bad, 1.0)
    key = next(k for k in tuned if k.endswith("attn2.to_k.weight"))
    tuned[key] = torch.zeros(tuned[key].shape[0], tuned[key].shape[1] * 2)  # a wider text conditioning
    save_file(tuned, bad)
    out = str(tmp_path / "OUT")
    res = run_main(main_cmd(data_root, out, "bad", "--base_model", bad, "--total_iters", "2"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "not SD-1.x" in lines[0] and "attn2.to_k.weight" in lines[0]
    assert not glob.glob(os.path.join(out, "bad", "*"))  # no empty run folder
