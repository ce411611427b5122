"""Checkpoint I/O: safe loading, clear errors, atomic writes, safetensors, SD splitting."""
import pytest
import torch

from ldm.checkpoint import (CheckpointError, build_from_checkpoint, load_checkpoint_file, read_official_ckpt,
                            safe_torch_load, save_checkpoint, split_sd_checkpoint)
from ldm.tiny import build_tiny, write_tiny_checkpoint, write_tiny_sd_checkpoint


class Payload:
    """Stands for any class outside the allow-list (e.g. one whose unpickling runs code)."""

    def __init__(self):
        self.value = 42


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", "text")


def test_refuses_pickled_object_outside_allow_list(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="Payload"):
        safe_torch_load(path)


def test_trusted_opt_in_loads_it(tmp_path, monkeypatch):
    path = tmp_path / "evil.pth"
    torch.save({"payload": Payload()}, path)
    monkeypatch.setenv("GLIGEN_TRUST_CHECKPOINTS", "1")
    assert safe_torch_load(path)["payload"].value == 42


def test_truncated_checkpoint_gives_clear_error(tiny_ckpt, tmp_path):
    data = open(tiny_ckpt, "rb").read()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint_file(bad)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint_file(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint_file(tmp_path / "empty.pth")


def test_tampered_shapes_are_named(tiny_ckpt, tmp_path):
    ckpt = load_checkpoint_file(tiny_ckpt)
    ckpt["model"]["out.2.weight"] = torch.zeros(4, 32, 1, 1)
    with pytest.raises(CheckpointError, match="out.2.weight"):
        build_from_checkpoint(ckpt)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.pth"
    save_checkpoint({"a": torch.ones(2)}, path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint_file(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]  # no temporary left behind


def test_safetensors_round_trip_builds_same_model(tiny_ckpt, tmp_path):
    ckpt = load_checkpoint_file(tiny_ckpt)
    st = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, st)
    a, b = build_from_checkpoint(ckpt), build_from_checkpoint(st)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert a.config == b.config


def test_both_text_encoder_layouts_load_strictly(tiny_ckpt):
    ckpt = load_checkpoint_file(tiny_ckpt)  # official transformers-4 names + position_ids
    assert "transformer.text_model.embeddings.position_ids" in ckpt["text_encoder"]
    official = build_from_checkpoint(ckpt).text_encoder.state_dict()
    assert "transformer.embeddings.token_embedding.weight" in official
    ckpt["text_encoder"] = dict(official)  # transformers-5 names, no position_ids
    models = build_from_checkpoint(ckpt)
    for k, v in official.items():
        assert torch.equal(models.text_encoder.state_dict()[k], v)


def test_split_sd_checkpoint_routes_prefixes():
    sd = {"model.diffusion_model.out.2.bias": 1, "cond_stage_model.transformer.x": 2, "first_stage_model.encoder.y": 3,
          "betas": 4, "model_ema.decay": 5, "model_ema.num_updates": 6}
    out = split_sd_checkpoint(sd)
    assert out["model"] == {"out.2.bias": 1} and out["text_encoder"] == {"transformer.x": 2}
    assert out["autoencoder"] == {"encoder.y": 3} and out["diffusion"] == {"betas": 4}
    assert set(out["unexpected"]) == {"model_ema.decay", "model_ema.num_updates"}


def test_read_tiny_sd_ckpt_loads_into_parts(tmp_path):
    path = write_tiny_sd_checkpoint(tmp_path / "sd.ckpt")
    parts = read_official_ckpt(path)
    tiny = build_tiny("text")
    missing, unexpected = tiny["model"].load_state_dict(parts["model"], strict=False)
    assert unexpected == [] and all("fuser" in k or "position_net" in k for k in missing)
    tiny["text_encoder"].load_state_dict(parts["text_encoder"], strict=True)
    tiny["autoencoder"].load_state_dict(parts["autoencoder"], strict=True)
    tiny["diffusion"].load_state_dict(parts["diffusion"], strict=True)


def test_not_an_sd_checkpoint(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="model.diffusion_model"):
        read_official_ckpt(path)


def test_sd_first_conv_from_files(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from ldm.checkpoint import load_sd_first_conv

    w, b = torch.randn(320, 4, 3, 3), torch.randn(320)
    save_file({"conv_in.weight": w.half(), "conv_in.bias": b, "other": torch.zeros(3)}, tmp_path / "unet.safetensors")
    conv = load_sd_first_conv(tmp_path / "unet.safetensors")  # byte-range reader, fp16 -> fp32
    torch.testing.assert_close(conv["weight"], w.half().float())
    torch.testing.assert_close(conv["bias"], b)
    torch.save({"weight": w, "bias": b}, tmp_path / "SD_input_conv_weight_bias.pth")
    monkeypatch.chdir(tmp_path)  # the original's file in the working directory wins
    assert torch.equal(load_sd_first_conv()["weight"], w)
    sd = write_tiny_sd_checkpoint(tmp_path / "sd.ckpt")
    assert load_sd_first_conv(sd)["weight"].shape == (32, 4, 3, 3)


def test_sd_first_conv_offline_without_cache_is_clear(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from ldm.checkpoint import load_sd_first_conv

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        load_sd_first_conv()


def test_written_checkpoints_use_official_text_encoder_names(tiny_ckpt):
    te = load_checkpoint_file(tiny_ckpt)["text_encoder"]
    assert "transformer.text_model.embeddings.position_ids" in te
    assert all(k.startswith("transformer.text_model.") for k in te)
