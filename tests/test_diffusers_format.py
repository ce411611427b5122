"""GLIGEN checkpoints <-> diffusers folders (ldm/diffusers_format.py, convert_ckpt.py --to/--from_diffusers).

Tiny random checkpoints whose phrase-feature width equals the context width (diffusers' position
net requires it). diffusers' own classes load the written folders; their outputs must equal ours.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("diffusers")

import convert_ckpt  # noqa: E402
from ldm import diffusers_format as dfm  # noqa: E402
from ldm.checkpoint import build_from_checkpoint, load_checkpoint_file  # noqa: E402

KINDS = {"text": ("text", False), "text_image": ("text_image", False), "inpaint_text": ("text", True)}
SECTIONS = ("model", "autoencoder", "text_encoder", "diffusion")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ldm.tiny import write_tiny_checkpoint, write_tiny_clip_model

    d = tmp_path_factory.mktemp("dfm")
    paths = {"clip": write_tiny_clip_model(d / "clip", phrase_dim=16)}
    for name, (fam, inp) in KINDS.items():
        paths[name] = write_tiny_checkpoint(d / f"{name}.pth", fam, inp, seed=1, phrase_dim=16)
        paths[name + "_dir"] = dfm.to_diffusers(paths[name], d / f"{name}_diffusers", clip=paths["clip"])
    return paths


def assert_bit_identical(a: dict, b: dict):
    for s in SECTIONS:
        assert set(a[s]) == set(b[s]), (s, sorted(set(a[s]) ^ set(b[s]))[:5])
        for k in a[s]:
            x, y = a[s][k], b[s][k]
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), (s, k)


@pytest.mark.parametrize("name", list(KINDS))
def test_round_trip_is_bit_identical(tiny, tmp_path, name):
    folder = tiny[name + "_dir"]
    assert sorted(os.listdir(folder)) == sorted(["model_index.json", "unet", "vae", "text_encoder", "tokenizer",
                                                 "scheduler"] + (["image_project"] if name == "text_image" else []))
    unet_cfg = json.load(open(os.path.join(folder, "unet", "config.json")))
    assert unet_cfg["attention_type"] == ("gated-text-image" if name == "text_image" else "gated")
    assert unet_cfg["in_channels"] == (9 if name.startswith("inpaint") else 4)
    index = json.load(open(os.path.join(folder, "model_index.json")))
    assert index["_class_name"] == dfm.PIPELINE_CLASS[KINDS[name][0]]
    out = tmp_path / "back.safetensors"
    assert convert_ckpt.main(["--from_diffusers", folder, "--new_ckpt_path", str(out)]) == 0
    back = load_checkpoint_file(out)
    assert_bit_identical(load_checkpoint_file(tiny[name]), back)
    models = build_from_checkpoint(back)  # the rebuilt config makes the same architecture (strict load)
    assert models.model.inpaint_mode == KINDS[name][1]


def _grounding(B=2, n=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.zeros(B, 30, 4)
    boxes[:, :n] = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.5, 0.2, 0.9, 0.9], [0.0, 0.0, 1.0, 0.3]])[:n]
    masks = torch.zeros(B, 30)
    masks[0, :n] = 1  # row 1: null grounding (as the unconditional half of CFG)
    return boxes, masks, torch.randn(B, 30, dim, generator=g)


@pytest.mark.parametrize("name", ["text", "inpaint_text"])
def test_diffusers_unet_gives_our_eps(tiny, name):
    from diffusers import UNet2DConditionModel

    ours = build_from_checkpoint(load_checkpoint_file(tiny[name])).model
    theirs = UNet2DConditionModel.from_pretrained(os.path.join(tiny[name + "_dir"], "unet")).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 77, 16, generator=g)
    t = torch.tensor([981, 500])
    boxes, masks, emb = _grounding()
    extra = torch.randn(2, 5, 8, 8, generator=g) if KINDS[name][1] else None
    with torch.no_grad():
        e_ours = ours(dict(x=x, timesteps=t, context=ctx, inpainting_extra_input=extra,
                           grounding_input=dict(boxes=boxes, masks=masks, positive_embeddings=emb)))
        x_in = x if extra is None else torch.cat([x, extra], 1)
        e_theirs = theirs(x_in, t, encoder_hidden_states=ctx, cross_attention_kwargs={"gligen": dict(
            boxes=boxes, masks=masks, positive_embeddings=emb)}).sample
        e_null = ours(dict(x=x, timesteps=t, context=ctx, inpainting_extra_input=extra,
                           grounding_input=dict(boxes=boxes, masks=masks * 0, positive_embeddings=emb)))
    assert (e_ours[0] - e_null[0]).abs().max() > 1e-4  # grounding matters: 10x above the tolerance
    torch.testing.assert_close(e_theirs, e_ours, rtol=1e-5, atol=1e-5)


def test_text_image_tokens_through_image_project_and_position_net(tiny):
    """A CLIP image embedding through diffusers' image_project (+ its normalisation) and position net
    gives our tokens (our reprojection with CLIP's text projection + our position net); eps too."""
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.clip_image_project_model import CLIPImageProjection

    from ldm.modules.encoders.clip_features import TEXT_FEATURE_NORM, load_text_projection, reproject_image_embedding

    ours = build_from_checkpoint(load_checkpoint_file(tiny["text_image"])).model
    folder = tiny["text_image_dir"]
    theirs = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).eval()
    project = CLIPImageProjection.from_pretrained(os.path.join(folder, "image_project")).eval()
    g = torch.Generator().manual_seed(2)
    image_embeds = torch.randn(30, 16, generator=g)  # CLIPVisionModelWithProjection.image_embeds (unnormalised)
    boxes, masks, text = _grounding()
    with torch.no_grad():
        f = project(image_embeds)
        f_theirs = f / f.norm(dim=-1, keepdim=True) * TEXT_FEATURE_NORM  # as the diffusers pipeline
        f_ours = reproject_image_embedding(image_embeds / image_embeds.norm(dim=-1, keepdim=True),
                                           load_text_projection(tiny["clip"]))
        torch.testing.assert_close(f_theirs, f_ours, rtol=1e-5, atol=1e-5)
        image = f_ours[None].repeat(2, 1, 1)
        text_masks, image_masks = masks.clone(), masks.clone()
        image_masks[0, 0] = 0  # a text-only object
        tok_ours = ours.position_net(boxes=boxes, masks=masks, text_masks=text_masks, image_masks=image_masks,
                                     text_embeddings=text, image_embeddings=image)
        kw = dict(boxes=boxes, masks=masks, phrases_masks=text_masks, image_masks=image_masks,
                  phrases_embeddings=text, image_embeddings=f_theirs[None].repeat(2, 1, 1))
        tok_theirs = theirs.position_net(**kw)
        torch.testing.assert_close(tok_theirs, tok_ours, rtol=1e-5, atol=1e-5)
        x, ctx, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 16, generator=g), torch.tensor([700, 10])
        e_ours = ours(dict(x=x, timesteps=t, context=ctx, grounding_tokens=tok_ours))
        e_theirs = theirs(x, t, encoder_hidden_states=ctx, cross_attention_kwargs={"gligen": kw}).sample
    torch.testing.assert_close(e_theirs, e_ours, rtol=1e-5, atol=1e-5)


def test_written_components_load_in_their_libraries(tiny):
    from diffusers import AutoencoderKL, PNDMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from ldm.modules.encoders.clip_tokenizer import build_clip_tokenizer

    folder = tiny["text_dir"]
    models = build_from_checkpoint(load_checkpoint_file(tiny["text"]))
    vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae")).eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean_theirs = vae.encode(x).latent_dist.mean
        mean_ours = models.autoencoder.posterior(x)[0]
        torch.testing.assert_close(mean_theirs, mean_ours, rtol=1e-4, atol=1e-5)
        z = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(vae.decode(z).sample, models.autoencoder.decode(z * vae.config.scaling_factor),
                                   rtol=1e-4, atol=1e-5)
        text = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval()
        ids = build_clip_tokenizer()(["a teddy bear"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        torch.testing.assert_close(text(ids).last_hidden_state, models.text_encoder.transformer(ids).last_hidden_state)
    slow = CLIPTokenizer(os.path.join(folder, "tokenizer", "vocab.json"), os.path.join(folder, "tokenizer", "merges.txt"))
    phrase = "a Teddy-bear, sitting next to 2 birds!"
    assert slow(phrase).input_ids == build_clip_tokenizer()(phrase).input_ids
    sched = PNDMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
    torch.testing.assert_close(sched.alphas_cumprod.float(), models.diffusion.alphas_cumprod.float())


def test_hub_repo_id_through_snapshot_download(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, revision=None, allow_patterns=None, ignore_patterns=None, **kw):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return tiny["text_dir"]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    out = tmp_path / "hub.pth"
    assert convert_ckpt.main(["--from_diffusers", "masterful/gligen-1-4-generation-text-box@main",
                              "--new_ckpt_path", str(out)]) == 0
    assert calls[0][:2] == ("masterful/gligen-1-4-generation-text-box", "main")
    assert "unet/*.safetensors" in calls[0][2] and not any("safety_checker" in p for p in calls[0][2])
    assert_bit_identical(load_checkpoint_file(tiny["text"]), load_checkpoint_file(out))


def test_refusals_are_one_line(tiny, tmp_path, capsys):
    from ldm.tiny import write_tiny_checkpoint

    kp = write_tiny_checkpoint(tmp_path / "kp.pth", "keypoint")
    assert convert_ckpt.main(["--ckpt_path", kp, "--to_diffusers", str(tmp_path / "kp_out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "keypoint" in err and err.count("\n") == 1
    assert not (tmp_path / "kp_out").exists()
    wide = write_tiny_checkpoint(tmp_path / "wide.pth", "text")  # phrase width 24 != context 16
    assert convert_ckpt.main(["--ckpt_path", wide, "--to_diffusers", str(tmp_path / "w")]) == 1
    assert "cross_attention_dim" in capsys.readouterr().err
    assert convert_ckpt.main(["--ckpt_path", tiny["text"], "--to_diffusers", tiny["text_dir"]]) == 1
    assert "not empty" in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp_")]  # no partial folders left
    assert convert_ckpt.main(["--from_diffusers", str(tmp_path), "--new_ckpt_path", str(tmp_path / "x.pth")]) == 1
    assert "not a diffusers folder" in capsys.readouterr().err
    sd2 = tmp_path / "sd2"
    import shutil

    shutil.copytree(tiny["text_dir"], sd2)
    cfg = json.load(open(sd2 / "unet" / "config.json"))
    cfg.update(attention_head_dim=[5, 10], use_linear_projection=True)
    json.dump(cfg, open(sd2 / "unet" / "config.json", "w"))
    assert convert_ckpt.main(["--from_diffusers", str(sd2), "--new_ckpt_path", str(tmp_path / "x.pth")]) == 1
    assert "use_linear_projection" in capsys.readouterr().err


def test_original_flags_unchanged(tiny, tmp_path):
    out = tmp_path / "inpaint_init.pth"
    assert convert_ckpt.main(["--ckpt_path", tiny["text"], "--new_ckpt_path", str(out)]) == 0
    assert load_checkpoint_file(out)["model"]["input_blocks.0.0.weight"].shape[1] == 9


@pytest.mark.parametrize("name", ["text", "inpaint_text"])
def test_inference_from_diffusers_folder_writes_the_same_image(tiny, tmp_path, name):
    import numpy as np
    from PIL import Image

    import gligen_inference

    entry = dict(prompt="a teddy bear and a bird", phrases=["a teddy bear", "a bird"],
                 locations=[[0.0, 0.1, 0.4, 0.8], [0.5, 0.1, 1.0, 0.8]], seed=5, save_folder_name="x")
    if KINDS[name][1]:
        im = tmp_path / "input.png"
        Image.fromarray((np.arange(16 * 16 * 3) % 251).astype(np.uint8).reshape(16, 16, 3)).save(im)
        entry["input_image"] = str(im)
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"generations": [entry]}))
    images = []
    for ckpt in (tiny[name], tiny[name + "_dir"]):
        out = tmp_path / f"out_{len(images)}"
        assert gligen_inference.main(["--layout", str(layout), "--ckpt", ckpt, "--clip", tiny["clip"], "--device", "cpu",
                                      "--steps", "2", "--batch_size", "1", "--folder", str(out), "--no-progress"]) == 0
        images.append(np.asarray(Image.open(out / "x" / "0.png")))
    assert np.array_equal(images[0], images[1])


def test_inference_resolves_a_diffusers_repo_id(tiny, monkeypatch):
    import huggingface_hub

    from ldm.inference.checkpoints import resolve_checkpoint

    fetched = []

    def fake_download(repo, filename, revision=None, **kw):
        fetched.append((repo, filename))
        if filename == "model_index.json":
            return os.path.join(tiny["text_dir"], "model_index.json")
        return "/single/file.bin"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: tiny["text_dir"])
    assert resolve_checkpoint("masterful/gligen-1-4-generation-text-box") == tiny["text_dir"]
    assert resolve_checkpoint(tiny["text_dir"]) == tiny["text_dir"]
    # released repos are single files: no model_index.json probe
    assert resolve_checkpoint("gligen/gligen-generation-text-box") == "/single/file.bin"
    assert fetched == [("masterful/gligen-1-4-generation-text-box", "model_index.json"),
                       ("gligen/gligen-generation-text-box", "diffusion_pytorch_model.bin")]


def test_diffusers_gligen_pipeline_runs_the_written_folder(tiny):
    """diffusers' own (deprecated) StableDiffusionGLIGENPipeline loads every component of the folder and samples."""
    import numpy as np
    from diffusers import StableDiffusionGLIGENPipeline

    pipe = StableDiffusionGLIGENPipeline.from_pretrained(tiny["text_dir"], safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a bird", gligen_phrases=["a bird"], gligen_boxes=[[0.1, 0.1, 0.5, 0.5]], num_inference_steps=2,
               height=16, width=16, output_type="np", gligen_scheduled_sampling_beta=0.5,
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 16, 16, 3) and np.isfinite(out.images).all()


def test_old_diffusers_vae_attention_names_are_read(tiny):
    """VAEs saved by diffusers < 0.15 name the mid attention query/key/value/proj_attn."""
    folder = os.path.join(tiny["text_dir"], "vae")
    state = dfm.read_component_weights(folder)
    old = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
           .replace(".to_out.0.", ".proj_attn."): v for k, v in state.items()}
    assert old != state
    dd = dfm.vae_params_from_diffusers(json.load(open(os.path.join(folder, "config.json"))))["ddconfig"]
    a, b = dfm.vae_state_from_diffusers(old, dd), dfm.vae_state_from_diffusers(state, dd)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
