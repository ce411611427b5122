"""Our public API against the golden fixtures' checkpoints: load, text encoder, tokens, UNet."""
import json

import pytest
import torch

from ldm.checkpoint import build_from_checkpoint, load_checkpoint_file
from conftest import FIXTURES


def tol_ok(got, ref, tol):
    err = (got.float() - ref.float()).abs().max().item()
    return err <= tol["atol"] + tol["rtol"] * ref.abs().max().item(), err


@pytest.fixture(params=FIXTURES)
def fixture(request, in_golden_dir):
    folder = in_golden_dir / request.param
    meta = json.loads((folder / "fixture.json").read_text())
    inputs = torch.load(folder / "inputs.pt", weights_only=False)
    outputs = torch.load(folder / "outputs.pt", weights_only=False)
    models = build_from_checkpoint(folder / "checkpoint.pth")
    return meta, inputs, outputs, models


def test_safe_load_has_all_sections(in_golden_dir):
    ckpt = load_checkpoint_file(in_golden_dir / "text_box" / "checkpoint.pth")
    assert {"model", "autoencoder", "text_encoder", "diffusion", "config_dict"} <= set(ckpt)
    assert "transformer.text_model.embeddings.position_ids" in ckpt["text_encoder"]


@torch.no_grad()
def test_text_encoder(fixture):
    meta, _, outputs, m = fixture
    ids = m.text_encoder.tokenize([meta["prompt"]])[0].tolist()
    assert ids == meta["token_ids"]["prompt"]
    ok, err = tol_ok(m.text_encoder.encode(meta["prompts"]), outputs["context"], meta["tolerances"]["context"])
    assert ok, err
    ok, err = tol_ok(m.text_encoder.encode([""] * meta["batch_size"]), outputs["uc"], meta["tolerances"]["uc"])
    assert ok, err


@torch.no_grad()
def test_grounding_tokens_and_unet(fixture):
    meta, inputs, outputs, m = fixture
    gi = m.grounding_tokenizer_input.prepare(inputs["batch"])
    ok, err = tol_ok(m.model.position_net(**gi), outputs["grounding_tokens"], meta["tolerances"]["grounding_tokens"])
    assert ok, err
    base = dict(x=inputs["unet_x"], timesteps=inputs["unet_timesteps"],
                inpainting_extra_input=inputs.get("inpainting_extra_input"), grounding_extra_input=None)
    eps = m.model(dict(base, context=outputs["context"], grounding_input=gi))
    ok, err = tol_ok(eps, outputs["unet_eps"], meta["tolerances"]["unet_eps"])
    assert ok, err
    eps_null = m.model(dict(base, context=outputs["uc"]))  # no grounding_input -> null grounding
    ok, err = tol_ok(eps_null, outputs["unet_eps_null_grounding"], meta["tolerances"]["unet_eps_null_grounding"])
    assert ok, err
    assert not torch.allclose(eps, eps_null)


@torch.no_grad()
def test_autoencoder(fixture):
    meta, inputs, outputs, m = fixture
    ok, err = tol_ok(m.autoencoder.decode(outputs["plms_latent"]), outputs["decoded_image"], meta["tolerances"]["decoded_image"])
    assert ok, err
    if meta["inpaint"]:
        torch.manual_seed(meta["encode_seed_inpaint"])
        ok, err = tol_ok(m.autoencoder.encode(inputs["input_image"]), outputs["autoencoder_encode"],
                         meta["tolerances"]["autoencoder_encode"])
        assert ok, err


def test_diffusion_q_sample(fixture):
    meta, inputs, outputs, m = fixture
    xn = m.diffusion.q_sample(outputs["train_x_start"], inputs["train_timesteps"], inputs["train_noise"])
    ok, err = tol_ok(xn, outputs["train_x_noisy"], meta["tolerances"]["train_x_noisy"])
    assert ok, err
