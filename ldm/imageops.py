"""Image operations used by inference and the datasets, one function per idea.

* :func:`open_image` -- read and decode an image file fully, one clear error when it cannot be;
* :func:`to_m11` / :func:`from_m11` -- PIL image <-> (C, H, W) float tensor in [-1, 1];
* :func:`center_crop` -- centre crop, with the two offset roundings the original uses;
* :func:`one_hot` -- integer label map -> one-hot channels (ADE20K semantic maps).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ldm.constants import SEM_CHANNELS


def open_image(path, mode: str = "RGB", error: type[Exception] = ValueError) -> Image.Image:
    """``Image.open(path).convert(mode)``, fully decoded and the file closed.

    An unreadable or undecodable file raises ``error`` (a one-line message naming the file), so
    callers choose the exception their users see (inference: ``LayoutError``; datasets:
    ``CorruptSampleError``, which skips the sample).
    """
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except (OSError, ValueError, SyntaxError) as e:
        raise error(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def to_m11(im: Image.Image) -> torch.Tensor:
    """PIL image (H, W) with C bands -> (C, H, W) float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5``
    (the original's ``ToTensor`` + ``Normalize(0.5, 0.5)``)."""
    x = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True))
    if x.dim() == 2:
        x = x[:, :, None]
    return (x.permute(2, 0, 1).float() / 255 - 0.5) / 0.5


def from_m11(x: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [-1, 1] -> PIL RGB (clamped, rounded to uint8)."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5) * 255).round().byte()
    return Image.fromarray(arr.permute(1, 2, 0).numpy())


def center_crop(im: Image.Image, size: int | None = None, rounding: str = "round") -> Image.Image:
    """Centre crop to ``size`` x ``size`` (default: the short side).

    ``rounding="round"``: offsets ``round((W - size) / 2)`` (torchvision's ``center_crop``, used by
    the original's spatial-map datasets and inference); ``"floor"``: ``(W - size) // 2`` (the
    original's box/keypoint datasets and CLIP's preprocessing).
    """
    w, h = im.size
    size = min(w, h) if size is None else int(size)
    if rounding == "round":
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    elif rounding == "floor":
        left, top = (w - size) // 2, (h - size) // 2
    else:
        raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    return im.crop((left, top, left + size, top + size))


def one_hot(labels: torch.Tensor, num_classes: int = SEM_CHANNELS) -> torch.Tensor:
    """(H, W) integer label map -> (num_classes, H, W) float32 one-hot.

    Raises ``ValueError`` for a label outside ``[0, num_classes)`` (ADE20K maps hold 0..150).
    """
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"label values must lie in [0, {num_classes}), got [{int(labels.min())}, "
                         f"{int(labels.max())}] (ADE20K class indices 0..150 expected)")
    return torch.zeros(num_classes, *labels.shape).scatter_(0, labels[None], 1.0)
