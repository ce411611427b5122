"""Geometric pipelines shared by the datasets.

Two conventions exist in GLIGEN and both are reproduced here, once each:

* box / keypoint datasets (the original's ``BaseDataset.transform_image`` of
  ``dataset/base_dataset.py``): repeated BOX halving, BICUBIC resize of the short side to
  ``S``, **floor**-based centre crop, optional horizontal flip; the crop/scale/flip
  bookkeeping (:class:`TransformInfo`) is then applied to boxes and keypoints
  (``recalculate_box_and_verify_if_valid``);
* spatial-condition datasets (``dataset_hed.py`` and its siblings): torchvision ``center_crop``
  (rounded offsets) to the short
  side, PIL ``resize((S, S))``, optional mirror, applied identically to image and condition.

All randomness uses Python's ``random``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ldm.imageops import center_crop

__all__ = [
    "TransformInfo", "transform_image", "recalculate_box", "transform_point",
    "paired_center_crop_resize_flip", "largest_first",
]


@dataclass
class TransformInfo:
    """What :func:`transform_image` did (names as in the original ``info`` dict)."""
    performed_scale: float
    crop_y: int
    crop_x: int
    WW: int
    HH: int
    performed_flip: bool


def transform_image(pil_image: Image.Image, image_size: int, random_flip: bool):
    """Box/keypoint image transform.

    pil_image: RGB PIL image of any size.
    Returns ``(image, info)``: ``image (3, S, S)`` float32 in [-1, 1] and a :class:`TransformInfo`.
    """
    S = image_size
    WW, HH = pil_image.size
    img = pil_image
    while min(*img.size) >= 2 * S:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = S / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    performed_scale = S / min(WW, HH)

    crop_x, crop_y = (img.size[0] - S) // 2, (img.size[1] - S) // 2
    arr = np.array(center_crop(img.convert("RGB"), S, rounding="floor"))

    performed_flip = False
    if random_flip and random.random() < 0.5:
        arr = arr[:, ::-1]
        performed_flip = True

    arr = arr.astype(np.float32) / 127.5 - 1
    image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return image, TransformInfo(performed_scale, crop_y, crop_x, WW, HH, performed_flip)


def recalculate_box(bbox_xywh: Sequence[float], info: TransformInfo, image_size: int,
                    min_box_size: float):
    """Map an original-pixel xywh box into the transformed image.

    Returns ``(valid, (x0, y0, x1, y1))`` in pixels of the ``S x S`` crop (clamped, flipped if the
    image was flipped). Invalid: completely outside the crop, or area ratio ``< min_box_size``
    after clamping (as the original's ``recalculate_box_and_verify_if_valid``: with
    ``min_box_size=0`` a zero-area box is kept, an inverted one dropped); a NaN box is invalid.
    """
    S = image_size
    x, y, w, h = (float(v) for v in bbox_xywh)
    s = info.performed_scale
    x0, y0 = x * s - info.crop_x, y * s - info.crop_y
    x1, y1 = (x + w) * s - info.crop_x, (y + h) * s - info.crop_y
    if x0 > S or y0 > S or x1 < 0 or y1 < 0:
        return False, None
    x0, y0 = max(x0, 0.0), max(y0, 0.0)
    x1, y1 = min(x1, float(S)), min(y1, float(S))
    ratio = (x1 - x0) * (y1 - y0) / (S * S)
    if ratio != ratio or ratio < min_box_size:  # NaN, or too small
        return False, None
    if info.performed_flip:
        x0, x1 = S - x1, S - x0
    return True, (x0, y0, x1, y1)


def transform_point(xy: Sequence[float], info: TransformInfo):
    """Original-pixel point -> pixel of the crop, before flipping (``loc * scale - crop``)."""
    return (float(xy[0]) * info.performed_scale - info.crop_x,
            float(xy[1]) * info.performed_scale - info.crop_y)


def paired_center_crop_resize_flip(image: Image.Image, cond: Image.Image, image_size: int,
                                   random_flip: bool, cond_resample=None):
    """Spatial-condition pipeline applied to image and condition alike.

    image, cond: PIL images of the same size. ``cond_resample`` = PIL filter for the condition
    (None -> PIL default, i.e. BICUBIC; the semantic map uses ``Image.NEAREST``).
    Returns the two ``S x S`` PIL images.
    """
    if image.size != cond.size:
        raise ValueError(f"image size {image.size} != condition size {cond.size}")
    image = center_crop(image)
    cond = center_crop(cond)
    image = image.resize((image_size, image_size))
    cond = cond.resize((image_size, image_size)) if cond_resample is None else \
        cond.resize((image_size, image_size), resample=cond_resample)
    if random_flip and random.random() < 0.5:
        image = ImageOps.mirror(image)
        cond = ImageOps.mirror(cond)
    return image, cond




def largest_first(items: Sequence, areas: Sequence[float]) -> list:
    """``items`` ordered by ``areas``, largest first, exactly as the original orders boxes and
    persons: ``torch.tensor(areas).sort(descending=True)`` -- float32 areas and ``torch.sort``'s
    own order for ties (equal-size boxes or persons; it decides which survive the 30-box /
    8-person cut and which slot each person takes)."""
    if not items:
        return []
    order = torch.tensor(list(areas)).sort(descending=True).indices
    return [items[i] for i in order.tolist()]
