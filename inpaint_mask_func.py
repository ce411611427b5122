"""Inpainting masks from boxes.

Convention: **1 = keep / visible, 0 = region to (re)generate**.

The random free-form stroke masks (training-only options) follow the original recipe and
consume Python ``random`` / ``numpy.random`` in the same order; strokes are drawn with PIL
instead of OpenCV (same geometry up to rasterisation details).
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

__all__ = ["draw_masks_from_boxes", "generate_stroke_mask", "get_a_fg_mask", "get_a_bg_mask"]


def _free_form_mask(max_vertex: int, max_length: int, min_brush: int, max_brush: int, max_angle: int,
                    h: int, w: int) -> np.ndarray:
    """One random poly-line stroke on an (h, w) canvas; returns float32 (h, w), 1 = stroke
    (values up to 2 where the end-point circles are drawn; the caller clips)."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    num_vertex = np.random.randint(1, max_vertex + 1)
    start_y = np.random.randint(1, h)
    start_x = np.random.randint(1, w)
    brush = 0
    for i in range(num_vertex):
        angle = np.random.randint(1, max_angle + 1) / 360.0 * 2 * np.pi
        if i % 2 == 0:
            angle = 2 * np.pi - angle
        length = np.random.randint(max_length + 1)
        brush = (np.random.randint(min_brush, max_brush + 1) // 2) * 2
        next_y = int(np.clip(start_y + length * np.cos(angle), 0, h - 1))
        next_x = int(np.clip(start_x + length * np.sin(angle), 0, w - 1))
        # the original hands (y, x) to OpenCV as (x, y): keep that transposition
        _thick_line(draw, (start_y, start_x), (next_y, next_x), brush)
        _circle_outline(draw, (start_y, start_x), brush // 2)
        start_y, start_x = next_y, next_x
    _circle_outline(draw, (start_y, start_x), brush // 2)
    return np.asarray(canvas, dtype=np.float32)


def _thick_line(draw: ImageDraw.ImageDraw, p0, p1, width: int) -> None:
    """Line of ``width`` pixels with round caps (like ``cv2.line`` with thickness > 1)."""
    draw.line([tuple(map(int, p0)), tuple(map(int, p1))], fill=1, width=max(int(width), 1))
    r = width / 2.0
    for cx, cy in (p0, p1):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)


def _circle_outline(draw: ImageDraw.ImageDraw, center, radius: int) -> None:
    cx, cy = center
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=2, width=1)


def generate_stroke_mask(im_size, max_parts: int = 15, maxVertex: int = 25, maxLength: int = 100,
                         minBrushWidth: int = 5, maxBrushWidth: int = 24, maxAngle: int = 360) -> np.ndarray:
    """Union of ``random.randint(1, max_parts)`` random strokes.

    Args:
        im_size: ``(H, W)``.

    Returns:
        float32 array (H, W) in {0, 1}, **1 = stroke**.
    """
    h, w = int(im_size[0]), int(im_size[1])
    mask = np.zeros((h, w), dtype=np.float32)
    parts = random.randint(1, max_parts)
    for _ in range(parts):
        mask = mask + _free_form_mask(maxVertex, maxLength, minBrushWidth, maxBrushWidth, maxAngle, h, w)
    return np.minimum(mask, 1.0)


def get_a_fg_mask(h: int, w: int) -> torch.Tensor:
    """Object mask (≈75 % of the box to regenerate): (h, w) float32, 0 = generate."""
    assert h >= 4 and w >= 4, "foreground stroke masks need a box of at least 4x4 latent pixels"
    stroke = generate_stroke_mask((64, 64), max_parts=6, maxVertex=10, maxLength=80, minBrushWidth=10,
                                  maxBrushWidth=32, maxAngle=360)
    mask = 1.0 - torch.from_numpy(stroke)
    return F.interpolate(mask[None, None], size=(int(h), int(w)))[0, 0]


def get_a_bg_mask(size: int) -> torch.Tensor:
    """Background mask (≈30 % to regenerate): (size, size) float32, 0 = generate.

    Drawn on a 64x64 canvas as the original (which only supports ``size == 64``); other sizes
    are nearest-resized.
    """
    stroke = generate_stroke_mask((64, 64), max_parts=4, maxVertex=10, maxLength=32, minBrushWidth=3,
                                  maxBrushWidth=12, maxAngle=360)
    mask = 1.0 - torch.from_numpy(stroke)
    if size != 64:
        mask = F.interpolate(mask[None, None], size=(int(size), int(size)))[0, 0]
    return mask


def draw_masks_from_boxes(boxes, size: int, randomize_fg_mask: bool = False,
                          random_add_bg_mask: bool = False) -> torch.Tensor:
    """Inpainting masks from normalised ``xyxy`` boxes.

    Args:
        boxes: (B, N, 4) tensor (or nested lists) of normalised ``[x0, y0, x1, y1]``; all-zero
            padding rows have no effect.
        size: side of the (square) mask, the latent size (64 for SD), or ``(h, w)`` for a non-square
            latent (x coordinates scale with ``w``, y with ``h``).
        randomize_fg_mask: per box (>= 4x4 after scaling) with prob. 0.5 regenerate only a
            random stroke region inside the box instead of the whole box.
        random_add_bg_mask: per image with prob. 0.5 also regenerate random background strokes.

    Returns:
        (B, 1, h, w) float32 on CPU (h = w = size for an int), **1 outside the boxes (keep), 0 inside (generate)**.
        Coordinates are ``int(coord * size)`` (truncation), computed in the boxes' dtype
        (float32 for lists).
    """
    if not isinstance(boxes, torch.Tensor):
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
    boxes = boxes.detach().cpu()
    h_size, w_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    masks = []
    for boxes_i in boxes:
        image_mask = torch.ones(h_size, w_size)
        for box in boxes_i:
            x0, y0, x1, y1 = (int(v * s) for v, s in zip(box, (w_size, h_size, w_size, h_size)))
            w, h = x1 - x0, y1 - y0
            if randomize_fg_mask and random.uniform(0, 1) < 0.5 and h >= 4 and w >= 4:
                image_mask[y0:y1, x0:x1] = image_mask[y0:y1, x0:x1] * get_a_fg_mask(h, w)
            else:
                image_mask[y0:y1, x0:x1] = 0
        if random_add_bg_mask and random.uniform(0, 1) < 0.5:
            image_mask = image_mask * (get_a_bg_mask(h_size) if h_size == w_size else
                                       F.interpolate(get_a_bg_mask(64)[None, None], size=(h_size, w_size))[0, 0])
        masks.append(image_mask)
    return torch.stack(masks).unsqueeze(1)
