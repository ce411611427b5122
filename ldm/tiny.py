"""Tiny random-weight GLIGEN models in the official checkpoint format (tests and the offline demo).

The architecture is the real one at toy width: UNet with 32 channels on an 8x8 latent, a 16x16
autoencoder, a 2-layer CLIP text encoder, and each modality's grounding tokenizer. Weights are
random (seeded), so images are noise-like; the point is to exercise every code path offline.
"""
from __future__ import annotations

import copy
import os

import torch

from ldm.checkpoint import make_config_dict, official_text_encoder_state, save_checkpoint
from ldm.constants import SEM_CHANNELS
from ldm.util import instantiate_from_config

P = "ldm.modules.diffusionmodules."
FAMILIES = ("text", "text_image", "keypoint", "hed", "canny", "depth", "normal", "sem")
SPATIAL_KEYS = {"hed": "hed_edge", "canny": "canny_edge", "depth": "depth", "normal": "normal", "sem": "sem"}

TINY_TEXT_CONFIG = dict(vocab_size=49408, hidden_size=16, intermediate_size=64, projection_dim=16, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu")
TINY_PHRASE_DIM = 24  # width of phrase / reference-image features (768 for the released models)
TINY_BACKBONE = dict(backbone_depths=[1, 1, 1, 1], backbone_dims=[8, 8, 8, 16])


def tiny_config(family: str = "text", inpaint: bool = False, phrase_dim: int = TINY_PHRASE_DIM) -> dict:
    """A complete config (diffusion/model/autoencoder/text_encoder/adapters) for one modality.

    ``phrase_dim``: width of phrase / image features (16 = the context width gives a model that
    diffusers' GLIGEN UNet can hold, whose position net takes features as wide as the context)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    model = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1],
                 num_res_blocks=1, channel_mult=[1, 1], num_heads=2, transformer_depth=1, context_dim=16,
                 fuser_type="gatedSA", use_checkpoint=True, inpaint_mode=inpaint)
    adapters = {}
    if family == "text":
        model["grounding_tokenizer"] = {"target": P + "text_grounding_net.PositionNet",
                                        "params": {"in_dim": phrase_dim, "out_dim": 16}}
    elif family == "text_image":
        model["grounding_tokenizer"] = {"target": P + "text_image_grounding_net.PositionNet",
                                        "params": {"in_dim": phrase_dim, "out_dim": 16}}
    elif family == "keypoint":
        model["grounding_tokenizer"] = {"target": P + "keypoint_grounding_net.PositionNet",
                                        "params": {"max_persons_per_image": 8, "out_dim": 16}}
    else:
        if inpaint:
            raise ValueError("inpainting is not supported with spatial-map models")
        tok = dict(resize_input=64, out_dim=16, **TINY_BACKBONE)
        if family == "sem":
            tok["in_dim"] = SEM_CHANNELS
        model["grounding_tokenizer"] = {"target": P + f"{family}_grounding_net.PositionNet", "params": tok}
        ds = {"out_dim": 1, "out_size": 8} if family == "hed" else {"resize_input": 32, "out_dim": 8}
        if family == "sem":
            ds["in_dim"] = SEM_CHANNELS
        model["grounding_downsampler"] = {"target": P + f"{family}_grounding_downsampler.GroundingDownsampler", "params": ds}
        adapters["grounding_downsampler_input"] = {"target": f"grounding_input.{family}_grounding_downsampler_input.GroundingDSInput"}
    config = {
        "diffusion": {"target": "ldm.models.diffusion.ldm.LatentDiffusion",
                      "params": {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}},
        "model": {"target": P + "openaimodel.UNetModel", "params": model},
        "autoencoder": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "scale_factor": 0.18215, "embed_dim": 4,
            "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
                         "ch_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}},
        "text_encoder": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                         "params": {"text_config": dict(TINY_TEXT_CONFIG)}},
        "grounding_tokenizer_input": {"target": f"grounding_input.{family}_grounding_tokinzer_input.GroundingNetInput"},
        **adapters,
        "inpaint_mode": inpaint,
    }
    return copy.deepcopy(config)


def build_tiny(family: str = "text", inpaint: bool = False, seed: int = 0, phrase_dim: int = TINY_PHRASE_DIM) -> dict:
    """Instantiate the four parts with seeded random weights (gates and null features randomised too,
    so the grounding path is numerically active). Returns ``{section: module}`` plus ``config``."""
    config = tiny_config(family, inpaint, phrase_dim)
    g = torch.Generator().manual_seed(seed)
    parts = {}
    for section in ("model", "autoencoder", "text_encoder", "diffusion"):
        parts[section] = instantiate_from_config(config[section])
    with torch.no_grad():
        for section in ("model", "autoencoder", "text_encoder"):
            for name, p in parts[section].named_parameters():
                if p.dim() == 0:  # gates alpha_attn / alpha_dense (0 at init)
                    p.copy_(torch.randn((), generator=g) * 0.5 + 0.5)
                elif not p.any():  # null features, embeddings, zero-initialised convs
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    parts["config"] = config
    return parts


def write_tiny_checkpoint(path: str | os.PathLike, family: str = "text", inpaint: bool = False, seed: int = 0,
                          phrase_dim: int = TINY_PHRASE_DIM) -> str:
    """Write a tiny random GLIGEN checkpoint (official layout: model/autoencoder/text_encoder/diffusion/config_dict)."""
    parts = build_tiny(family, inpaint, seed, phrase_dim)
    ckpt = {k: parts[k].state_dict() for k in ("model", "autoencoder", "diffusion")}
    ckpt["text_encoder"] = official_text_encoder_state(parts["text_encoder"].state_dict())
    ckpt["config_dict"] = make_config_dict(parts["config"])
    save_checkpoint(ckpt, path)
    return os.fspath(path)


def write_tiny_sd_checkpoint(path: str | os.PathLike, family: str = "text", seed: int = 0) -> str:
    """A tiny Stable-Diffusion-style ``.ckpt`` (``state_dict`` with SD prefixes) matching :func:`tiny_config`:
    the UNet holds only the SD weights (no fusers / position_net), as ``sd-v1-4.ckpt`` does."""
    parts = build_tiny(family, False, seed)
    state = {}
    for k, v in parts["model"].state_dict().items():
        if ("transformer_blocks" in k and "fuser" in k) or "position_net" in k or "downsample_net" in k:
            continue
        if k == "input_blocks.0.0.weight":
            v = v[:, :4].clone()
        state["model.diffusion_model." + k] = v
    for k, v in official_text_encoder_state(parts["text_encoder"].state_dict()).items():
        state["cond_stage_model." + k] = v
    for k, v in parts["autoencoder"].state_dict().items():
        state["first_stage_model." + k] = v
    state.update(parts["diffusion"].state_dict())
    save_checkpoint({"state_dict": state}, path)
    return os.fspath(path)


def write_tiny_clip_model(folder: str | os.PathLike, seed: int = 0, phrase_dim: int = TINY_PHRASE_DIM) -> str:
    """A tiny random transformers ``CLIPModel`` (text width 24 = the tiny phrase-feature width) for
    phrase / reference-image features; pass the folder where ``openai/clip-vit-large-patch14`` is expected."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=phrase_dim, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=phrase_dim)
    CLIPModel(cfg).save_pretrained(os.fspath(folder))
    return os.fspath(folder)
