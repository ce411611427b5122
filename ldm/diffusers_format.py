"""GLIGEN checkpoints <-> diffusers folders: the one name mapping, both directions.

diffusers' GLIGEN pipelines (``StableDiffusionGLIGENPipeline`` for box+text,
``StableDiffusionGLIGENTextImagePipeline`` for box+text+image; deprecated upstream) read a folder::

    model_index.json
    unet/          config.json (UNet2DConditionModel, attention_type "gated" | "gated-text-image")
                   diffusion_pytorch_model.safetensors
    vae/           config.json (AutoencoderKL) + diffusion_pytorch_model.safetensors
    text_encoder/  config.json (CLIPTextModel) + model.safetensors ("text_model.*")
    tokenizer/     CLIPTokenizer files (vocab.json, merges.txt, ...)
    scheduler/     scheduler_config.json (PNDMScheduler: GLIGEN's linear-in-sqrt beta schedule)
    image_project/ box+text+image only: CLIPImageProjection, ``project.weight = P^T`` where
                   P = CLIP's ``text_projection.weight`` (our "reprojected" image feature, see
                   ``ldm.modules.encoders.clip_features``; normalising before or after a linear map
                   gives the same direction, so diffusers' order is equivalent).

Our checkpoints hold the original LDM names (``model``: ``input_blocks.*``, ``middle_block.*``,
``output_blocks.*``; ``autoencoder``: ``encoder.down.*``...; ``text_encoder``:
``transformer.text_model.*``). The mapping is a table of *prefix pairs* built from the architecture
(levels, res blocks, which levels have attention); renaming in either direction picks the longest
matching prefix on its side, so one table serves both ways and a round trip is the identity. The
transformer blocks, gated fusers (``fuser.linear``, ``fuser.attn.to_q``...) and ``position_net``
(``linears``/``linears_text``/``linears_image``, ``null_*_feature``) have the same names in both
layouts. The only value change is the VAE's mid attention: 1x1 convs (C, C, 1, 1) here, linears
(C, C) in diffusers (a reshape, so bit-identical).

JSON configs in a diffusers folder are data: our model config is built from their known fields
(never from class names they contain), and anything our GLIGEN code cannot represent is refused
with one line. Weights are read through :mod:`ldm.checkpoint` (safetensors, or
``torch.load(weights_only=True)`` for ``.bin``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Iterable

from ldm.checkpoint import (CheckpointError, config_from_checkpoint, load_checkpoint_file, make_config_dict,
                            official_text_encoder_state, safe_torch_load)

P = "ldm.modules.diffusionmodules."
DIFFUSERS_VERSION = "0.33.1"  # last release with the GLIGEN pipelines
ATTENTION_TYPE = {"text": "gated", "text_image": "gated-text-image"}
FAMILY_OF_ATTENTION = {v: k for k, v in ATTENTION_TYPE.items()}
PIPELINE_CLASS = {"text": "StableDiffusionGLIGENPipeline", "text_image": "StableDiffusionGLIGENTextImagePipeline"}
POSITION_NET_TARGET = {"text": P + "text_grounding_net.PositionNet", "text_image": P + "text_image_grounding_net.PositionNet"}
TOKENIZER_INPUT_TARGET = {"text": "grounding_input.text_grounding_tokinzer_input.GroundingNetInput",
                          "text_image": "grounding_input.text_image_grounding_tokinzer_input.GroundingNetInput"}
#: sub-folders we read (a Hub snapshot fetches only these)
COMPONENTS = ("unet", "vae", "text_encoder", "scheduler", "image_project")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
                "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin")
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class DiffusersFormatError(CheckpointError):
    """A diffusers folder or GLIGEN checkpoint that cannot be converted (one line says why)."""


# =========================================================================== name tables
Pairs = list  # [(ours_prefix, diffusers_prefix)]

RESNET_PAIRS = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]
VAE_RESNET_PAIRS = [("nin_shortcut.", "conv_shortcut."), ("norm1.", "norm1."), ("conv1.", "conv1."),
                    ("norm2.", "norm2."), ("conv2.", "conv2.")]
VAE_ATTN_PAIRS = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]


def unet_pairs(num_levels: int, num_res_blocks: int, attn_levels: Iterable[int]) -> Pairs:
    """Prefix pairs of the SD-1 UNet: ``input_blocks.k.0.`` <-> ``down_blocks.l.resnets.j.`` and so on."""
    attn = set(attn_levels)
    pairs = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
             ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
             ("middle_block.0.", "mid_block.resnets.0."), ("middle_block.1.", "mid_block.attentions.0."),
             ("middle_block.2.", "mid_block.resnets.1."), ("position_net.", "position_net.")]
    k = 1
    for level in range(num_levels):
        for j in range(num_res_blocks):
            pairs.append((f"input_blocks.{k}.0.", f"down_blocks.{level}.resnets.{j}."))
            if level in attn:
                pairs.append((f"input_blocks.{k}.1.", f"down_blocks.{level}.attentions.{j}."))
            k += 1
        if level != num_levels - 1:
            pairs.append((f"input_blocks.{k}.0.op.", f"down_blocks.{level}.downsamplers.0.conv."))
            k += 1
    k = 0
    for up in range(num_levels):
        level = num_levels - 1 - up
        for j in range(num_res_blocks + 1):
            pairs.append((f"output_blocks.{k}.0.", f"up_blocks.{up}.resnets.{j}."))
            if level in attn:
                pairs.append((f"output_blocks.{k}.1.", f"up_blocks.{up}.attentions.{j}."))
            if level and j == num_res_blocks:
                pairs.append((f"output_blocks.{k}.{2 if level in attn else 1}.conv.", f"up_blocks.{up}.upsamplers.0.conv."))
            k += 1
    return pairs


def vae_pairs(num_levels: int, num_res_blocks: int) -> Pairs:
    """Prefix pairs of the KL autoencoder (LDM ``encoder.down.i.block.j`` <-> ``encoder.down_blocks.i.resnets.j``;
    the decoder's LDM ``up`` levels are numbered from the bottom, diffusers' ``up_blocks`` from the top)."""
    pairs = [("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.conv_in.", f"{part}.conv_in."), (f"{part}.conv_out.", f"{part}.conv_out."),
                  (f"{part}.norm_out.", f"{part}.conv_norm_out."),
                  (f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0."),
                  (f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1."),
                  (f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0.")]
    for i in range(num_levels):
        for j in range(num_res_blocks):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i != num_levels - 1:
            pairs.append((f"encoder.down.{i}.downsample.conv.", f"encoder.down_blocks.{i}.downsamplers.0.conv."))
        for j in range(num_res_blocks + 1):
            pairs.append((f"decoder.up.{i}.block.{j}.", f"decoder.up_blocks.{num_levels - 1 - i}.resnets.{j}."))
        if i != 0:
            pairs.append((f"decoder.up.{i}.upsample.conv.", f"decoder.up_blocks.{num_levels - 1 - i}.upsamplers.0.conv."))
    return pairs


def _rename(state: dict, pairs: Pairs, to_diffusers: bool, what: str, inner: dict | None = None) -> dict:
    """Rename every key by its longest matching prefix (``inner``: {marker: pairs} applied after it)."""
    src, dst = (0, 1) if to_diffusers else (1, 0)
    table = sorted(pairs, key=lambda p: len(p[src]), reverse=True)
    out = {}
    for key, value in state.items():
        pair = next((p for p in table if key.startswith(p[src])), None)
        if pair is None:
            raise DiffusersFormatError(f"{what}: no diffusers counterpart for {key!r} (unsupported architecture)")
        head, rest = pair[dst], key[len(pair[src]):]
        for marker, sub in (inner or {}).items():
            if marker in pair[1]:
                p2 = next((p for p in sub if rest.startswith(p[src])), None)
                if p2 is None:
                    raise DiffusersFormatError(f"{what}: no counterpart for {key!r}")
                rest = p2[dst] + rest[len(p2[src]):]
                break
        out[head + rest] = value
    return out


def unet_state_to_diffusers(state: dict, params: dict) -> dict:
    return _rename(state, _unet_pairs_for(params), True, "unet", {".resnets.": RESNET_PAIRS})


def unet_state_from_diffusers(state: dict, params: dict) -> dict:
    return _rename(state, _unet_pairs_for(params), False, "unet", {".resnets.": RESNET_PAIRS})


def _unet_pairs_for(params: dict) -> Pairs:
    levels = len(params["channel_mult"])
    attn = [lv for lv in range(levels) if 2 ** lv in params["attention_resolutions"]]
    return unet_pairs(levels, params["num_res_blocks"], attn)


def vae_state_to_diffusers(state: dict, ddconfig: dict) -> dict:
    out = _rename(state, vae_pairs(len(ddconfig["ch_mult"]), ddconfig["num_res_blocks"]), True, "vae",
                  {".resnets.": VAE_RESNET_PAIRS, ".attentions.": VAE_ATTN_PAIRS})
    return {k: (v.reshape(v.shape[:2]) if ".attentions." in k and k.endswith("weight") and v.dim() == 4 else v)
            for k, v in out.items()}


#: attention names of VAEs saved by diffusers < 0.15 (some Hub repos still ship them)
_OLD_VAE_ATTN = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def vae_state_from_diffusers(state: dict, ddconfig: dict) -> dict:
    def modern(k):
        for old, new in _OLD_VAE_ATTN.items():
            if ".attentions." in k and old in k:
                return k.replace(old, new)
        return k

    state = {modern(k): v for k, v in state.items()}
    out = _rename(state, vae_pairs(len(ddconfig["ch_mult"]), ddconfig["num_res_blocks"]), False, "vae",
                  {".resnets.": VAE_RESNET_PAIRS, ".attentions.": VAE_ATTN_PAIRS})
    return {k: (v.reshape(*v.shape, 1, 1) if ".attn_1." in k and not k.endswith(("norm.weight", "norm.bias"))
                and k.endswith("weight") and v.dim() == 2 else v) for k, v in out.items()}


def text_state_to_diffusers(state: dict) -> dict:
    """Our text encoder (official ``transformer.text_model.*`` or transformers-5 ``transformer.*``) ->
    ``CLIPTextModel`` file names (``text_model.*``, without the ``position_ids`` buffer)."""
    official = official_text_encoder_state(state)
    return {k[len("transformer."):]: v for k, v in official.items() if not k.endswith("embeddings.position_ids")}


def text_state_from_diffusers(state: dict, max_length: int = 77) -> dict:
    """``CLIPTextModel`` names (``text_model.*``, or bare transformers-5 names) -> the official names."""
    out = {}
    for k, v in state.items():
        if k.endswith("embeddings.position_ids"):
            continue
        out["transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    return official_text_encoder_state(out, max_length)


# =========================================================================== configs
def _params(config: dict, section: str) -> dict:
    return dict((config.get(section) or {}).get("params") or {})


def family_of(config: dict, model_state: dict | None = None) -> tuple[str, bool]:
    """(family, inpaint) of a GLIGEN checkpoint."""
    from ldm.inference.modes import detect_mode

    mode = detect_mode(config, model_state)
    return mode.family, mode.inpaint


def unet_config(params: dict, family: str, in_conv_channels: int) -> dict:
    """diffusers ``UNet2DConditionModel`` config for our ``UNetModel`` params."""
    tok = (params.get("grounding_tokenizer") or {}).get("params") or {}
    ctx = params["context_dim"]
    if params.get("fuser_type", "gatedSA") != "gatedSA":
        raise DiffusersFormatError(f"diffusers' GLIGEN UNet has only gated self-attention (gatedSA), "
                                   f"this checkpoint uses {params.get('fuser_type')}")
    if tok.get("in_dim", ctx) != ctx or tok.get("out_dim", ctx) != ctx:
        raise DiffusersFormatError(f"diffusers' GLIGEN position net needs phrase-feature width = token width = "
                                   f"cross_attention_dim ({ctx}); this checkpoint has in_dim {tok.get('in_dim')}, "
                                   f"out_dim {tok.get('out_dim')}")
    mult, mc = params["channel_mult"], params["model_channels"]
    attn = [2 ** lv in params["attention_resolutions"] for lv in range(len(mult))]
    return {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": params["image_size"], "in_channels": in_conv_channels, "out_channels": params["out_channels"],
        "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]],
        "only_cross_attention": False, "block_out_channels": [mc * m for m in mult],
        "layers_per_block": params["num_res_blocks"], "downsample_padding": 1, "mid_block_scale_factor": 1,
        "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": ctx,
        "transformer_layers_per_block": params.get("transformer_depth", 1),
        "attention_head_dim": params["num_heads"], "use_linear_projection": False,
        "upcast_attention": False, "attention_type": ATTENTION_TYPE[family],
    }


def unet_params_from_diffusers(cfg: dict) -> tuple[dict, str, bool]:
    """Our ``UNetModel`` params (+ family, inpaint) from a diffusers UNet config's known fields."""
    family = FAMILY_OF_ATTENTION.get(cfg.get("attention_type"))
    if family is None:
        raise DiffusersFormatError(f"unet/config.json: attention_type {cfg.get('attention_type')!r} is not a GLIGEN "
                                   f"UNet (expected 'gated' or 'gated-text-image')")
    params = sd1_unet_params(cfg, "unet/config.json")
    ctx = params["context_dim"]
    params.update(fuser_type="gatedSA", grounding_tokenizer={"target": POSITION_NET_TARGET[family],
                                                             "params": {"in_dim": ctx, "out_dim": ctx}})
    return params, family, params["inpaint_mode"]


def sd1_unet_params(cfg: dict, what: str) -> dict:
    """The SD-1 UNet fields of a diffusers UNet config as our params (no grounding keys)."""
    def need(cond, msg):
        if not cond:
            raise DiffusersFormatError(f"{what}: {msg}")

    blocks = list(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    downs = list(cfg.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]))
    ups = list(cfg.get("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3))
    need(len(downs) == len(blocks) == len(ups), "block lists of different lengths")
    need(all(t in ("CrossAttnDownBlock2D", "DownBlock2D") for t in downs), f"unsupported down blocks {downs}")
    attn = [t == "CrossAttnDownBlock2D" for t in downs]
    need([("CrossAttnUpBlock2D" if a else "UpBlock2D") for a in attn[::-1]] == ups, f"unsupported up blocks {ups}")
    need(cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn", "unsupported mid block")
    need(all(b % blocks[0] == 0 for b in blocks), f"block_out_channels {blocks} not multiples of the first")
    for key, want in (("use_linear_projection", False), ("flip_sin_to_cos", True), ("freq_shift", 0),
                      ("act_fn", "silu"), ("norm_num_groups", 32), ("center_input_sample", False),
                      ("class_embed_type", None), ("addition_embed_type", None), ("encoder_hid_dim", None),
                      ("time_embedding_type", "positional"), ("only_cross_attention", False)):
        need(cfg.get(key, want) == want, f"{key}={cfg.get(key)!r} is not SD-1.x's ({want!r})")
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    depth = cfg.get("transformer_layers_per_block", 1)
    need(isinstance(heads, int), f"per-block attention heads {heads} (SD-2 style) are not SD-1.x's single count")
    need(isinstance(depth, int), f"per-block transformer depth {depth} is not supported")
    ctx = cfg.get("cross_attention_dim", 1280)
    need(isinstance(ctx, int), f"cross_attention_dim {ctx} must be one number")
    out_c = cfg.get("out_channels", 4)
    in_c = cfg.get("in_channels", 4)
    need(in_c in (out_c, 2 * out_c + 1), f"in_channels {in_c} is neither {out_c} nor {2 * out_c + 1} (inpainting)")
    return dict(image_size=cfg.get("sample_size", 64), in_channels=out_c, out_channels=out_c,
                model_channels=blocks[0], attention_resolutions=[2 ** lv for lv, a in enumerate(attn) if a],
                num_res_blocks=cfg.get("layers_per_block", 2), channel_mult=[b // blocks[0] for b in blocks],
                num_heads=heads, transformer_depth=depth, context_dim=ctx, use_checkpoint=True,
                inpaint_mode=in_c != out_c)


def vae_config(params: dict) -> dict:
    dd = params["ddconfig"]
    if dd.get("attn_resolutions"):
        raise DiffusersFormatError(f"autoencoder with attention at resolutions {dd['attn_resolutions']} has no "
                                   "diffusers AutoencoderKL equivalent")
    if params.get("embed_dim", dd["z_channels"]) != dd["z_channels"]:
        raise DiffusersFormatError("autoencoder embed_dim != z_channels has no diffusers AutoencoderKL equivalent")
    n = len(dd["ch_mult"])
    return {"_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION,
            "in_channels": dd["in_channels"], "out_channels": dd["out_ch"],
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]], "layers_per_block": dd["num_res_blocks"],
            "act_fn": "silu", "latent_channels": dd["z_channels"], "norm_num_groups": 32,
            "sample_size": dd["resolution"], "scaling_factor": params.get("scale_factor", 0.18215)}


def vae_params_from_diffusers(cfg: dict, what: str = "vae/config.json") -> dict:
    blocks = list(cfg.get("block_out_channels", (64,)))
    n = len(blocks)
    if any(b % blocks[0] for b in blocks) or cfg.get("norm_num_groups", 32) != 32 or \
            list(cfg.get("down_block_types", ["DownEncoderBlock2D"] * n)) != ["DownEncoderBlock2D"] * n:
        raise DiffusersFormatError(f"{what}: not an SD-1.x-style AutoencoderKL")
    z = cfg.get("latent_channels", 4)
    return {"scale_factor": cfg.get("scaling_factor", 0.18215), "embed_dim": z,
            "ddconfig": {"double_z": True, "z_channels": z, "resolution": cfg.get("sample_size", 256),
                         "in_channels": cfg.get("in_channels", 3), "out_ch": cfg.get("out_channels", 3),
                         "ch": blocks[0], "ch_mult": [b // blocks[0] for b in blocks],
                         "num_res_blocks": cfg.get("layers_per_block", 2), "attn_resolutions": [], "dropout": 0.0}}


TEXT_CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                      "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
                      "bos_token_id", "eos_token_id", "pad_token_id")


def text_config_of(params: dict) -> dict:
    """The CLIPTextConfig fields of our FrozenCLIPEmbedder params (ViT-L/14's when not overridden)."""
    from ldm.modules.encoders.modules import _CLIP_L14_TEXT_CONFIG, OPENAI_CLIP_L14

    if params.get("text_config"):
        return {**_CLIP_L14_TEXT_CONFIG, **params["text_config"]}
    version = params.get("version", OPENAI_CLIP_L14)
    if version != OPENAI_CLIP_L14:
        from transformers import CLIPTextConfig

        cfg = CLIPTextConfig.from_pretrained(version).to_dict()
        return {k: cfg[k] for k in TEXT_CONFIG_FIELDS if k in cfg}
    return dict(_CLIP_L14_TEXT_CONFIG)


def text_params_from_diffusers(cfg: dict) -> dict:
    from ldm.modules.encoders.modules import _CLIP_L14_TEXT_CONFIG

    fields = {k: cfg[k] for k in TEXT_CONFIG_FIELDS if k in cfg}
    if cfg.get("model_type", "clip_text_model") != "clip_text_model":
        raise DiffusersFormatError(f"text_encoder/config.json: model_type {cfg.get('model_type')!r} is not "
                                   "a CLIP text model (SD-1.x uses CLIP ViT-L/14's)")
    if all(fields.get(k, v) == v for k, v in _CLIP_L14_TEXT_CONFIG.items() if k not in ("bos_token_id",
                                                                                       "eos_token_id", "pad_token_id")):
        return {}  # the built-in ViT-L/14 text tower
    return {"text_config": {**_CLIP_L14_TEXT_CONFIG, **fields}}


def scheduler_config(diffusion_params: dict) -> dict:
    return {"_class_name": "PNDMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
            "beta_start": diffusion_params.get("linear_start", 0.00085),
            "beta_end": diffusion_params.get("linear_end", 0.012), "beta_schedule": "scaled_linear",
            "num_train_timesteps": diffusion_params.get("timesteps", 1000), "trained_betas": None,
            "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False,
            "prediction_type": "epsilon"}


def diffusion_params_from_diffusers(cfg: dict) -> dict:
    if cfg.get("beta_schedule", "scaled_linear") != "scaled_linear" or cfg.get("trained_betas") or \
            cfg.get("prediction_type", "epsilon") != "epsilon":
        raise DiffusersFormatError("scheduler/scheduler_config.json: GLIGEN needs SD-1.x's epsilon-prediction "
                                   "'scaled_linear' schedule")
    return {"linear_start": cfg.get("beta_start", 0.00085), "linear_end": cfg.get("beta_end", 0.012),
            "timesteps": cfg.get("num_train_timesteps", 1000)}


# =========================================================================== file I/O
def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DiffusersFormatError(f"missing {path}") from None
    except (OSError, ValueError) as e:
        raise DiffusersFormatError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise DiffusersFormatError(f"{path}: expected a JSON object")
    return data


def _write_json(path: str, data: dict):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def read_component_weights(folder: str) -> dict:
    """The state dict in a diffusers component folder (safetensors, sharded safetensors, or ``.bin``)."""
    from safetensors.torch import load_file

    for index_name in ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"):
        index = os.path.join(folder, index_name)
        if os.path.isfile(index):
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            out = {}
            for shard in shards:
                out.update(load_file(os.path.join(folder, os.path.basename(shard))))
            return out
    for name in WEIGHT_NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            if name.endswith(".safetensors"):
                try:
                    return load_file(path)
                except Exception as e:  # SafetensorError, OSError
                    raise DiffusersFormatError(f"cannot read {path} (truncated or corrupted?): {e}") from None
            obj = safe_torch_load(path)
            if not isinstance(obj, dict):
                raise DiffusersFormatError(f"{path}: expected a state dict")
            return obj
    raise DiffusersFormatError(f"no weights in {folder} (expected one of {', '.join(WEIGHT_NAMES[:4])})")


def _save_tensors(state: dict, path: str):
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, path, metadata={"format": "pt"})


def is_diffusers_folder(path: str) -> bool:
    """A folder with ``model_index.json`` or ``unet/config.json``."""
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "model_index.json")) or
                                    os.path.isfile(os.path.join(path, "unet", "config.json")))


def fetch_diffusers_repo(repo_id: str, revision: str | None = None, components: Iterable[str] = COMPONENTS) -> str:
    """Download the needed parts of a diffusers repo (``huggingface_hub.snapshot_download``; its cache,
    ``HF_HUB_OFFLINE`` honoured) and return the local folder. safetensors are preferred; ``.bin`` files are
    fetched only for components without them. Safety checker, image encoder etc. are never downloaded."""
    import huggingface_hub

    comps = list(components)
    json_pat = ["model_index.json"] + [f"{c}/*.json" for c in comps]
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=json_pat + [f"{c}/*.safetensors" for c in comps],
            ignore_patterns=["*.fp16.*", "*non_ema*"])
        missing = [c for c in comps if os.path.isdir(os.path.join(folder, c)) and
                   os.path.isfile(os.path.join(folder, c, "config.json")) and
                   not any(f.endswith(".safetensors") for f in os.listdir(os.path.join(folder, c)))]
        if missing:
            folder = huggingface_hub.snapshot_download(
                repo_id, revision=revision, allow_patterns=json_pat + [f"{c}/*.bin" for c in missing],
                ignore_patterns=["*.fp16.*", "*non_ema*"])
    except Exception as e:  # offline and not cached, repository not found, HTTP errors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DiffusersFormatError(f"cannot fetch the diffusers repo {repo_id} from the Hub: {msg}") from None
    return folder


def resolve_diffusers_source(spec: str) -> str:
    """A local diffusers folder for ``spec``: a folder, or a Hub repo id (``owner/name[@revision]``)."""
    spec = os.path.expanduser(os.fspath(spec))
    if os.path.isdir(spec):
        if not is_diffusers_folder(spec):
            raise DiffusersFormatError(f"{spec} is not a diffusers folder (no model_index.json or unet/config.json)")
        return spec
    from ldm.inference.checkpoints import is_repo_id

    repo, _, revision = spec.partition("@")
    if not is_repo_id(repo):
        raise DiffusersFormatError(f"{spec}: neither a diffusers folder nor a Hub repo id")
    return fetch_diffusers_repo(repo, revision or None)


# =========================================================================== ours -> diffusers
def to_diffusers(ckpt: dict | str | os.PathLike, out_dir: str | os.PathLike, clip: str | None = None) -> str:
    """Write a GLIGEN checkpoint (dict or file) as a diffusers folder (see the module docstring).

    ``clip``: CLIP model (folder or Hub id) whose ``text_projection`` becomes ``image_project`` for
    box+text+image checkpoints (default ``openai/clip-vit-large-patch14``, the one GLIGEN used).
    The folder is assembled in a temporary sibling and renamed into place (no partial output);
    ``out_dir`` must not exist or be empty.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise DiffusersFormatError(f"{out_dir} exists and is not empty; choose a new folder")
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint_file(ckpt)
    parts = diffusers_parts(ckpt, clip)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_" + os.path.basename(out_dir), dir=parent)
    try:
        _write_json(os.path.join(tmp, "model_index.json"), parts["model_index"])
        for comp, (cfg_name, cfg, weights_name, state) in parts["components"].items():
            os.makedirs(os.path.join(tmp, comp))
            _write_json(os.path.join(tmp, comp, cfg_name), cfg)
            if state is not None:
                _save_tensors(state, os.path.join(tmp, comp, weights_name))
        write_tokenizer(os.path.join(tmp, "tokenizer"))
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_tokenizer(folder: str):
    """CLIP's tokenizer files: ``vocab.json`` + ``merges.txt`` (what the slow ``CLIPTokenizer`` of any
    transformers version reads) and the fast tokenizer's files, all built offline from CLIP's BPE."""
    from ldm.modules.encoders.clip_tokenizer import build_clip_tokenizer, clip_vocab_and_merges

    build_clip_tokenizer().save_pretrained(folder)
    vocab, merges = clip_vocab_and_merges()
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    _write_json(os.path.join(folder, "special_tokens_map.json"),
                {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                 "unk_token": "<|endoftext|>"})


def diffusers_parts(ckpt: dict, clip: str | None = None) -> dict:
    """In-memory diffusers layout: ``{"model_index": {...}, "components": {name: (config file, config,
    weights file, state dict)}}`` (tokenizer excluded)."""
    for section in ("model", "autoencoder", "text_encoder"):
        if section not in ckpt:
            raise DiffusersFormatError(f"checkpoint lacks '{section}'; convert a complete GLIGEN checkpoint "
                                       "(or one written with --keep_all)")
    if "config_dict" in ckpt:
        config = config_from_checkpoint(ckpt)
    else:
        from ldm.inference.pipeline import fallback_config

        config = fallback_config(ckpt["model"])
    family, inpaint = family_of(config, ckpt["model"])
    if family not in ATTENTION_TYPE:
        raise DiffusersFormatError(f"diffusers has GLIGEN pipelines for box+text and box+text+image only; "
                                   f"this is a {family} checkpoint")
    mp = _params(config, "model")
    in_conv = ckpt["model"]["input_blocks.0.0.weight"].shape[1]
    unet_cfg = unet_config(mp, family, in_conv)
    ap = _params(config, "autoencoder")
    tp = _params(config, "text_encoder")
    text_cfg = {**text_config_of(tp), "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
                "torch_dtype": "float32"}
    comps = {
        "unet": ("config.json", unet_cfg, "diffusion_pytorch_model.safetensors",
                 unet_state_to_diffusers(ckpt["model"], mp)),
        "vae": ("config.json", vae_config(ap), "diffusion_pytorch_model.safetensors",
                vae_state_to_diffusers(ckpt["autoencoder"], ap["ddconfig"])),
        "text_encoder": ("config.json", text_cfg, "model.safetensors", text_state_to_diffusers(ckpt["text_encoder"])),
        "scheduler": ("scheduler_config.json", scheduler_config(_params(config, "diffusion")), None, None),
    }
    index = {"_class_name": PIPELINE_CLASS[family], "_diffusers_version": DIFFUSERS_VERSION,
             "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    if family == "text_image":
        from ldm.modules.encoders.clip_features import load_text_projection

        proj = load_text_projection(clip or DEFAULT_CLIP)  # (D_proj, D_text)
        if proj.shape[0] != proj.shape[1] or proj.shape[1] != mp["context_dim"]:
            raise DiffusersFormatError(f"CLIP text projection {tuple(proj.shape)} cannot be diffusers' square "
                                       f"image_project of width {mp['context_dim']}; pass the CLIP the model used")
        comps["image_project"] = ("config.json", {"_class_name": "CLIPImageProjection",
                                                  "_diffusers_version": DIFFUSERS_VERSION,
                                                  "hidden_size": int(proj.shape[0])},
                                  "diffusion_pytorch_model.safetensors", {"project.weight": proj.t().contiguous()})
        # the vision tower is CLIP ViT-L/14's: pass image_encoder= / processor= when loading the pipeline
        index.update(image_project=["stable_diffusion", "CLIPImageProjection"], image_encoder=[None, None],
                     processor=[None, None])
    return {"model_index": index, "components": comps, "family": family, "inpaint": inpaint}


# =========================================================================== diffusers -> ours
def from_diffusers(source: str) -> dict:
    """A GLIGEN checkpoint dict (official layout: model / autoencoder / text_encoder / diffusion /
    config_dict) from a diffusers folder or Hub repo id."""
    folder = resolve_diffusers_source(source)
    unet_cfg = _read_json(os.path.join(folder, "unet", "config.json"))
    mp, family, inpaint = unet_params_from_diffusers(unet_cfg)
    ap = vae_params_from_diffusers(_read_json(os.path.join(folder, "vae", "config.json")))
    tp = text_params_from_diffusers(_read_json(os.path.join(folder, "text_encoder", "config.json")))
    sched = os.path.join(folder, "scheduler", "scheduler_config.json")
    dp = diffusion_params_from_diffusers(_read_json(sched) if os.path.isfile(sched) else {})
    config = {
        "diffusion": {"target": "ldm.models.diffusion.ldm.LatentDiffusion", "params": dp},
        "model": {"target": P + "openaimodel.UNetModel", "params": mp},
        "autoencoder": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": ap},
        "text_encoder": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder", "params": tp},
        "grounding_tokenizer_input": {"target": TOKENIZER_INPUT_TARGET[family]},
        "inpaint_mode": inpaint,
    }
    from ldm.util import instantiate_from_config

    max_len = (tp.get("text_config") or {}).get("max_position_embeddings", 77)
    return {
        "model": unet_state_from_diffusers(read_component_weights(os.path.join(folder, "unet")), mp),
        "autoencoder": vae_state_from_diffusers(read_component_weights(os.path.join(folder, "vae")), ap["ddconfig"]),
        "text_encoder": text_state_from_diffusers(read_component_weights(os.path.join(folder, "text_encoder")), max_len),
        "diffusion": instantiate_from_config(config["diffusion"]).state_dict(),
        "config_dict": make_config_dict(config),
    }


# =========================================================================== CLI (convert_ckpt.py)
def convert_cli(parser, args) -> int:
    """``convert_ckpt.py --to_diffusers OUT_DIR --ckpt_path CKPT`` /
    ``--from_diffusers DIR_OR_REPO --new_ckpt_path OUT``; ``error: <one line>`` and status 1 on failure."""
    from ldm.checkpoint import save_checkpoint
    from ldm.cli import guard

    if args.to_diffusers and args.from_diffusers:
        parser.error("--to_diffusers and --from_diffusers are exclusive")
    if args.to_diffusers and not args.ckpt_path:
        parser.error("--to_diffusers needs --ckpt_path")
    if args.from_diffusers and not args.new_ckpt_path:
        parser.error("--from_diffusers needs --new_ckpt_path")
    with guard((CheckpointError, KeyError, ValueError, OSError), status=1) as g:
        if args.to_diffusers:
            out = to_diffusers(args.ckpt_path, args.to_diffusers, clip=args.clip)
            print(f"wrote diffusers folder {out}")
        else:
            ckpt = from_diffusers(args.from_diffusers)
            save_checkpoint(ckpt, args.new_ckpt_path)
            print(f"wrote {args.new_ckpt_path}")
    return g.status
