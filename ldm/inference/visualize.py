"""Annotated copies of generated images: boxes with phrase labels, keypoint skeletons, condition maps."""
from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

#: COCO-17 skeleton (0-based keypoint indices)
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255))
MIN_SIDE = 512


def _canvas(image: Image.Image, min_side: int = MIN_SIDE) -> Image.Image:
    """RGB copy, upscaled (nearest) to at least ``min_side`` so that labels stay readable on tiny images."""
    image = image.convert("RGB")
    if max(image.size) < min_side:
        f = -(-min_side // max(image.size))
        image = image.resize((image.width * f, image.height * f), Image.NEAREST)
    return image


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str | None] = (),
               min_side: int = MIN_SIDE) -> Image.Image:
    """Draw normalised ``xyxy`` boxes with their labels; returns a new image, upscaled to at least
    ``min_side`` pixels (0: never)."""
    im = _canvas(image, min_side)
    draw = ImageDraw.Draw(im)
    w, h = im.size
    font = _font(max(12, w // 40))
    lw = max(2, w // 256)
    for i, box in enumerate(boxes):
        color = PALETTE[i % len(PALETTE)]
        x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=color, width=lw)
        label = labels[i] if i < len(labels) else None
        if label:
            tb = draw.textbbox((x0 + lw, y0 + lw), label, font=font)
            draw.rectangle(tb, fill=color)
            draw.text((x0 + lw, y0 + lw), label, fill=(0, 0, 0), font=font)
    return im


def draw_keypoints(image: Image.Image, persons: Sequence[Sequence[Sequence[float]]]) -> Image.Image:
    """Draw COCO keypoints (normalised ``[x, y]``, ``[0, 0]`` = absent) and their skeleton per person."""
    im = _canvas(image)
    draw = ImageDraw.Draw(im)
    w, h = im.size
    r = max(3, w // 128)
    font = _font(max(12, w // 40))
    for p, person in enumerate(persons):
        color = PALETTE[p % len(PALETTE)]
        present = [(x, y) != (0, 0) for x, y in person]
        pts = [(x * w, y * h) for x, y in person]
        for a, b in COCO_SKELETON:
            if present[a] and present[b]:
                draw.line([pts[a], pts[b]], fill=color, width=max(2, r // 2))
        for (x, y), ok in zip(pts, present):
            if ok:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=color, outline=(0, 0, 0))
        first = next((pt for pt, ok in zip(pts, present) if ok), None)
        if first is not None:
            draw.text((first[0] + r, first[1] - 3 * r), f"person {p}", fill=color, font=font)
    return im


def side_by_side(condition: Image.Image, image: Image.Image, label: str = "") -> Image.Image:
    """Condition map (left) next to the generated image (right), both at the annotated size."""
    right = _canvas(image)
    left = condition.convert("RGB").resize(right.size, Image.NEAREST)
    out = Image.new("RGB", (left.width + right.width, right.height))
    out.paste(left, (0, 0))
    out.paste(right, (left.width, 0))
    if label:
        draw = ImageDraw.Draw(out)
        draw.text((8, 8), label, fill=(255, 0, 0), font=_font(max(12, right.width // 40)))
    return out


def colorize_labels(labels: Image.Image) -> Image.Image:
    """Class-index image ("L") -> RGB with a fixed pseudo-random colour per class (0 stays black)."""
    import numpy as np

    idx = np.asarray(labels.convert("L"), dtype=np.int64)
    rng = np.random.default_rng(0)
    lut = rng.integers(40, 256, size=(256, 3), dtype=np.uint8)
    lut[0] = 0
    return Image.fromarray(lut[idx], "RGB")
