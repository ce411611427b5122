"""``--base_model``: GLIGEN layers on any SD-1.x base (ldm/base_model.py), tiny models offline."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ldm.base_model import BaseModelError, is_gligen_param, load_base_into, merge_base, read_base
from ldm.checkpoint import build_from_checkpoint, load_checkpoint_file, save_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    from ldm.tiny import write_tiny_checkpoint, write_tiny_clip_model, write_tiny_sd_checkpoint

    d = tmp_path_factory.mktemp("base")
    out = {"clip": write_tiny_clip_model(d / "clip"),
           "text": write_tiny_checkpoint(d / "text.pth", "text", seed=0),
           "inpaint": write_tiny_checkpoint(d / "inpaint.pth", "text", inpaint=True, seed=0),
           "hed": write_tiny_checkpoint(d / "hed.pth", "hed", seed=0),
           "sd_ckpt": write_tiny_sd_checkpoint(d / "finetune.ckpt", seed=7)}
    state = load_checkpoint_file(out["sd_ckpt"])["state_dict"]
    out["sd_safetensors"] = str(d / "finetune.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, out["sd_safetensors"])  # a community single file
    text16 = write_tiny_checkpoint(d / "text16.pth", "text", seed=0, phrase_dim=16)  # diffusers-compatible widths
    out["sd_diffusers"] = _write_diffusers_base(d / "finetune_diffusers", text16, out["sd_ckpt"])
    return out


def _write_diffusers_base(folder, gligen_path, sd_path):
    """A plain (non-GLIGEN) SD-1.x diffusers folder holding the base's weights."""
    from safetensors.torch import load_file, save_file

    from ldm import diffusers_format as dfm

    merged = merge_base(load_checkpoint_file(gligen_path), read_base(sd_path))
    dfm.to_diffusers(merged, folder)
    unet = os.path.join(folder, "unet")
    cfg = json.load(open(os.path.join(unet, "config.json")))
    cfg["attention_type"] = "default"
    json.dump(cfg, open(os.path.join(unet, "config.json"), "w"))
    w = os.path.join(unet, "diffusion_pytorch_model.safetensors")
    save_file({k: v for k, v in load_file(w).items() if ".fuser." not in k and not k.startswith("position_net.")}, w)
    return str(folder)


def _sd_parts(sd_path):
    from ldm.checkpoint import official_text_encoder_state, read_official_ckpt

    p = read_official_ckpt(sd_path)
    return {"model": p["model"], "autoencoder": p["autoencoder"],
            "text_encoder": official_text_encoder_state(p["text_encoder"])}


@pytest.mark.parametrize("kind", ["text", "inpaint", "hed"])
@pytest.mark.parametrize("form", ["sd_ckpt", "sd_safetensors", "sd_diffusers"])
def test_merge_takes_gligen_layers_from_the_checkpoint_and_the_rest_from_the_base(files, kind, form):
    gligen = load_checkpoint_file(files[kind])
    base = _sd_parts(files["sd_ckpt"])
    merged = merge_base(gligen, read_base(files[form]))
    widened = kind != "text"
    n_gligen = n_base = n_diff = 0
    for part in ("model", "autoencoder", "text_encoder"):
        assert set(merged[part]) == set(gligen[part])
        for k, v in merged[part].items():
            if part == "model" and is_gligen_param(k, widened):
                assert torch.equal(v, gligen[part][k]), k
                n_gligen += 1
            elif k.endswith("position_ids"):
                assert torch.equal(v, gligen[part][k])
            else:
                assert torch.equal(v, base[part][k]), (part, k)
                n_base += 1
                n_diff += not torch.equal(v, gligen[part][k])  # other seed: the base really replaced it
    assert n_gligen > 10 and n_base > 100 and n_diff > 50
    if widened:  # widened first conv: weight from GLIGEN, bias (frozen SD) from the base
        assert torch.equal(merged["model"]["input_blocks.0.0.weight"], gligen["model"]["input_blocks.0.0.weight"])
        assert torch.equal(merged["model"]["input_blocks.0.0.bias"], base["model"]["input_blocks.0.0.bias"])
    build_from_checkpoint(merged)  # loads strictly


def test_sd2_and_sdxl_shaped_bases_are_refused(files, tmp_path):
    state = dict(load_checkpoint_file(files["sd_ckpt"])["state_dict"])
    # SD-2 shapes: 1024-wide (here 24) text conditioning, linear proj_in / proj_out
    sd2 = {k: (torch.zeros(v.shape[0], 24) if "attn2.to_k" in k or "attn2.to_v" in k else
               v[:, :, 0, 0] if k.endswith(("proj_in.weight", "proj_out.weight")) else v) for k, v in state.items()}
    save_checkpoint({"state_dict": sd2}, tmp_path / "sd2.ckpt")
    with pytest.raises(BaseModelError) as e:
        merge_base(load_checkpoint_file(files["text"]), read_base(tmp_path / "sd2.ckpt"))
    msg = str(e.value)
    assert "not SD-1.x" in msg and "attn2.to_k" in msg and "SD-2" in msg and "\n" not in msg
    openclip = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.model."): v
                for k, v in state.items()}
    save_checkpoint({"state_dict": openclip}, tmp_path / "openclip.ckpt")
    with pytest.raises(BaseModelError, match="text encoder has no .* OpenCLIP"):
        merge_base(load_checkpoint_file(files["text"]), read_base(tmp_path / "openclip.ckpt"))
    import shutil

    xl = tmp_path / "xl"
    shutil.copytree(files["sd_diffusers"], xl)
    cfg = json.load(open(xl / "unet" / "config.json"))
    cfg.update(addition_embed_type="text_time", attention_head_dim=[5, 10])
    json.dump(cfg, open(xl / "unet" / "config.json", "w"))
    with pytest.raises(BaseModelError, match="not SD-1.x: .*addition_embed_type"):
        read_base(str(xl))
    with pytest.raises(BaseModelError, match="not found"):
        read_base(str(tmp_path / "nothing.ckpt"))


def test_load_base_into_built_models_for_training(files):
    gligen = load_checkpoint_file(files["inpaint"])
    models = build_from_checkpoint(gligen)
    load_base_into(models.model, models.autoencoder, models.text_encoder, files["sd_safetensors"])
    merged = build_from_checkpoint(merge_base(gligen, read_base(files["sd_ckpt"])))
    for a, b in ((models.model, merged.model), (models.autoencoder, merged.autoencoder),
                 (models.text_encoder, merged.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _run(files, tmp_path, name, *extra):
    import gligen_inference

    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"generations": [dict(
        prompt="a teddy bear", phrases=["a teddy bear"], locations=[[0.1, 0.1, 0.6, 0.9]], seed=3,
        save_folder_name="g")]}))
    out = tmp_path / name
    assert gligen_inference.main(["--layout", str(layout), "--clip", files["clip"], "--device", "cpu", "--steps", "2",
                                  "--batch_size", "1", "--folder", str(out), "--no-progress", *extra]) == 0
    from PIL import Image

    return np.asarray(Image.open(out / "g" / "0.png")), json.load(open(out / "g" / "0.json"))


def test_inference_with_base_model(files, tmp_path, capsys):
    merged_path = tmp_path / "merged.pth"
    save_checkpoint(merge_base(load_checkpoint_file(files["text"]), read_base(files["sd_ckpt"])), merged_path)
    plain, _ = _run(files, tmp_path, "plain", "--ckpt", files["text"])
    with_base, record = _run(files, tmp_path, "base", "--ckpt", files["text"], "--base_model", files["sd_safetensors"])
    premerged, _ = _run(files, tmp_path, "merged", "--ckpt", str(merged_path))
    assert np.array_equal(with_base, premerged) and not np.array_equal(with_base, plain)
    assert record["settings"]["base_model"] == files["sd_safetensors"]
    import gligen_inference

    capsys.readouterr()
    bad = tmp_path / "bad.ckpt"
    save_checkpoint({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, bad)
    assert gligen_inference.main(["--layout", str(tmp_path / "layout.json"), "--ckpt", files["text"], "--base_model",
                                  str(bad), "--clip", files["clip"], "--device", "cpu", "--steps", "2",
                                  "--batch_size", "1", "--folder", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # (earlier lines: library progress bars)
    assert err.startswith("error: base model") and "not SD-1.x: its UNet has no " in err


def test_spatial_models_take_the_base_first_conv(files):
    from ldm.inference.pipeline import Runner, Settings

    runner = Runner(Settings(base_model=files["sd_ckpt"], device="cpu"))
    conv = runner.sd_first_conv()
    base = _sd_parts(files["sd_ckpt"])["model"]
    assert torch.equal(conv["weight"], base["input_blocks.0.0.weight"])
    assert torch.equal(conv["bias"], base["input_blocks.0.0.bias"])


@pytest.mark.parametrize("form", ["sd_safetensors", "sd_diffusers"])
def test_sd_checkpoint_parts_replace_read_official_ckpt_for_the_trainer(files, form):
    from ldm.base_model import sd_checkpoint_parts
    from ldm.checkpoint import read_official_ckpt

    ref = read_official_ckpt(files["sd_ckpt"])
    models = build_from_checkpoint(load_checkpoint_file(files["inpaint"]))  # widened first conv: allowed
    reference = {"model": models.model.state_dict(), "autoencoder": models.autoencoder.state_dict(),
                 "text_encoder": models.text_encoder.state_dict()}
    from ldm.checkpoint import official_text_encoder_state

    reference["text_encoder"] = official_text_encoder_state(reference["text_encoder"])
    parts = sd_checkpoint_parts(files[form], models.config["diffusion"], reference)
    for part in ("model", "autoencoder"):
        assert set(parts[part]) == set(ref[part]) and all(torch.equal(parts[part][k], ref[part][k]) for k in ref[part])
    te = official_text_encoder_state(ref["text_encoder"])
    assert all(torch.equal(parts["text_encoder"][k], te[k]) for k in te)
    assert all(torch.equal(parts["diffusion"][k], ref["diffusion"][k]) for k in parts["diffusion"])
    with pytest.raises(BaseModelError):
        sd_checkpoint_parts(files[form], None, {**reference, "autoencoder": {"encoder.conv_in.weight": torch.zeros(1)}})


def test_base_from_a_hub_repo_id(files, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision, allow_patterns))
        return files["sd_diffusers"]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    base = read_base("someone/sd15-finetune@v2")
    assert calls[0][:2] == ("someone/sd15-finetune", "v2")
    assert not any(p.startswith(("scheduler/", "image_project/", "safety_checker")) for p in calls[0][2])
    ref = _sd_parts(files["sd_ckpt"])["model"]
    assert all(torch.equal(base.model[k], ref[k]) for k in ref)
