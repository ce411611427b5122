"""Writing results: PNGs numbered after the existing ones, annotated copies, JSON run records."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import torch
from PIL import Image

_NUMBERED = re.compile(r"^(\d+)\.png$")


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) decoded images in ~[-1, 1] -> B arrays (H, W, 3) uint8.

    Exactly the original's conversion: ``clamp(x, -1, 1) * 0.5 + 0.5``, ``* 255``, ``astype(uint8)``
    (**truncation**, not rounding).
    """
    out = []
    for s in images.detach().float().cpu():
        s = torch.clamp(s, min=-1, max=1) * 0.5 + 0.5
        out.append((s.numpy().transpose(1, 2, 0) * 255).astype(np.uint8))
    return out


def next_index(folder: str) -> int:
    """First free sample number in ``folder``: one past the largest ``<n>.png`` (0 if none)."""
    if not os.path.isdir(folder):
        return 0
    nums = [int(m.group(1)) for f in os.listdir(folder) if (m := _NUMBERED.match(f))]
    return max(nums) + 1 if nums else 0


_FLAT_LIST = re.compile(r"\[[^\[\]{}]*\]")


def dumps(obj) -> str:
    """Indented JSON with innermost lists (boxes, points, alpha_type...) kept on one line."""
    text = json.dumps(obj, indent=2)
    return _FLAT_LIST.sub(lambda m: json.dumps(json.loads(m.group(0))), text)


def write_json(path: str, obj) -> None:
    """Atomic write of :func:`dumps` ``(obj)``."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps(obj) + "\n")
    os.replace(tmp, path)


def save_png(array: np.ndarray | Image.Image, path: str) -> str:
    im = array if isinstance(array, Image.Image) else Image.fromarray(array)
    im.save(path)
    return path
