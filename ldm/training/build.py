"""Everything a run needs before its first step: models with their pretrained weights, the
optimizer over exactly the original's trainable parameters, the learning-rate schedule, EMA and
the state of a resumed run.

Weights, in this order (later wins): Stable Diffusion v1.4 (``DATA_ROOT/official_ckpt_name``, or
any SD-1.x model given as ``--base_model`` / the YAML key ``base_model``; ``strict=False`` with the
first conv widened for extra input channels), ``--ckpt`` (strict), the
auto-resume checkpoint (strict). The EMA copy is made after all of them.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ldm.checkpoint import CheckpointError, read_official_ckpt
from ldm.util import instantiate_from_config

from .state import disable_grads, is_trainable_name, load_strict, select_trainable_parameters

__all__ = ["Models", "build_models", "TrainState", "build_train_state", "make_scheduler", "make_ema", "update_ema",
           "count_params"]


@dataclass
class Models:
    """The modules of a GLIGEN model and what the loss needs to know about the run.

    ``unet`` maps ``dict(x (B,C,h,w), timesteps (B,), context (B,77,D), grounding_input, ...)`` to the
    predicted noise (B,4,h,w); the other three are frozen."""

    unet: torch.nn.Module
    autoencoder: torch.nn.Module
    text_encoder: torch.nn.Module
    diffusion: torch.nn.Module
    grounding_tokenizer_input: Any
    grounding_downsampler_input: Any = None
    inpaint_mode: bool = False
    randomize_fg_mask: bool = False
    random_add_bg_mask: bool = False
    input_conv_train: bool = False  # the first conv's weight trains (extra input channels)

    def __post_init__(self):
        self.unet.grounding_tokenizer_input = self.grounding_tokenizer_input  # null inputs come from it


def _instantiate(config, section: str, yaml_file: str):
    try:
        return instantiate_from_config(config[section])
    except TypeError as e:  # wrong params for the class
        raise ValueError(f"{yaml_file}: section '{section}': {e}") from e


def build_models(config, frozen_fallback: dict | None = None, log=print) -> Models:
    """Instantiate the YAML's sections and load the pretrained weights (not the resume weights).

    ``frozen_fallback``: a GLIGEN checkpoint (the resume one) whose ``autoencoder`` /
    ``text_encoder`` / ``diffusion`` are used when the SD checkpoint is absent."""
    yaml_file = config.get("yaml_file", "the config")
    sections = {s: _instantiate(config, s, yaml_file) for s in ("model", "autoencoder", "text_encoder", "diffusion",
                                                                "grounding_tokenizer_input")}
    downsampler_input = (_instantiate(config, "grounding_downsampler_input", yaml_file)
                         if "grounding_downsampler_input" in config else None)
    unet = sections["model"]
    inpaint = bool(config.get("inpaint_mode", False))
    extra_channels = int(unet.additional_channel_from_downsampler) + (unet.in_channels + 1 if inpaint else 0)
    models = Models(unet, sections["autoencoder"], sections["text_encoder"], sections["diffusion"],
                    sections["grounding_tokenizer_input"], downsampler_input, inpaint_mode=inpaint,
                    randomize_fg_mask=bool(config.get("randomize_fg_mask", False)),
                    random_add_bg_mask=bool(config.get("random_add_bg_mask", False)),
                    input_conv_train=extra_channels > 0)
    original_names = _load_pretrained(models, config, extra_channels, frozen_fallback, log)
    trainable, frozen = select_trainable_parameters(unet, models.input_conv_train, original_names)
    for _, p in frozen:
        p.requires_grad_(False)
    for _, p in trainable:
        p.requires_grad_(True)
    for m in (models.autoencoder, models.text_encoder):
        m.eval()
        disable_grads(m)
    return models


def _read_base(models: Models, config, base_model: str) -> dict:
    """``--base_model`` (any SD-1.x model) in the layout of ``read_official_ckpt``; a base that is not
    SD-1.x is refused with one line naming the first difference."""
    from ldm.base_model import sd_checkpoint_parts
    from ldm.checkpoint import official_text_encoder_state
    from ldm.util import to_plain

    reference = {"model": models.unet.state_dict(), "autoencoder": models.autoencoder.state_dict(),
                 "text_encoder": official_text_encoder_state(models.text_encoder.state_dict())}
    return sd_checkpoint_parts(base_model, to_plain(config["diffusion"]), reference=reference)


def _load_pretrained(models: Models, config, extra_channels: int, fallback: dict | None, log) -> list | None:
    """SD v1.4 into the UNet (strict=False) and the frozen parts, then ``--ckpt``. Returns the SD UNet
    names (every frozen UNet parameter must be one), or None when SD came from ``fallback``."""
    from convert_ckpt import add_additional_channels
    from ldm.checkpoint import load_checkpoint_file

    ckpt_path = config.get("ckpt")
    extra = load_checkpoint_file(ckpt_path) if ckpt_path else None
    unet = models.unet
    base_model = config.get("base_model")
    sd_path = base_model or os.path.join(config.DATA_ROOT, config.official_ckpt_name)
    original_names = None
    if base_model or os.path.isfile(sd_path):
        sd = _read_base(models, config, base_model) if base_model else read_official_ckpt(sd_path)
        sd_unet = sd["model"]
        if extra_channels and sd_unet["input_blocks.0.0.weight"].shape[1] == unet.in_channels:
            add_additional_channels(sd_unet, extra_channels)
        missing, unexpected = unet.load_state_dict(sd_unet, strict=False)
        if unexpected:
            raise CheckpointError(f"{sd_path}: {len(unexpected)} unexpected UNet keys, e.g. {unexpected[:3]} "
                                  "(is it a Stable Diffusion v1 checkpoint matching the model config?)")
        params = dict(unet.named_parameters())
        lacking = [k for k in missing if k in params and not is_trainable_name(k, False)]
        if lacking:
            raise CheckpointError(f"{sd_path}: lacks {len(lacking)} SD UNet weights, e.g. {lacking[:3]}")
        original_names = list(sd_unet)
        frozen_source = sd
    else:
        frozen_source = next((c for c in (fallback, extra) if c is not None
                              and all(k in c for k in ("text_encoder", "autoencoder", "diffusion"))), None)
        if frozen_source is None:
            raise FileNotFoundError(f"Stable Diffusion checkpoint not found: {sd_path} "
                                    "(set --DATA_ROOT / --official_ckpt_name)")
        log(f"{sd_path} not found: taking the frozen parts from the GLIGEN checkpoint")
    for name in ("autoencoder", "text_encoder", "diffusion"):
        load_strict(getattr(models, name), frozen_source[name], name)
    if extra is not None:
        if "model" not in extra:
            raise CheckpointError(f"--ckpt {ckpt_path}: no 'model' entry")
        hint = ""
        w = extra["model"].get("input_blocks.0.0.weight")
        conv_in = unet.input_blocks[0][0].in_channels
        if w is not None and w.shape[1] != conv_in:
            hint = (f" (its first conv takes {w.shape[1]} channels, the model {conv_in}"
                    + ("; convert it with convert_ckpt.py first" if models.inpaint_mode else "") + ")")
        load_strict(unet, extra["model"], f"--ckpt {ckpt_path}", hint)
    return original_names


# ---------------------------------------------------------------------------------- optimizer
def count_params(params) -> int:
    total = sum(p.numel() for p in params)
    print("total_trainable_params_count is: ", total, flush=True)
    return total


def make_scheduler(opt: torch.optim.Optimizer, kind: str, warmup_steps: int, total_iters: int):
    """``transformers``' linear warm-up from lr 0, then constant or cosine (to 0 at ``total_iters``)."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if kind == "cosine":
        return get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup_steps, num_training_steps=total_iters)
    if kind == "constant":
        return get_constant_schedule_with_warmup(opt, num_warmup_steps=warmup_steps)
    raise ValueError(f"scheduler_type must be 'cosine' or 'constant', got {kind!r}")


def make_ema(model: torch.nn.Module, trainable_names: list[str]):
    """``(ema, ema_params)``: a frozen eval-mode copy of ``model`` and its parameters named
    ``trainable_names`` (the only ones :func:`update_ema` moves; the frozen ones are constant)."""
    ema = copy.deepcopy(model).eval()
    disable_grads(ema)
    named = dict(ema.named_parameters())
    return ema, [named[n] for n in trainable_names]


@torch.no_grad()
def update_ema(target_params, source_params, rate: float = 0.99) -> None:
    """``target <- rate * target + (1 - rate) * source`` in place (no bias correction)."""
    for targ, src in zip(target_params, source_params):
        targ.detach().mul_(rate).add_(src.detach(), alpha=1 - rate)


@dataclass
class TrainState:
    """What the loop updates besides the UNet: optimizer, schedule, EMA and the step counter."""

    opt: torch.optim.Optimizer
    scheduler: Any
    trainable_names: list
    ema: torch.nn.Module | None = None
    ema_params: list | None = None
    iters: int = 0  # optimizer steps done

    @property
    def params(self) -> list:
        return [p for g in self.opt.param_groups for p in g["params"]]


def build_train_state(models: Models, cfg, resume: dict | None = None, verbose: bool = True) -> TrainState:
    """AdamW (fused) over the trainable parameters, the schedule, the resume weights, then EMA.

    ``cfg`` provides ``base_learning_rate``, ``weight_decay``, ``scheduler_type``, ``warmup_steps``,
    ``total_iters``, ``enable_ema``. The EMA starts from the weights after the resume load (or from
    the checkpoint's ``ema`` when it has one)."""
    named = [(n, p) for n, p in models.unet.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    # fused: one kernel for the whole update (same AdamW rule; ~4x faster step on CPU, bench/RESULTS.md)
    opt = torch.optim.AdamW(params, lr=cfg.base_learning_rate, weight_decay=cfg.weight_decay, fused=True)
    if verbose:
        count_params(params)
    scheduler = make_scheduler(opt, cfg.scheduler_type, cfg.warmup_steps, cfg.total_iters)
    state = TrainState(opt, scheduler, names)
    if resume is not None:
        load_strict(models.unet, resume["model"], "resume checkpoint")
        opt.load_state_dict(resume["opt"])
        scheduler.load_state_dict(resume["scheduler"])
        state.iters = int(resume["iters"])
    if cfg.enable_ema:
        state.ema, state.ema_params = make_ema(models.unet, names)
        if resume is not None and "ema" in resume:
            load_strict(state.ema, resume["ema"], "resume checkpoint (ema)")
        elif resume is not None:
            warnings.warn("the resume checkpoint has no 'ema': EMA starts from its weights")
    return state
