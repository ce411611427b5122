"""Common dataset behaviour: corrupt-sample skipping, ``total_images`` and box previews."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw

from .codec import CorruptSampleError

__all__ = ["BaseDataset", "draw_boxes", "BOX_COLORS"]

BOX_COLORS = ["red", "olive", "blue", "green", "orange", "brown", "cyan", "purple"]


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor | None, masks: torch.Tensor | None = None) -> Image.Image:
    """image: (3, H, W) in [-1, 1]; boxes: (N, 4) normalised xyxy (or None) -> PIL image with boxes drawn."""
    arr = ((image.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5) * 255).round().byte()
    pil = Image.fromarray(arr.permute(1, 2, 0).numpy())
    W, H = pil.size
    draw = ImageDraw.Draw(pil)
    for i, box in enumerate(boxes if boxes is not None else []):
        if masks is not None and float(masks[i]) == 0:
            continue
        x0, y0, x1, y1 = box.tolist()
        if x0 == y0 == x1 == y1 == 0:
            continue
        draw.rectangle([x0 * W, y0 * H, x1 * W, y1 * H], outline=BOX_COLORS[i % len(BOX_COLORS)], width=4)
    return pil


class BaseDataset(torch.utils.data.Dataset):
    """Base class of every GLIGEN dataset.

    Subclasses implement ``__len__`` and ``get_item(index) -> dict``. ``get_item`` raises
    :class:`~dataset.codec.CorruptSampleError` for an undecodable sample; ``__getitem__`` then
    warns, increments ``skipped_rows`` (per process: each DataLoader worker counts its own),
    and returns the next decodable sample instead so training goes on.
    """

    #: give up after this many consecutive corrupt samples
    max_corrupt_retries = 100

    def __init__(self):
        self.skipped_rows = 0
        self._corrupt_indices: set[int] = set()

    def get_item(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe_sample(self, index: int) -> str:
        """Human readable location of sample ``index`` for warnings."""
        return f"{type(self).__name__} sample {index}"

    def __getitem__(self, index):
        index = int(index)
        n = len(self)
        if n == 0:
            raise IndexError(f"{type(self).__name__} is empty")
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
        tries, i, last_error = 0, index, None
        while True:
            if i not in self._corrupt_indices:
                try:
                    return self.get_item(i)
                except CorruptSampleError as e:
                    self._corrupt_indices.add(i)
                    self.skipped_rows += 1
                    last_error = f"{self.describe_sample(i)}: {e}"
                    warnings.warn(f"skipping corrupt {last_error}", RuntimeWarning, stacklevel=2)
            tries += 1
            if tries >= min(n, self.max_corrupt_retries):
                raise RuntimeError(f"{type(self).__name__}: {tries} consecutive corrupt samples starting at "
                                   f"index {index}; giving up (skipped_rows={self.skipped_rows}; "
                                   f"last error: {last_error})")
            i = (i + 1) % n

    def total_images(self) -> int:
        return len(self)

    def vis_getitem_data(self, index=None, out=None, return_tensor=False, name="res.jpg", print_caption=True):
        """Draw the sample's boxes (if any) on its image; returns a (3, S, S) [0, 1] tensor or saves ``name``."""
        if out is None:
            out = self[index]
        pil = draw_boxes(out["image"], out.get("boxes"), out.get("masks"))
        if print_caption:
            print(out.get("caption", ""))
        if return_tensor:
            return torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
        pil.save(name)
