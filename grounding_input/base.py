"""Adapters that turn a data batch into ``position_net`` / ``downsample_net`` inputs, and the
one definition of *null grounding*.

``prepare(batch)`` returns the tokenizer's keyword arguments. The null grounding of those
arguments is :func:`null_grounding`: all zeros, same shapes and dtypes (zero masks select the
tokenizer's learned null features). It is what the classifier-free-guidance branch and the
training-time grounding dropout feed the tokenizer.

The original's adapters also offer ``get_null_input()``, which answers from the shapes remembered
by the last ``prepare``; it is kept for scripts written against that API (and for a UNet called
without ``grounding_input``), but nothing in this project depends on it.
"""
from __future__ import annotations

import torch

from ldm.constants import NUM_KEYPOINTS


def null_grounding(grounding_input: dict) -> dict:
    """The null grounding of ``grounding_input`` (tokenizer kwargs): every tensor replaced by zeros
    of the same shape, dtype and device. Pure: depends on nothing but its argument."""
    return {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else v for k, v in grounding_input.items()}


class GroundingNetInput:
    """Generic adapter: ``fields`` maps batch keys to the tokenizer's keyword names."""

    fields: dict[str, str] = {}

    def __init__(self):
        self.set = False
        self.batch = None
        self.device = None
        self.dtype = None
        self._shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}

    def prepare(self, batch: dict) -> dict:
        missing = [k for k in self.fields if k not in batch]
        if missing:
            raise KeyError(f"{type(self).__name__}.prepare: batch lacks {missing} (has {sorted(batch)})")
        out = {name: batch[key] for key, name in self.fields.items()}
        first = next(iter(out.values()))
        self.batch, self.device, self.dtype = first.shape[0], first.device, self._reference_dtype(out)
        self._shapes = {name: (tuple(t.shape[1:]), t.dtype) for name, t in out.items()}
        self.set = True
        return out

    def _reference_dtype(self, out: dict) -> torch.dtype:
        floats = [t.dtype for t in out.values() if t.is_floating_point()]
        return floats[-1] if floats else torch.float32

    def get_null_input(self, batch: int | None = None, device=None, dtype=None) -> dict:
        """The original's API: zeros shaped like the last ``prepare``'s output (floats in the
        last float dtype seen). Prefer :func:`null_grounding`, which needs no remembered state."""
        if not self.set:
            raise RuntimeError(f"{type(self).__name__}.get_null_input called before prepare()")
        b = self.batch if batch is None else batch
        device = self.device if device is None else device
        out = {}
        for name, (shape, t_dtype) in self._shapes.items():
            d = dtype if dtype is not None else (self.dtype if t_dtype.is_floating_point else t_dtype)
            out[name] = torch.zeros((b, *shape), device=device, dtype=d)
        return out


class BoxTextInput(GroundingNetInput):
    """boxes (B,N,4), masks (B,N), text_embeddings (B,N,D) -> boxes, masks, positive_embeddings."""

    fields = {"boxes": "boxes", "masks": "masks", "text_embeddings": "positive_embeddings"}


class BoxTextImageInput(GroundingNetInput):
    """Boxes with phrase and reference-image features, each with its own mask."""

    fields = {k: k for k in ("boxes", "masks", "text_masks", "image_masks", "text_embeddings", "image_embeddings")}


class KeypointInput(GroundingNetInput):
    """points (B, P*17, 2), masks (B, P*17): P persons x 17 COCO keypoints."""

    fields = {"points": "points", "masks": "masks"}

    @property
    def max_persons_per_image(self) -> int:
        return self._shapes["points"][0][0] // NUM_KEYPOINTS


class SpatialMapInput(GroundingNetInput):
    """A spatial condition map (B, C, H, W) under ``map_key`` plus ``mask`` (B,) or (B, 1)."""

    map_key = "map"

    def __init__(self):
        super().__init__()
        self.fields = {self.map_key: self.map_key, "mask": "mask"}


class GroundingDSInput:
    """Downsampler input: the raw map ``batch[map_key]`` (B, C, H, W)."""

    map_key = "map"

    def prepare(self, batch: dict) -> torch.Tensor:
        if self.map_key not in batch:
            raise KeyError(f"{type(self).__name__}.prepare: batch lacks {self.map_key!r} (has {sorted(batch)})")
        return batch[self.map_key]


def spatial_adapters(map_key: str):
    """The (tokenizer input, downsampler input) adapter classes for one spatial modality."""
    tok = type("GroundingNetInput", (SpatialMapInput,), {"map_key": map_key, "__doc__": f"Tokenizer input for {map_key!r} maps."})
    ds = type("GroundingDSInput", (GroundingDSInput,), {"map_key": map_key, "__doc__": f"Downsampler input for {map_key!r} maps."})
    return tok, ds
