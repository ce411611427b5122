"""Writing results: PNGs numbered after the existing ones, annotated copies, JSON run records."""
from __future__ import annotations

import json
import os
import re
import tempfile

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


def _is_flat_list(obj) -> bool:
    return isinstance(obj, (list, tuple)) and all(not isinstance(v, (list, tuple, dict)) for v in obj)


def dumps(obj, indent: int = 2, _level: int = 0) -> str:
    """Indented JSON with innermost lists (boxes, points, alpha_type...) kept on one line.

    Built structurally (never by editing the JSON text), so any string round-trips: brackets,
    quotes, backslashes, non-ASCII. Non-finite floats are refused (they are not JSON).
    """
    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {dumps(v, indent, _level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if _is_flat_list(obj):
            return json.dumps(list(obj), ensure_ascii=False, allow_nan=False)
        return "[\n" + ",\n".join(inner + dumps(v, indent, _level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def write_json(path: str, obj) -> None:
    """Atomic write of :func:`dumps` ``(obj)`` (temporary file in the same folder, then rename;
    the temporary file is removed if anything fails)."""
    text = dumps(obj) + "\n"
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_creatable(folder: str) -> None:
    """Cheap early check that creates nothing: the nearest existing ancestor of ``folder`` must be a
    writable directory (``OSError`` otherwise). :func:`check_writable` proves it before sampling."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if not os.path.isdir(path):
        raise NotADirectoryError(20, "not a directory", path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(13, "permission denied", path)


def check_writable(folder: str) -> str:
    """Create ``folder`` if needed and prove a file can be written there (before any compute is
    spent). Raises ``OSError`` with the reason; returns ``folder``."""
    os.makedirs(folder, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write_test_", dir=folder)
    os.close(fd)
    os.remove(probe)
    return folder


def save_png(array: np.ndarray | Image.Image, path: str) -> str:
    """Write a PNG atomically (temporary file + rename)."""
    im = array if isinstance(array, Image.Image) else Image.fromarray(array)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            im.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
