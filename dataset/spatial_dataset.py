"""Spatially aligned condition datasets: one implementation for every modality.

:class:`SpatialConditionDataset` owns the sample assembly (shared geometric pipeline, caption
drop, ``mask``); subclasses only say where an ``(image, condition)`` pair comes from and, if
needed, how the condition becomes a tensor:

* :class:`ParallelTSVConditionDataset` – main CC3M TSV + a row-aligned condition TSV
  (hed / canny / depth; thin aliases in ``dataset_hed.py`` etc.);
* ``dataset_normal.NormalDataset`` and ``dataset_sem.SemanticDataset`` – files.
"""
from __future__ import annotations

import json
import os
import random
import warnings

import torch
from PIL import Image

from ldm import imageops

from .base_dataset import BaseDataset
from .codec import CorruptSampleError, decode_image_b64, decode_row, require
from .transforms import paired_center_crop_resize_flip
from .tsv import TSVFile

__all__ = ["SpatialConditionDataset", "ParallelTSVConditionDataset", "recursively_read", "load_captions",
           "file_base", "open_image"]


def file_base(path: str) -> str:
    """Base name up to its **first** dot: ``a/b/x_normal.npy`` -> ``x_normal``."""
    return os.path.basename(path).split(".", 1)[0]


def recursively_read(rootdir: str, must_contain: str = "", exts=("png",)) -> list[str]:
    """Sorted files under ``rootdir`` whose text after the first dot is in ``exts`` and whose full
    path contains ``must_contain``."""
    if not os.path.isdir(rootdir):
        raise FileNotFoundError(f"directory not found: {rootdir}")
    out = []
    for root, _, files in os.walk(rootdir):
        for name in files:
            parts = name.split(".", 1)
            path = os.path.join(root, name)
            if len(parts) == 2 and parts[1] in exts and must_contain in path:
                out.append(path)
    return sorted(out)


def load_captions(caption_path: str) -> dict:
    """Caption JSON ``{image_file_basename: caption}``."""
    if not os.path.isfile(caption_path):
        raise FileNotFoundError(f"caption file not found: {caption_path}")
    with open(caption_path, encoding="utf-8") as f:
        captions = json.load(f)
    if not isinstance(captions, dict):
        raise ValueError(f"{caption_path} must contain a JSON object {{image_file_basename: caption}}")
    return captions


def captions_for(image_paths, captions: dict, caption_path: str) -> list[str]:
    """Caption per image, looked up by file name, then by :func:`file_base`; missing -> "" (warned)."""
    out, missing = [], 0
    for p in image_paths:
        name = os.path.basename(p)
        cap = captions.get(name, captions.get(file_base(p)))
        if cap is None:
            missing += 1
            cap = ""
        out.append(str(cap))
    if missing:
        warnings.warn(f"{missing} of {len(out)} images have no caption in {caption_path}; using ''", RuntimeWarning)
    return out


def open_image(path: str, mode: str = "RGB") -> Image.Image:
    """:func:`ldm.imageops.open_image` raising :class:`CorruptSampleError` (the sample is skipped)."""
    return imageops.open_image(path, mode, error=CorruptSampleError)


class SpatialConditionDataset(BaseDataset):
    """Image + spatially aligned condition map.

    Output of ``ds[i]``: ``id``, ``image`` (3, S, S) in [-1, 1], ``<cond_key>`` (see
    :meth:`condition_to_tensor`; default (3, S, S) in [-1, 1]), ``mask`` = ``tensor(1.0)``
    (collates to (B,)), ``caption`` (kept with probability ``prob_use_caption``, else "").

    Subclasses set ``cond_key`` and implement ``__len__`` and
    ``load_pair(index) -> (id, image: PIL RGB, cond: PIL, caption: str)``.
    """

    cond_key: str = "cond"
    #: PIL filter for resizing the condition (None = PIL default, BICUBIC)
    cond_resample = None

    def __init__(self, prob_use_caption=1, image_size=512, random_flip=False):
        super().__init__()
        self.prob_use_caption = prob_use_caption
        self.image_size = image_size
        self.random_flip = random_flip

    def load_pair(self, index: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def condition_to_tensor(self, cond: Image.Image) -> torch.Tensor:
        """``S x S`` PIL condition -> tensor; default ``(3, S, S)`` in [-1, 1]."""
        return imageops.to_m11(cond.convert("RGB"))

    def get_item(self, index: int) -> dict:
        data_id, image, cond, caption = self.load_pair(index)
        if image.size != cond.size:
            raise CorruptSampleError(f"image size {image.size} != {self.cond_key} size {cond.size}")
        image, cond = paired_center_crop_resize_flip(image, cond, self.image_size, self.random_flip,
                                                     self.cond_resample)
        return {
            "id": data_id,
            "image": imageops.to_m11(image),
            self.cond_key: self.condition_to_tensor(cond),
            "mask": torch.tensor(1.0),
            "caption": caption if random.uniform(0, 1) < self.prob_use_caption else "",
        }


class ParallelTSVConditionDataset(SpatialConditionDataset):
    """Main box TSV (image + caption) + row-aligned condition TSV holding field ``cond_key``
    (a base64 image). Row ``i`` pairs with row ``i``; their ``data_id`` must match.
    """

    def __init__(self, tsv_path, cond_tsv_path, cond_key, prob_use_caption=1, image_size=512,
                 random_flip=False):
        super().__init__(prob_use_caption, image_size, random_flip)
        self.cond_key = cond_key
        self.tsv_path, self.cond_tsv_path = tsv_path, cond_tsv_path
        self.tsv_file = TSVFile(tsv_path)
        self.cond_tsv_file = TSVFile(cond_tsv_path)
        if len(self.tsv_file) != len(self.cond_tsv_file):
            raise ValueError(f"{tsv_path} has {len(self.tsv_file)} rows but {cond_tsv_path} has "
                             f"{len(self.cond_tsv_file)}; the condition TSV must be row-aligned")

    def __len__(self) -> int:
        return len(self.tsv_file)

    def describe_sample(self, index: int) -> str:
        return f"row {index} of {self.tsv_path} / {self.cond_tsv_path}"

    def load_pair(self, index: int):
        try:
            item = decode_row(self.tsv_file[index])
            cond_item = decode_row(self.cond_tsv_file[index])
        except UnicodeDecodeError as e:
            raise CorruptSampleError(f"row is not UTF-8: {e}") from e
        data_id = require(item, "data_id")
        if require(cond_item, "data_id") != data_id:
            raise ValueError(f"row {index}: data_id {data_id!r} of {self.tsv_path} != "
                             f"{cond_item['data_id']!r} of {self.cond_tsv_path}; the TSVs are not aligned")
        image = decode_image_b64(require(item, "image"))
        cond = decode_image_b64(require(cond_item, self.cond_key))
        return data_id, image, cond, str(item.get("caption", ""))
