"""DIODE surface-normal dataset."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .codec import CorruptSampleError
from .spatial_dataset import SpatialConditionDataset, captions_for, file_base, load_captions, open_image, \
    recursively_read

__all__ = ["NormalDataset", "NORMAL_SUFFIX"]

NORMAL_SUFFIX = "_normal"


class NormalDataset(SpatialConditionDataset):
    """``<image_base>.png`` under ``image_rootdir`` paired with ``<image_base>_normal.npy`` (H, W, 3)
    in [-1, 1] under ``normal_rootdir``; captions ``{image_file_basename: caption}``.

    Output: ``id`` (= index), ``image`` (3, S, S), ``normal`` (3, S, S) in [-1, 1] (the normal map
    quantised to 8 bit, as the original), ``mask``, ``caption``. Horizontal flips do not negate
    n_x (as the original). Images without a normal file are dropped.
    """

    cond_key = "normal"

    def __init__(self, image_rootdir, normal_rootdir, caption_path, prob_use_caption=1, image_size=512,
                 random_flip=False):
        super().__init__(prob_use_caption, image_size, random_flip)
        images = recursively_read(image_rootdir, exts=("png",))
        normals = {}
        for p in recursively_read(normal_rootdir, must_contain="normal", exts=("npy",)):
            base = file_base(p)
            if base.endswith(NORMAL_SUFFIX):
                normals[base[:-len(NORMAL_SUFFIX)]] = p
        self.image_files = [p for p in images if file_base(p) in normals]
        self.normal_files = [normals[file_base(p)] for p in self.image_files]
        if not self.image_files:
            raise ValueError(f"no <name>.png in {image_rootdir} has a <name>{NORMAL_SUFFIX}.npy in {normal_rootdir}")
        self.captions = captions_for(self.image_files, load_captions(caption_path), caption_path)

    def __len__(self) -> int:
        return len(self.image_files)

    def describe_sample(self, index: int) -> str:
        return f"{self.image_files[index]} / {self.normal_files[index]}"

    def load_pair(self, index: int):
        image = open_image(self.image_files[index])
        path = self.normal_files[index]
        try:
            normal = np.load(path)
        except (OSError, ValueError, EOFError) as e:
            raise CorruptSampleError(f"cannot read {path}: {e}") from e
        if normal.ndim != 3 or normal.shape[2] != 3:
            raise CorruptSampleError(f"{path}: expected (H, W, 3) normals, got shape {normal.shape}")
        normal = ((np.clip(normal, -1, 1) * 0.5 + 0.5) * 255).astype(np.uint8)
        return index, image, Image.fromarray(normal, "RGB"), self.captions[index]
