"""convert_ckpt.py: 4 -> 9 input channels, zero-initialised, same outputs as the 4-channel model."""
from __future__ import annotations

import pytest
import torch

import convert_ckpt as C
from ldm.checkpoint import build_from_checkpoint, load_checkpoint_file
from ldm.tiny import tiny_config, write_tiny_checkpoint
from ldm.util import instantiate_from_config


def test_add_additional_channels_in_place():
    w = torch.randn(320, 4, 3, 3)
    sd = {"input_blocks.0.0.weight": w, "input_blocks.0.0.bias": torch.randn(320)}
    bias = sd["input_blocks.0.0.bias"]
    assert C.add_additional_channels(sd, 0)["input_blocks.0.0.weight"] is w
    out = C.add_additional_channels(sd, 5)
    assert out is sd and sd["input_blocks.0.0.bias"] is bias
    new = sd["input_blocks.0.0.weight"]
    assert new.shape == (320, 9, 3, 3) and torch.equal(new[:, :4], w) and not new[:, 4:].any()
    C.add_additional_channels(sd, 8)  # e.g. a downsampler's 8 channels on top
    assert sd["input_blocks.0.0.weight"].shape == (320, 17, 3, 3)
    with pytest.raises(ValueError):
        C.add_additional_channels(sd, -1)


def test_script_output_reproduces_four_channel_model(tmp_path, capsys):
    src = write_tiny_checkpoint(tmp_path / "gen.pth", "text", seed=3)
    dst = tmp_path / "inpaint_init.pth"
    assert C.main(["--ckpt_path", str(src), "--new_ckpt_path", str(dst)]) == 0
    assert "(32, 9, 3, 3)" in capsys.readouterr().out
    new = load_checkpoint_file(dst)
    assert set(new) == {"model", "config_dict", "text_encoder", "autoencoder", "diffusion"}  # nothing lost
    cfg = new["config_dict"]["_content"]
    assert cfg["inpaint_mode"] is True and cfg["model"]["params"]["inpaint_mode"] is True
    w = new["model"]["input_blocks.0.0.weight"]
    assert w.shape[1] == 9 and not w[:, 4:].any()

    four = build_from_checkpoint(src)
    nine = instantiate_from_config(tiny_config("text", inpaint=True)["model"]).eval()
    nine.load_state_dict(new["model"], strict=True)
    nine.grounding_tokenizer_input = four.grounding_tokenizer_input
    g = torch.Generator().manual_seed(0)
    batch = {"boxes": torch.rand(2, 30, 4, generator=g), "masks": torch.ones(2, 30),
             "text_embeddings": torch.randn(2, 30, 24, generator=g)}
    gi = four.grounding_tokenizer_input.prepare(batch)
    inp = dict(x=torch.randn(2, 4, 8, 8, generator=g), timesteps=torch.tensor([10, 700]),
               context=torch.randn(2, 77, 16, generator=g), grounding_input=gi)
    with torch.no_grad():
        ref = four.model(dict(inp))
        got = nine(dict(inp, inpainting_extra_input=torch.randn(2, 5, 8, 8, generator=g)))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_keep_all_is_loadable_and_refuses_reconversion(tmp_path, capsys):
    src = write_tiny_checkpoint(tmp_path / "gen.pth", "text")
    dst = tmp_path / "full.pth"
    assert C.main(["--ckpt_path", str(src), "--new_ckpt_path", str(dst), "--keep_all"]) == 0
    models = build_from_checkpoint(dst)
    assert models.model.inpaint_mode and models.model.input_blocks[0][0].in_channels == 9
    assert C.main(["--ckpt_path", str(dst), "--new_ckpt_path", str(tmp_path / "again.pth")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "9 input channels" in err[0]
    assert C.main(["--ckpt_path", str(tmp_path / "missing.pth"), "--new_ckpt_path", str(tmp_path / "x.pth")]) == 1
    assert "missing.pth" in capsys.readouterr().err
