"""Per-modality batch preparation (the original's ``prepare_batch*`` functions of
``gligen_inference.py``): a :class:`Generation` -> tensors on CPU.

Every function returns float32 CPU tensors already repeated over the batch; the pipeline moves
them to the device / dtype. Keys are those the ``grounding_input`` adapters read.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from ldm import imageops
from ldm.constants import MAX_OBJS, MAX_PERSONS, NUM_KEYPOINTS, SEM_CHANNELS

from .errors import LayoutError, ResolveError
from .layout import Generation
from .modes import SPATIAL_BATCH_KEYS, Mode


class GroundingFeatures(Protocol):
    """What box modes need from CLIP (``ldm.modules.encoders.clip_features.CLIPGroundingFeatures``)."""

    def text_before(self, phrases: list[str]) -> torch.Tensor: ...  # (N, D)

    def image_reprojected(self, images: list) -> torch.Tensor: ...  # (N, D)


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------
def open_image(path: str, mode: str = "RGB") -> Image.Image:
    """:func:`ldm.imageops.open_image` (size-checked decode) with a :class:`LayoutError` for bad files."""
    return imageops.open_image(path, mode, error=LayoutError)


def inpainting_image(path: str, resolution: int | tuple[int, int]) -> torch.Tensor:
    """Image to inpaint: RGB, resized to ``resolution`` (R, or (H, W)) **without** cropping -> (1, 3, H, W) in [-1, 1]."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    return imageops.to_m11(open_image(path).resize((w, h)))[None]


def spatial_map(path: str, resolution: int) -> torch.Tensor:
    """HED / Canny / depth / normal map: RGB, centre crop, resize -> (3, R, R) in [-1, 1]."""
    return imageops.to_m11(imageops.center_crop(open_image(path)).resize((resolution, resolution)))


def semantic_map(path: str, resolution: int, num_classes: int = SEM_CHANNELS) -> torch.Tensor:
    """ADE20K label image (class id 0..150 per pixel; colour pictures refused): centre crop, NEAREST
    resize -> one-hot (C, R, R)."""
    labels_im = imageops.open_label_map(path, error=LayoutError)
    im = imageops.center_crop(labels_im).resize((resolution, resolution), Image.NEAREST)
    labels = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True))  # ids 0..150: checked by open_label_map
    return imageops.one_hot(labels, num_classes)


# --------------------------------------------------------------------------------------
# boxes / keypoints
# --------------------------------------------------------------------------------------
def complete_mask(value, max_objs: int = MAX_OBJS) -> torch.Tensor:
    """Per-object mask multiplier (max_objs,): None -> ones, number -> ones * v, list -> first entries = list."""
    m = torch.ones(max_objs)
    if value is None:
        return m
    if isinstance(value, (int, float)):
        return m * value
    m[:len(value)] = torch.tensor(value, dtype=torch.float32)
    return m


def _check_dim(feats: torch.Tensor, dim: int, what: str) -> torch.Tensor:
    if feats.shape[-1] != dim:
        raise ResolveError(f"{what} features have width {feats.shape[-1]} but the checkpoint's grounding tokenizer "
                           f"expects {dim}; use a matching CLIP model (--clip)")
    return feats.detach().float().cpu()


def box_batch(gen: Generation, batch_size: int, dim: int, features: GroundingFeatures | None,
              with_images: bool, max_objs: int = MAX_OBJS) -> dict:
    """Box + phrase (+ reference image) batch.

    Returns ``boxes (B, 30, 4)``, ``masks (B, 30)``, ``text_embeddings (B, 30, D)`` and, with
    images, ``text_masks``, ``image_masks (B, 30)`` (times ``text_mask`` / ``image_mask``) and
    ``image_embeddings (B, 30, D)``. ``D`` = ``dim`` (the tokenizer's ``in_dim``).
    """
    n = len(gen.boxes)
    phrases = gen.phrases or [None] * n
    images = gen.images or [None] * n
    boxes, masks = torch.zeros(max_objs, 4), torch.zeros(max_objs)
    text_masks, image_masks = torch.zeros(max_objs), torch.zeros(max_objs)
    text_emb, image_emb = torch.zeros(max_objs, dim), torch.zeros(max_objs, dim)
    text_idx = [i for i, p in enumerate(phrases) if p is not None]
    image_idx = [i for i, p in enumerate(images) if p is not None] if with_images else []
    if (text_idx or image_idx) and features is None:
        raise ResolveError("phrase / image features need a CLIP model")
    if text_idx:
        text_emb[text_idx] = _check_dim(features.text_before([phrases[i] for i in text_idx]), dim, "phrase")
    if image_idx:
        pil = [open_image(images[i]) for i in image_idx]
        image_emb[image_idx] = _check_dim(features.image_reprojected(pil), dim, "reference-image")
    for i, box in enumerate(gen.boxes):
        boxes[i] = torch.tensor(box, dtype=torch.float32)
        masks[i] = 1
    text_masks[text_idx] = 1
    image_masks[image_idx] = 1
    out = {"boxes": boxes, "masks": masks, "text_embeddings": text_emb}
    if with_images:
        out.update(text_masks=text_masks * complete_mask(gen.text_mask, max_objs),
                   image_masks=image_masks * complete_mask(gen.image_mask, max_objs),
                   image_embeddings=image_emb)
    return {k: v[None].repeat(batch_size, *([1] * v.dim())) for k, v in out.items()}


def keypoint_batch(gen: Generation, batch_size: int, max_persons: int = MAX_PERSONS) -> dict:
    """``points (B, P*17, 2)`` person-major and ``masks (B, P*17)`` (a point is valid unless x + y == 0)."""
    if len(gen.keypoints) > max_persons:
        raise LayoutError(f"{len(gen.keypoints)} persons given, the checkpoint supports at most {max_persons}")
    points = torch.zeros(max_persons * NUM_KEYPOINTS, 2)
    flat = [xy for person in gen.keypoints for xy in person]
    if flat:
        points[:len(flat)] = torch.tensor(flat, dtype=torch.float32)
    masks = (points.mean(1) != 0).float()
    return {"points": points[None].repeat(batch_size, 1, 1), "masks": masks[None].repeat(batch_size, 1)}


def spatial_batch(gen: Generation, family: str, batch_size: int, resolution: int) -> dict:
    """``{<map key>: (B, C, R, R), "mask": ones (B, 1)}`` for hed / canny / depth / normal / sem."""
    path = gen.condition[family]
    m = semantic_map(path, resolution) if family == "sem" else spatial_map(path, resolution)
    return {SPATIAL_BATCH_KEYS[family]: m[None].repeat(batch_size, 1, 1, 1), "mask": torch.ones(batch_size, 1)}


def prepare_batch(gen: Generation, mode: Mode, batch_size: int, resolution: int, *, dim: int | None = None,
                  features: GroundingFeatures | None = None, max_persons: int = MAX_PERSONS) -> dict:
    """Dispatch on ``mode.family`` (see the functions above)."""
    if mode.is_box:
        if dim is None:
            raise ValueError("box modes need the feature width `dim`")
        return box_batch(gen, batch_size, dim, features, with_images=mode.family == "text_image")
    if mode.family == "keypoint":
        return keypoint_batch(gen, batch_size, max_persons)
    return spatial_batch(gen, mode.family, batch_size, resolution)


def boxes_tensor(boxes: Sequence[Sequence[float]], batch_size: int, max_objs: int = MAX_OBJS) -> torch.Tensor:
    """(B, max_objs, 4) zero-padded boxes (for inpainting masks when the batch has no ``boxes``)."""
    t = torch.zeros(max_objs, 4)
    if boxes:
        t[:len(boxes)] = torch.tensor(boxes, dtype=torch.float32)
    return t[None].repeat(batch_size, 1, 1)
