"""Common dataset behaviour: corrupt-sample skipping, ``total_images`` and box previews."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image

from ldm.imageops import from_m11

from .codec import CorruptSampleError

__all__ = ["BaseDataset", "draw_boxes"]


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor | None, masks: torch.Tensor | None = None) -> Image.Image:
    """image: (3, H, W) in [-1, 1]; boxes: (N, 4) normalised xyxy (or None); masks: (N,) -> PIL image
    with the valid, non-padding boxes drawn (by :func:`ldm.inference.visualize.draw_boxes`)."""
    from ldm.inference.visualize import draw_boxes as draw

    kept = [box.tolist() for i, box in enumerate(boxes if boxes is not None else [])
            if (masks is None or float(masks[i]) != 0) and any(float(v) != 0 for v in box)]
    return draw(from_m11(image), kept, min_side=0)


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
