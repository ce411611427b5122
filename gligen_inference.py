#!/usr/bin/env python
"""Grounded text-to-image generation and inpainting with GLIGEN checkpoints.

    python gligen_inference.py                       # the original example set, released Hub checkpoints
    python gligen_inference.py --layout my.json      # generations described in a JSON / YAML layout
    python gligen_inference.py --ckpt FILE_OR_REPO   # the examples this checkpoint can run
    python gligen_inference.py --layout my.json --base_model my_sd15_finetune.safetensors --width 768

The preprocessing follows the checkpoint's architecture (box+text, box+text+image, keypoints,
HED / Canny / depth / normal / semantic maps; inpainting when its first conv takes 9 channels).
See ``ldm/inference/layout.py`` for the layout keys. Outputs go to
``<folder>/<save_folder_name>/<n>.png`` with ``<n>_annotated.png`` (boxes / keypoints drawn)
and ``<n>.json`` (layout + settings; ``--layout <n>.json`` repeats the run).

``alpha_generator`` and ``set_alpha_scale`` (scheduled sampling of the gated layers) are
re-exported here, as in the original.
"""
from __future__ import annotations

import argparse
import os
import sys

from ldm.models.diffusion.sampling import alpha_generator, set_alpha_scale

__all__ = ["alpha_generator", "set_alpha_scale", "build_parser", "main"]

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_parser() -> argparse.ArgumentParser:
    from ldm.inference.layout import BOX_FORMATS
    from ldm.inference.pipeline import DEFAULT_NEGATIVE_PROMPT, DEVICES, DTYPES, SAMPLERS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", help="JSON or YAML file with one or more generations (default: the example set)")
    p.add_argument("--box-format", "--box_format", dest="box_format", choices=BOX_FORMATS, default=None,
                   help="coordinates in the layout: normalised xyxy (default), xywh, or pixels relative to the "
                        "input image / a 512x512 canvas")
    p.add_argument("--ckpt", default=None,
                   help="checkpoint file or Hub repo id for every generation (default: the layout's 'ckpt', "
                        "else the released checkpoint for the mode)")
    p.add_argument("--ckpt_dir", "--ckpt-dir", dest="ckpt_dir", default=None,
                   help="folder with the original's local checkpoint names (checkpoint_generation_text.pth, ...)")
    p.add_argument("--clip", default=None, help="CLIP model (Hub id or folder) for phrase / reference-image features "
                                                "(default openai/clip-vit-large-patch14)")
    p.add_argument("--device", choices=DEVICES, default=None, help="default auto")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default fp32")
    p.add_argument("--seed", type=int, default=None, help="seed for every generation (default: the layout's, else random)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 50 PLMS / 250 DDIM / 20 dpmpp_2m, unipc / 50 euler)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="default plms; dpmpp_2m / unipc need 20 steps for PLMS-50's accuracy")
    p.add_argument("--no_plms", action="store_true", help="use DDIM (same as --sampler ddim)")
    p.add_argument("--guidance_scale", "--guidance-scale", dest="guidance_scale", type=float, default=None,
                   help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--negative_prompt", "--negative-prompt", dest="negative_prompt", default=None,
                   help=f"default: {DEFAULT_NEGATIVE_PROMPT!r}")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=None, help="default 5")
    p.add_argument("--folder", default=None, help="output root (default generation_samples)")
    p.add_argument("--sd_first_conv", "--sd-first-conv", dest="sd_first_conv", default=None,
                   help="SD v1.4 first conv for zero-gate steps of spatial-map models "
                        "(SD_input_conv_weight_bias.pth, an SD .ckpt or a GLIGEN box checkpoint)")
    p.add_argument("--base_model", "--base-model", dest="base_model", default=None,
                   help="SD-1.x model for the frozen UNet/VAE/text encoder (an original .ckpt, a single-file "
                        ".safetensors fine-tune, a diffusers folder or Hub repo id); GLIGEN's layers come from --ckpt")
    p.add_argument("--height", type=int, default=None, help="image height in pixels, a multiple of 64 (default 512)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels, a multiple of 64 (default 512)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def _example_generations(settings, runner):
    """The original example set, validated (missing inputs are named)."""
    from ldm.inference.examples import ORIGINAL_EXAMPLES
    from ldm.inference.layout import Generation, LayoutError

    gens = []
    for i, entry in enumerate(ORIGINAL_EXAMPLES):
        try:
            gens.append(Generation.from_dict(entry, ROOT, "xyxy"))
        except LayoutError as e:
            raise LayoutError(f"example '{entry['save_folder_name']}': {e} "
                              "(bundled inputs live in inference_images/; "
                              "regenerate stand-ins with `python -m ldm.inference.standins`)") from None
    if settings.ckpt:  # only the examples this checkpoint can run
        _, mode = runner.load(runner.checkpoint_for(gens[0]))
        gens = [g for g in gens if g.implied_mode() == mode]
        if not gens:
            raise LayoutError(f"no example matches the checkpoint's mode ({mode.name}); pass --layout")
    return gens


def run(argv=None) -> list[str]:
    """Parse ``argv`` and run every generation; returns the written paths (errors raise)."""
    from ldm.inference.errors import LayoutError
    from ldm.inference.layout import load_layout, read_layout_file
    from ldm.inference.pipeline import Runner, Settings
    from ldm.inference.saving import check_creatable

    args = build_parser().parse_args(argv)
    sampler = "ddim" if args.no_plms else args.sampler
    cli = dict(sampler=sampler, steps=args.steps, guidance_scale=args.guidance_scale,
               negative_prompt=args.negative_prompt, batch_size=args.batch_size, seed=args.seed, device=args.device,
               dtype=args.dtype, folder=args.folder, clip=args.clip, ckpt=args.ckpt, ckpt_dir=args.ckpt_dir,
               sd_first_conv=args.sd_first_conv, box_format=args.box_format, base_model=args.base_model,
               height=args.height, width=args.width,
               progress=None if args.progress else False)
    if args.layout:
        file_settings, _ = read_layout_file(args.layout)
        settings = Settings.merged(file_settings, **cli)
        canvas = (settings.width or 512, settings.height or 512) if settings.width or settings.height else None
        _, gens = load_layout(args.layout, settings.box_format, canvas)  # validate everything before running
    else:
        settings, gens = Settings.merged(None, **cli), None
    try:  # before any model is loaded; the exact sub-folder is proven writable before sampling
        check_creatable(settings.folder)
    except OSError as e:
        raise LayoutError(f"cannot write to the output folder {settings.folder}: {e.strerror} ({e.filename})") from None
    runner = Runner(settings)
    if gens is None:
        gens = _example_generations(settings, runner)
    paths = []
    for gen in gens:
        written = runner.run(gen)
        print(f"saved {len(written) // 3} image(s) to {os.path.dirname(written[0])}", flush=True)
        paths += written
    return paths


def main(argv=None) -> int:
    """CLI entry point: ``error: <one line>`` and exit status 2 for bad input or missing resources,
    1 for anything else (``GLIGEN_DEBUG=1`` shows the traceback)."""
    from ldm.checkpoint import CheckpointError
    from ldm.cli import guard
    from ldm.inference.errors import LayoutError, ResolveError

    # out of memory, a full disk, a bug: still one line, never a traceback
    with guard((LayoutError, ResolveError, CheckpointError), status=2, others=1, interrupted="interrupted") as g:
        run(argv)
    return g.status


if __name__ == "__main__":
    sys.exit(main())
