"""Widen a GLIGEN checkpoint's first UNet conv for inpainting.

The generation model's ``input_blocks.0.0.weight`` takes the 4 latent channels. Inpainting
training feeds ``[noisy latent (4) | masked latent (4) | mask (1)]`` = 9 channels, so the weight
becomes ``(C_out, 9, 3, 3)`` with the old weight in channels 0..3 and zeros elsewhere: the
widened model computes exactly what the 4-channel model did until training moves the new
channels. The bias is untouched.

Usage::

    python convert_ckpt.py --ckpt_path gligen_text_box.pth --new_ckpt_path inpaint_init.pth
    python main.py --yaml_file configs/flickr_text.yaml --inpaint_mode True --ckpt inpaint_init.pth ...

The output holds ``{"model": ...}`` as the original, plus (our addition) ``config_dict`` with
``inpaint_mode: True`` when the source had one, so the file documents what it is;
``--keep_all`` also keeps ``text_encoder`` / ``autoencoder`` / ``diffusion`` (a file that
``ldm.checkpoint.build_from_checkpoint`` and ``gligen_inference.py`` can load directly).
"""
from __future__ import annotations

import argparse
import copy
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


def convert_to_inpainting(ckpt: dict, in_channels: int = 4, keep_all: bool = False) -> dict:
    """A GLIGEN checkpoint dict -> the inpainting initialisation dict (see the module docstring)."""
    if "model" not in ckpt:
        raise KeyError(f"checkpoint has no 'model' entry (keys: {sorted(ckpt)})")
    model = dict(ckpt["model"])
    if FIRST_CONV not in model:
        raise KeyError(f"checkpoint model has no {FIRST_CONV!r}")
    have = model[FIRST_CONV].shape[1]
    if have != in_channels:
        raise ValueError(f"{FIRST_CONV} has {have} input channels, expected {in_channels} "
                         f"(already converted, or a spatial-condition model?)")
    add_additional_channels(model, in_channels + 1)
    out = {"model": model}
    if keep_all:
        for k in ("text_encoder", "autoencoder", "diffusion"):
            if k in ckpt:
                out[k] = ckpt[k]
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
    ap.add_argument("--keep_all", action="store_true",
                    help="also keep text_encoder/autoencoder/diffusion (loadable by gligen_inference.py)")
    args = ap.parse_args(argv)
    if not args.ckpt_path or not args.new_ckpt_path:
        ap.error("--ckpt_path and --new_ckpt_path are required")

    from ldm.checkpoint import CheckpointError, load_checkpoint_file, save_checkpoint

    try:
        ckpt = load_checkpoint_file(args.ckpt_path)
        out = convert_to_inpainting(ckpt, keep_all=args.keep_all)
        save_checkpoint(out, args.new_ckpt_path)
    except (CheckpointError, KeyError, ValueError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 1
    w = out["model"][FIRST_CONV]
    print(f"wrote {args.new_ckpt_path}: {FIRST_CONV} {tuple(w.shape)} (channels 4..8 zero)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
