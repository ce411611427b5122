"""Offline demo (``make demo``): tiny random-weight checkpoints in the official format, full pipeline.

Builds (once) tiny GLIGEN checkpoints for the families used by ``examples/demo_layout.json`` and a
tiny CLIP model for phrase / image features under ``.cache/demo/``, then runs
``gligen_inference.py --layout examples/demo_layout.json`` on CPU. The weights are random, so
the pictures are noise-like: the demo shows the plumbing (layouts, modes, sampling, saving).

    python -m ldm.inference.demo [extra gligen_inference arguments]
"""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, ".cache", "demo")
LAYOUT = os.path.join(ROOT, "examples", "demo_layout.json")
CHECKPOINTS = {"gligen_text.pth": ("text", False), "gligen_text_image.pth": ("text_image", False),
               "gligen_inpaint_text.pth": ("text", True), "gligen_keypoint.pth": ("keypoint", False),
               "gligen_hed.pth": ("hed", False), "gligen_sem.pth": ("sem", False)}


def build_assets(cache: str = CACHE) -> str:
    """Write the tiny checkpoints, the tiny CLIP model and the stand-in images that are missing."""
    from ldm.inference.standins import write_standins
    from ldm.tiny import write_tiny_checkpoint, write_tiny_clip_model, write_tiny_sd_checkpoint

    os.makedirs(cache, exist_ok=True)
    for name, (family, inpaint) in CHECKPOINTS.items():
        path = os.path.join(cache, name)
        if not os.path.isfile(path):
            write_tiny_checkpoint(path, family, inpaint=inpaint, seed=0)
    sd_path = os.path.join(cache, "tiny_sd.ckpt")  # stands in for SD v1.4 (first conv at zero-gate steps)
    if not os.path.isfile(sd_path):
        write_tiny_sd_checkpoint(sd_path)
    clip_dir = os.path.join(cache, "tiny_clip")
    if not os.path.isfile(os.path.join(clip_dir, "config.json")):
        write_tiny_clip_model(clip_dir)
    write_standins(os.path.join(ROOT, "inference_images"))
    return clip_dir, sd_path


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local
    import torch

    import gligen_inference

    torch.set_num_threads(1)  # tiny models: threads only add synchronisation stalls on a busy CPU

    t0 = time.time()
    clip_dir, sd_path = build_assets()
    args = ["--layout", LAYOUT, "--clip", clip_dir, "--sd_first_conv", sd_path, "--device", "cpu", "--folder",
            os.path.join(ROOT, "generation_samples"), *(argv if argv is not None else sys.argv[1:])]
    rc = gligen_inference.main(args)
    if rc == 0:
        print(f"demo done in {time.time() - t0:.1f}s: see generation_samples/demo/")
    return rc


if __name__ == "__main__":
    sys.exit(main())
