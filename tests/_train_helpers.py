"""Synthetic training data for the trainer tests: a tiny SD checkpoint and a tiny box TSV.

``make_tiny_training_root(root)`` lays out what ``configs/tiny_text_box.yaml`` expects::

    root/tiny_sd.ckpt                                   (ldm.tiny.write_tiny_sd_checkpoint)
    root/tiny_clip/                                     (ldm.tiny.write_tiny_clip_model, width 24)
    root/GROUNDING/flickr30k/tsv/train-00.tsv(.lineidx) (DATA/make_tsv.py with that CLIP)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

TINY_CONFIG = os.path.join(REPO, "configs", "tiny_text_box.yaml")
TSV_REL = os.path.join("GROUNDING", "flickr30k", "tsv", "train-00.tsv")
SD_NAME = "tiny_sd.ckpt"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def _image(boxes, colors, size=32, seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.integers(90, 140, (size, size, 3))).astype(np.uint8)  # grey noise background
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for (x, y, w, h), c in zip(boxes, colors):
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLORS[c])
    return img


def make_tiny_training_root(root: str, n_images: int = 8, seed: int = 0) -> str:
    """Write the tiny SD checkpoint, tiny CLIP and an ``n_images``-row box TSV under ``root``."""
    from DATA.make_tsv import make_tsv
    from ldm.modules.encoders.clip_features import CLIPGroundingFeatures
    from ldm.tiny import write_tiny_clip_model, write_tiny_sd_checkpoint

    os.makedirs(root, exist_ok=True)
    write_tiny_sd_checkpoint(os.path.join(root, SD_NAME), "text", seed=seed)
    clip_dir = write_tiny_clip_model(os.path.join(root, "tiny_clip"), seed=seed)
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    entries = []
    for i in range(n_images):
        k = 1 + i % 2
        cs = [names[(i + j) % len(names)] for j in range(k)]
        boxes = []
        for _ in range(k):
            w, h = (int(v) for v in rng.integers(8, 16, 2))
            x, y = (int(v) for v in rng.integers(0, 32 - 8, 2))
            boxes.append([x, y, min(w, 32 - x), min(h, 32 - y)])
        _image(boxes, cs, seed=seed + i).save(os.path.join(img_dir, f"{i}.png"))
        caption = " and ".join(f"a {c} square" for c in cs)
        entries.append({"file_name": f"{i}.png", "caption": caption,
                        "annos": [{"bbox": b, "phrase": f"a {c} square"} for b, c in zip(boxes, cs)]})
    ann = os.path.join(root, "annotations.json")
    with open(ann, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    out = os.path.join(root, TSV_REL)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    make_tsv(ann, img_dir, out, features=CLIPGroundingFeatures(clip_dir), progress=False)
    return root


_CACHE: dict = {}


def shared_tiny_root(tmp_path_factory) -> str:
    """One tiny data root per test session (read-only for the tests: copy it to modify)."""
    if "root" not in _CACHE:
        _CACHE["root"] = make_tiny_training_root(str(tmp_path_factory.mktemp("tiny_data")))
    return _CACHE["root"]


def main_cmd(data_root: str, out_root: str, name: str = "tiny", *extra: str, torchrun_procs: int = 0) -> list[str]:
    """Command line of a tiny CPU training run (``extra`` appended / overriding)."""
    py = sys.executable
    args = ["--yaml_file", TINY_CONFIG, "--DATA_ROOT", data_root, "--OUTPUT_ROOT", out_root, "--name", name,
            "--official_ckpt_name", SD_NAME, "--device", "cpu", "--batch_size", "4", "--workers", "0",
            "--warmup_steps", "5", "--base_learning_rate", "1e-3", "--total_iters", "30", "--save_every_iters", "10",
            "--disable_inference_in_training", "True", "--seed", "7", *extra]
    if torchrun_procs:
        return [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_procs}",
                os.path.join(REPO, "main.py"), *args]
    return [py, os.path.join(REPO, "main.py"), *args]


def run_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_main(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=timeout)
