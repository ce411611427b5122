"""Adapters that turn a data batch into ``position_net`` / ``downsample_net`` inputs.

Contract (as the original): ``prepare(batch)`` returns the tokenizer's keyword arguments and
remembers batch size, shapes, device and dtype; ``get_null_input(batch=None, device=None,
dtype=None)`` returns all-zero arguments of the same shapes (zero masks -> the tokenizer's learned
null features), used for the CFG unconditional branch and for grounding dropout in training.
"""
from __future__ import annotations

import torch


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
    """points (B, P*17, 2), masks (B, P*17)."""

    fields = {"points": "points", "masks": "masks"}

    @property
    def max_persons_per_image(self) -> int:
        return self._shapes["points"][0][0] // 17


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
