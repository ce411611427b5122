"""A tiny, self-contained training setup for ``configs/tiny_text_box.yaml`` (CPU, seconds).

Writes random-weight stand-ins for the big downloads plus a small synthetic box dataset::

    ROOT/tiny_sd.ckpt                                   tiny SD v1 checkpoint (ldm.tiny.write_tiny_sd_checkpoint)
    ROOT/tiny_clip/                                     tiny CLIP, text width 24 (ldm.tiny.write_tiny_clip_model)
    ROOT/images/*.png, ROOT/annotations.json            32x32 coloured squares on grey noise, one caption each
    ROOT/GROUNDING/flickr30k/tsv/train-00.tsv(.lineidx) the box TSV (DATA/make_tsv.py with that CLIP)
    ROOT/layout.json                                    a one-box layout for gligen_inference.py

Usage (from the repository root; ``make train-demo`` runs all three steps)::

    python DATA/make_tiny_demo.py --root .cache/train_demo
    python main.py --yaml_file configs/tiny_text_box.yaml --DATA_ROOT .cache/train_demo \
        --OUTPUT_ROOT .cache/train_demo/OUTPUT --name demo --official_ckpt_name tiny_sd.ckpt --device cpu \
        --batch_size 4 --workers 0 --warmup_steps 5 --base_learning_rate 1e-2 --total_iters 30 --save_every_iters 10
    python gligen_inference.py --ckpt .cache/train_demo/OUTPUT/demo/tag00/checkpoint_latest.pth \
        --layout .cache/train_demo/layout.json --clip .cache/train_demo/tiny_clip --device cpu --steps 10

The weights are random: the outputs show the plumbing, not image quality.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

__all__ = ["make_tiny_training_root", "main", "SD_NAME", "TSV_REL", "CLIP_DIR", "LAYOUT_NAME"]

SD_NAME = "tiny_sd.ckpt"  # --official_ckpt_name
CLIP_DIR = "tiny_clip"
TSV_REL = os.path.join("GROUNDING", "flickr30k", "tsv", "train-00.tsv")  # the catalog's FlickrGrounding
LAYOUT_NAME = "layout.json"
IMAGE_SIZE = 32
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def _image(boxes, colors, size: int = IMAGE_SIZE, seed: int = 0) -> Image.Image:
    """``size`` x ``size`` RGB grey noise with a filled square per ``[x, y, w, h]`` box (pixels)."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(90, 140, (size, size, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for (x, y, w, h), c in zip(boxes, colors):
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLORS[c])
    return img


def _annotations(n_images: int, seed: int) -> list[tuple[dict, list[str]]]:
    """``n_images`` ``(entry, colours)``: entries of the simple annotation format (DATA/README.md §4),
    1-2 squares each, and the colour name of each square."""
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    entries = []
    for i in range(n_images):
        k = 1 + i % 2
        cs = [names[(i + j) % len(names)] for j in range(k)]
        boxes = []
        for _ in range(k):
            w, h = (int(v) for v in rng.integers(8, 16, 2))
            x, y = (int(v) for v in rng.integers(0, IMAGE_SIZE - 8, 2))
            boxes.append([x, y, min(w, IMAGE_SIZE - x), min(h, IMAGE_SIZE - y)])
        entries.append(({"file_name": f"{i}.png", "caption": " and ".join(f"a {c} square" for c in cs),
                         "annos": [{"bbox": b, "phrase": f"a {c} square"} for b, c in zip(boxes, cs)]}, cs))
    return entries


def make_tiny_training_root(root: str, n_images: int = 8, seed: int = 0) -> str:
    """Write the tiny SD checkpoint, tiny CLIP, ``n_images`` images, their box TSV and a layout under ``root``.

    Deterministic in ``seed`` (the caller's torch RNG is left as it was); returns ``root``
    (use it as ``--DATA_ROOT``)."""
    import torch

    from DATA.make_tsv import make_tsv
    from ldm.modules.encoders.clip_features import CLIPGroundingFeatures
    from ldm.tiny import write_tiny_clip_model, write_tiny_sd_checkpoint

    os.makedirs(root, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # module default inits draw from the global generator
        torch.manual_seed(seed)
        write_tiny_sd_checkpoint(os.path.join(root, SD_NAME), "text", seed=seed)
        clip_dir = write_tiny_clip_model(os.path.join(root, CLIP_DIR), seed=seed)
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    entries = []
    for i, (entry, colors) in enumerate(_annotations(n_images, seed)):
        boxes = [a["bbox"] for a in entry["annos"]]
        _image(boxes, colors, seed=seed + i).save(os.path.join(img_dir, entry["file_name"]))
        entries.append(entry)
    ann = os.path.join(root, "annotations.json")
    with open(ann, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    out = os.path.join(root, TSV_REL)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    make_tsv(ann, img_dir, out, features=CLIPGroundingFeatures(clip_dir), progress=False)
    layout = {"prompt": "a red square and a blue square", "phrases": ["a red square", "a blue square"],
              "locations": [[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]], "seed": 1, "save_folder_name": "train_demo"}
    with open(os.path.join(root, LAYOUT_NAME), "w", encoding="utf-8") as f:
        json.dump(layout, f, indent=1)
    return root


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.path.join(".cache", "train_demo"), help="DATA_ROOT to write")
    ap.add_argument("--n_images", type=int, default=8, help="training images (default 8)")
    ap.add_argument("--seed", type=int, default=0, help="seed of weights, images and boxes (default 0)")
    args = ap.parse_args(argv)
    if args.n_images < 1:
        ap.error(f"--n_images must be at least 1, got {args.n_images}")
    try:
        root = make_tiny_training_root(args.root, args.n_images, args.seed)
    except OSError as e:  # one line, never a traceback
        print(f"error: cannot write the tiny training root {args.root}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"tiny training root: {root} ({args.n_images} images, {SD_NAME}, {CLIP_DIR}/, {TSV_REL}, {LAYOUT_NAME})")
    return root


if __name__ == "__main__":
    main()
