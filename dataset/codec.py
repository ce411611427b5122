"""Encoding of images, embeddings and rows inside GLIGEN TSV files.

* images: base64 (standard alphabet) of a JPEG written by PIL with default settings (quality 75);
* embeddings: base64 of raw little-endian float32 bytes;
* a row: ``[str(data_id), json.dumps(item)]`` (JSON is ASCII-escaped).

Decoding failures raise :class:`CorruptSampleError`, which the datasets catch to skip a row.
"""
from __future__ import annotations

import base64
import binascii
import json
from io import BytesIO
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "CorruptSampleError", "encode_image_b64", "decode_image_b64", "decode_image_bytes",
    "encode_embedding_b64", "decode_embedding_b64", "encode_row", "decode_row", "require",
]


class CorruptSampleError(Exception):
    """A sample (TSV row, image file, label map ...) cannot be decoded."""


def encode_image_b64(image: Image.Image, format: str = "JPEG") -> str:
    """PIL image -> base64 string of its JPEG bytes (RGB, PIL default quality)."""
    buf = BytesIO()
    image.convert("RGB").save(buf, format=format)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image_bytes(data: bytes, mode: str = "RGB") -> Image.Image:
    """Image file bytes -> fully loaded PIL image converted to ``mode``."""
    from ldm.imageops import open_image

    # size-checked: a decompression bomb in a row is a corrupt sample, not an out-of-memory
    return open_image(bytes(data), mode, "row image", error=CorruptSampleError)


def decode_image_b64(s: str, mode: str = "RGB") -> Image.Image:
    """base64 string -> PIL image in ``mode`` (fully loaded, so truncation errors surface here)."""
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        raise CorruptSampleError(f"invalid base64 image: {e}") from e
    return decode_image_bytes(data, mode)


def encode_embedding_b64(x) -> str:
    """1-D embedding (tensor / array / list) -> base64 of little-endian float32 bytes."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(x, dtype="<f4").reshape(-1))
    return base64.b64encode(arr.tobytes()).decode("ascii")


def decode_embedding_b64(s: str, expected_len: int | None = None) -> torch.Tensor:
    """base64 float32 string -> ``(D,)`` float32 tensor (a writable copy)."""
    try:
        data = base64.b64decode(s, validate=True)
        arr = np.frombuffer(data, dtype="<f4").astype(np.float32)  # astype copies -> writable
    except (binascii.Error, ValueError, TypeError) as e:
        raise CorruptSampleError(f"invalid base64 float32 embedding: {e}") from e
    if expected_len is not None and arr.shape[0] != expected_len:
        raise CorruptSampleError(f"embedding has {arr.shape[0]} values, expected {expected_len}")
    if not np.all(np.isfinite(arr)):
        raise CorruptSampleError("embedding contains NaN/inf")
    return torch.from_numpy(arr)


def encode_row(item: dict) -> list[str]:
    """``item`` (with ``data_id``) -> the two TSV columns ``[str(data_id), json.dumps(item)]``."""
    return [str(item["data_id"]), json.dumps(item)]


def decode_row(row: Sequence[str]) -> dict[str, Any]:
    """Two TSV columns -> the JSON object of the row."""
    if len(row) != 2:
        raise CorruptSampleError(f"expected 2 TSV columns (key, json), got {len(row)}")
    try:
        item = json.loads(row[1])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptSampleError(f"undecodable JSON: {e}") from e
    if not isinstance(item, dict):
        raise CorruptSampleError("row JSON is not an object")
    return item


def require(item: dict, key: str):
    """``item[key]`` or :class:`CorruptSampleError` naming the missing field."""
    try:
        return item[key]
    except (KeyError, TypeError) as e:
        raise CorruptSampleError(f"missing field {key!r}") from e
