"""Widen a GLIGEN checkpoint's first UNet conv for inpainting.

The generation model's ``input_blocks.0.0.weight`` takes the 4 latent channels. Inpainting
training feeds ``[noisy latent (4) | masked latent (4) | mask (1)]`` = 9 channels, so the weight
becomes ``(C_out, 9, 3, 3)`` with the old weight in channels 0..3 and zeros elsewhere: the
widened model computes exactly what the 4-channel model did until training moves the new
channels. The bias is untouched.

Usage::

    python convert_ckpt.py --ckpt_path gligen_text_box.pth --new_ckpt_path inpaint_init.pth
    python main.py --yaml_file configs/flickr_text.yaml --inpaint_mode True --ckpt inpaint_init.pth ...

Nothing is lost: the output keeps every part of the source (``text_encoder`` / ``autoencoder`` /
``diffusion``, an ``ema`` copy widened like the model) and its ``config_dict`` with
``inpaint_mode: True``, so ``gligen_inference.py`` can load it directly; only optimizer / scheduler
state, which describes the 4-channel weights, is left out. ``--model_only`` writes just
``{"model": ...}`` (plus ``config_dict``) as the original did. The output may not be the input
(also through a symlink, a hard link or a relative path) and is written atomically.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

FIRST_CONV = "input_blocks.0.0.weight"
INPAINT_EXTRA_CHANNELS = 5  # masked latent (4) + mask (1)

__all__ = ["add_additional_channels", "convert_to_inpainting", "main"]


def add_additional_channels(state_dict: dict, num_of_additional_channels: int) -> dict:
    """Append ``n`` zero input channels to ``input_blocks.0.0.weight``, in place.

    ``state_dict``: a bare UNet state dict (``(C_out, C_in, 3, 3)`` first-conv weight, 320 x 4
    for SD v1). After the call the weight is ``(C_out, C_in + n, 3, 3)`` with the old weight in
    ``[:, :C_in]``. ``n == 0`` leaves it unchanged. Returns ``state_dict``.
    """
    n = int(num_of_additional_channels)
    if n < 0:
        raise ValueError(f"number of additional channels must be >= 0, got {n}")
    if n == 0:
        return state_dict
    if FIRST_CONV not in state_dict:
        raise KeyError(f"state dict has no {FIRST_CONV!r}; is it a UNet state dict?")
    old = state_dict[FIRST_CONV]
    if old.dim() != 4:
        raise ValueError(f"{FIRST_CONV} must be 4-D (C_out, C_in, k, k), got shape {tuple(old.shape)}")
    new = torch.zeros(old.shape[0], old.shape[1] + n, *old.shape[2:], dtype=old.dtype, device=old.device)
    new[:, :old.shape[1]] = old
    state_dict[FIRST_CONV] = new
    return state_dict


#: training state that describes the 4-channel weights: not carried into the widened file
STALE_KEYS = ("opt", "scheduler", "scaler")


def _widened(state: dict, in_channels: int, what: str) -> dict:
    if not isinstance(state, dict) or FIRST_CONV not in state:
        raise KeyError(f"checkpoint {what} has no {FIRST_CONV!r}")
    state = dict(state)
    w = state[FIRST_CONV]
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        raise ValueError(f"{what} {FIRST_CONV} must be a 4-D tensor")
    if w.shape[1] != in_channels:
        raise ValueError(f"{FIRST_CONV} has {w.shape[1]} input channels, expected {in_channels} "
                         f"(already converted, or a spatial-condition model?)")
    return add_additional_channels(state, in_channels + 1)


def convert_to_inpainting(ckpt: dict, in_channels: int = 4, keep_all: bool = True) -> dict:
    """A GLIGEN checkpoint dict -> the inpainting initialisation dict (see the module docstring).

    ``keep_all`` (default): every entry but :data:`STALE_KEYS`, with ``model`` and ``ema`` widened;
    False: ``model`` (+ ``config_dict``) only, as the original.
    """
    if "model" not in ckpt:
        raise KeyError(f"checkpoint has no 'model' entry (keys: {sorted(map(str, ckpt))})")
    out = {"model": _widened(ckpt["model"], in_channels, "model")}
    if keep_all:
        for k, v in ckpt.items():
            if k not in out and k not in STALE_KEYS and k != "config_dict":
                out[k] = _widened(v, in_channels, "ema") if k == "ema" else v
    if "config_dict" in ckpt:
        from ldm.checkpoint import config_from_checkpoint, make_config_dict

        config = copy.deepcopy(config_from_checkpoint(ckpt))
        config["inpaint_mode"] = True
        if isinstance(config.get("model"), dict):
            config["model"].setdefault("params", {})["inpaint_mode"] = True
        out["config_dict"] = make_config_dict(config)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Inflate a GLIGEN checkpoint's first conv from 4 to 9 input "
                                             "channels (zero-initialised) for inpainting training.")
    ap.add_argument("--ckpt_path", type=str, default=None, help="source GLIGEN checkpoint (.pth/.bin/.safetensors)")
    ap.add_argument("--new_ckpt_path", type=str, default=None, help="where to write the converted checkpoint")
    ap.add_argument("--keep_all", action="store_true", help="(the default; kept for compatibility)")
    ap.add_argument("--model_only", action="store_true",
                    help="write only 'model' (+ config_dict), as the original script did")
    ap.add_argument("--to_diffusers", metavar="OUT_DIR", default=None,
                    help="instead: write --ckpt_path as a diffusers folder (model_index.json, unet/, vae/, ...)")
    ap.add_argument("--from_diffusers", metavar="DIR_OR_REPO", default=None,
                    help="instead: convert a diffusers GLIGEN folder or Hub repo id to --new_ckpt_path (.pth/.safetensors)")
    ap.add_argument("--clip", default=None, help="with --to_diffusers, box+text+image: the CLIP whose text projection "
                                                 "becomes image_project (default openai/clip-vit-large-patch14)")
    args = ap.parse_args(argv)
    if args.to_diffusers or args.from_diffusers:
        from ldm.diffusers_format import convert_cli

        return convert_cli(ap, args)
    if not args.ckpt_path or not args.new_ckpt_path:
        ap.error("--ckpt_path and --new_ckpt_path are required")

    from ldm.checkpoint import CheckpointError, load_checkpoint_file, save_checkpoint
    from ldm.cli import guard

    with guard((CheckpointError, KeyError, ValueError, OSError), status=1, others=1) as g:
        check_paths(args.ckpt_path, args.new_ckpt_path)
        ckpt = load_checkpoint_file(args.ckpt_path)
        out = convert_to_inpainting(ckpt, keep_all=not args.model_only)
        save_checkpoint(out, args.new_ckpt_path)
    if g.status:
        return g.status
    w = out["model"][FIRST_CONV]
    print(f"wrote {args.new_ckpt_path}: {FIRST_CONV} {tuple(w.shape)} (channels 4..8 zero); "
          f"kept {', '.join(k for k in out if k != 'model') or 'nothing else'}")
    return 0


def check_paths(src: str, dst: str) -> None:
    """Refuse an output that is the input (same file through a symlink, hard link or relative path)
    or a folder, before anything is read or written."""
    if os.path.isdir(dst):
        raise ValueError(f"--new_ckpt_path {dst} is a folder; give a file name")
    same = os.path.realpath(src) == os.path.realpath(dst)
    if not same and os.path.exists(src) and os.path.exists(dst):
        same = os.path.samefile(src, dst)
    if same:
        raise ValueError(f"--new_ckpt_path {dst} is the input checkpoint {src}; write the converted file "
                         "elsewhere (the input is kept intact)")


if __name__ == "__main__":
    sys.exit(main())
