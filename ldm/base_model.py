"""Any Stable Diffusion 1.x model as the frozen base of a GLIGEN checkpoint (``--base_model``).

GLIGEN trains only its own layers on top of a frozen SD v1.4; the same layers can sit on any SD-1.x
fine-tune (same architecture, other weights), as ComfyUI users do. A base is read from

* an original ``.ckpt`` (``state_dict`` with ``model.diffusion_model.*`` / ``first_stage_model.*`` /
  ``cond_stage_model.*``),
* a single-file ``.safetensors`` with the same keys (how community fine-tunes ship),
* a diffusers folder or Hub repo id (``unet/``, ``vae/``, ``text_encoder/``; names mapped by
  :mod:`ldm.diffusers_format`),

and merged: the GLIGEN parameters (the ones training trains: gated fusers, ``position_net``,
``downsample_net``, and the first conv's weight when it was widened, see
:func:`ldm.training.state.is_trainable_name`) come from the GLIGEN checkpoint, every other
UNet / autoencoder / text-encoder tensor from the base. A base whose tensors do not have SD-1.x's
shapes (SD-2's 1024-wide text conditioning, SDXL) is refused with one line naming the first
difference.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ldm.checkpoint import CheckpointError, official_text_encoder_state, read_official_ckpt

PARTS = ("model", "autoencoder", "text_encoder")
_PART_NAMES = {"model": "UNet", "autoencoder": "autoencoder (VAE)", "text_encoder": "text encoder"}


class BaseModelError(CheckpointError):
    """A base model that cannot be read or is not SD-1.x (one line says why)."""


@dataclass
class BaseModel:
    """The three frozen parts of an SD-1.x model under our (official) names, and where they came from."""

    model: dict
    autoencoder: dict
    text_encoder: dict
    source: str

    def part(self, name: str) -> dict:
        return getattr(self, name)

    def first_conv(self) -> dict[str, torch.Tensor]:
        """SD's 4-channel first conv ``{"weight", "bias"}`` (float32), for spatial models' zero-gate steps."""
        return {"weight": self.model["input_blocks.0.0.weight"].float(), "bias": self.model["input_blocks.0.0.bias"].float()}


def is_gligen_param(name: str, widened: bool) -> bool:
    """A UNet tensor that GLIGEN trains (taken from the GLIGEN checkpoint, never from the base)."""
    from ldm.training.state import is_trainable_name

    return is_trainable_name(name, widened)


def read_base(source: str | os.PathLike) -> BaseModel:
    """Read an SD-1.x base (see the module docstring) as :class:`BaseModel`."""
    spec = os.path.expanduser(os.fspath(source))
    if os.path.isfile(spec):
        try:
            parts = read_official_ckpt(spec)
        except CheckpointError as e:
            raise BaseModelError(f"base model {spec}: {e}") from None
        # official_text_encoder_state also renames transformers-3 era files ("transformer.embeddings.*")
        return BaseModel(parts["model"], parts["autoencoder"], official_text_encoder_state(parts["text_encoder"]), spec)
    from ldm import diffusers_format as dfm

    if os.path.isdir(spec):
        if not dfm.is_diffusers_folder(spec):
            raise BaseModelError(f"base model {spec}: a folder without model_index.json or unet/config.json")
        folder = spec
    else:
        from ldm.inference.checkpoints import is_repo_id

        repo, _, revision = spec.partition("@")
        if not is_repo_id(repo):
            raise BaseModelError(f"base model not found: {spec} (neither a file, a diffusers folder nor a Hub repo id)")
        folder = dfm.fetch_diffusers_repo(repo, revision or None, components=("unet", "vae", "text_encoder"))
    return _read_diffusers_base(folder, spec)


def _read_diffusers_base(folder: str, source: str) -> BaseModel:
    from ldm import diffusers_format as dfm

    j = os.path.join
    try:
        up = dfm.sd1_unet_params(dfm._read_json(j(folder, "unet", "config.json")), "base unet/config.json")
        ap = dfm.vae_params_from_diffusers(dfm._read_json(j(folder, "vae", "config.json")), "base vae/config.json")
        tcfg = dfm._read_json(j(folder, "text_encoder", "config.json"))
        unet = dfm.unet_state_from_diffusers(dfm.read_component_weights(j(folder, "unet")), up)
        vae = dfm.vae_state_from_diffusers(dfm.read_component_weights(j(folder, "vae")), ap["ddconfig"])
        text = dfm.text_state_from_diffusers(dfm.read_component_weights(j(folder, "text_encoder")),
                                             tcfg.get("max_position_embeddings", 77))
    except dfm.DiffusersFormatError as e:
        raise BaseModelError(f"base model {source} is not SD-1.x: {e}") from None
    return BaseModel(unet, vae, text, source)


def _shape(t) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_sd1(base: BaseModel, reference: dict, widened: bool) -> None:
    """Every non-GLIGEN tensor of ``reference`` (``{part: state dict}``, the GLIGEN checkpoint's, i.e. SD-1.x
    shapes) must exist in ``base`` with the same shape; else one line naming the first difference."""
    for part in PARTS:
        have = base.part(part)
        # the text-conditioning width first: it names SD-2 (1024) better than the first differing key would
        keys = sorted(reference[part], key=lambda k: "attn2.to_k" not in k)
        for key in keys:
            ref = reference[part][key]
            if part == "model" and is_gligen_param(key, widened):
                continue
            if key.endswith("embeddings.position_ids"):
                continue
            if key not in have:
                raise BaseModelError(f"base model {base.source} is not SD-1.x: its {_PART_NAMES[part]} has no {key}"
                                     f"{_hint(part, have)}")
            if tuple(have[key].shape) != tuple(ref.shape):
                raise BaseModelError(f"base model {base.source} is not SD-1.x: {_PART_NAMES[part]} {key} has shape "
                                     f"{_shape(have[key])}, SD-1.x has {_shape(ref)}{_hint(part, have, key, ref)}")


def _hint(part: str, have: dict, key: str = "", ref=None) -> str:
    if part == "model" and any(k.startswith("label_emb.") for k in have):
        return " (an SDXL UNet)"
    if part == "model" and "attn2.to_k" in key and ref is not None:
        return f" (text-conditioning width {have[key].shape[1]} instead of {ref.shape[1]}: an SD-2.x model?)"
    if part == "text_encoder" and not any("text_model." in k and not k.endswith("position_ids") for k in have):
        return " (not a CLIP ViT-L/14 text encoder: an SD-2.x OpenCLIP model?)"
    if part == "model" and key == "input_blocks.0.0.weight":
        return " (an inpainting or depth base? use a text-to-image SD-1.x base)"
    return ""


def merge_base(ckpt: dict, base: BaseModel) -> dict:
    """A GLIGEN checkpoint dict whose frozen SD tensors are replaced by ``base``'s (cast to the checkpoint's
    dtypes); GLIGEN parameters, ``diffusion`` and ``config_dict`` are kept. Refuses non-SD-1.x bases."""
    in_channels = _latent_channels(ckpt)
    widened = ckpt["model"]["input_blocks.0.0.weight"].shape[1] != in_channels
    check_sd1(base, ckpt, widened)
    out = dict(ckpt)
    for part in PARTS:
        have = base.part(part)
        merged = {}
        for key, ref in ckpt[part].items():
            if (part == "model" and is_gligen_param(key, widened)) or key not in have:
                merged[key] = ref  # GLIGEN layers (and position_ids buffers absent from some files)
            else:
                merged[key] = have[key].to(ref.dtype)
        out[part] = merged
    return out


def _latent_channels(ckpt: dict) -> int:
    from ldm.checkpoint import config_from_checkpoint

    try:
        return int(config_from_checkpoint(ckpt)["model"]["params"].get("in_channels", 4))
    except (CheckpointError, KeyError, TypeError):
        return 4


@torch.no_grad()
def load_base_into(model: torch.nn.Module, autoencoder: torch.nn.Module, text_encoder: torch.nn.Module,
                   source: str | os.PathLike | BaseModel) -> BaseModel:
    """Copy an SD-1.x base's frozen weights into built modules, in place (for training's ``--base_model``,
    in place of ``DATA_ROOT/sd-v1-4.ckpt``). The UNet's GLIGEN parameters are left untouched.
    ``text_encoder``: a ``FrozenCLIPEmbedder`` (its load accepts the official names). Returns the base.
    A trainer that widens the first conv from SD's own can use :func:`sd_checkpoint_parts` instead."""
    base = source if isinstance(source, BaseModel) else read_base(source)
    current = {"model": model.state_dict(), "autoencoder": autoencoder.state_dict(),
               "text_encoder": official_text_encoder_state(text_encoder.state_dict())}
    widened = current["model"]["input_blocks.0.0.weight"].shape[1] != getattr(model, "in_channels", 4)
    check_sd1(base, current, widened)
    for part, module in (("model", model), ("autoencoder", autoencoder), ("text_encoder", text_encoder)):
        have = base.part(part)
        state = {k: have[k] for k in current[part]
                 if k in have and not (part == "model" and is_gligen_param(k, widened))}
        module.load_state_dict(state, strict=False)  # shapes were checked above; GLIGEN keys stay as they are
    return base


def sd_checkpoint_parts(source: str | os.PathLike | BaseModel, diffusion_config: dict | None = None,
                        reference: dict | None = None) -> dict:
    """An SD-1.x base in the layout of :func:`ldm.checkpoint.read_official_ckpt` (``model`` / ``autoencoder`` /
    ``text_encoder`` / ``diffusion``), for code written around ``sd-v1-4.ckpt`` (the trainer)::

        parts = sd_checkpoint_parts(base_model, config["diffusion"]) if base_model else read_official_ckpt(sd_path)

    ``diffusion``: the buffers of ``diffusion_config`` (our ``LatentDiffusion`` node; SD-1.x's schedule by
    default), so every base form gives the same schedule. ``reference`` (``{part: state dict}`` of the built
    modules) is checked first: a non-SD-1.x base raises :class:`BaseModelError` (widened first convs allowed).
    """
    from ldm.util import instantiate_from_config

    base = source if isinstance(source, BaseModel) else read_base(source)
    if reference is not None:
        check_sd1(base, {**reference, "model": {k: v for k, v in reference["model"].items()
                                                 if k != "input_blocks.0.0.weight"}}, widened=False)
    diffusion_config = diffusion_config or {"target": "ldm.models.diffusion.ldm.LatentDiffusion",
                                            "params": {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}}
    return {"model": dict(base.model), "autoencoder": dict(base.autoencoder), "text_encoder": dict(base.text_encoder),
            "diffusion": instantiate_from_config(diffusion_config).state_dict()}
