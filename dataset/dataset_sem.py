"""ADE20K semantic-map dataset (the original's ``dataset/dataset_sem.py``)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ldm.constants import SEM_CHANNELS
from ldm.imageops import one_hot

from .spatial_dataset import SpatialConditionDataset, captions_for, file_base, load_captions, open_image, \
    recursively_read

__all__ = ["SemanticDataset"]


class SemanticDataset(SpatialConditionDataset):
    """``<name>.jpg`` under ``image_rootdir`` paired (by name) with ``<name>.png`` label maps under
    ``sem_rootdir``; captions ``{image_file_basename: caption}``.

    The label map (``convert("L")``, values must be < 152) is cropped/resized with NEAREST and
    flipped with the image, then one-hot encoded. Output: ``id`` (= index), ``image`` (3, S, S),
    ``sem`` (152, S, S) float32 one-hot, ``mask``, ``caption``.
    Raises ``ValueError`` for a label value >= 152.
    """

    cond_key = "sem"
    cond_resample = Image.NEAREST

    def __init__(self, image_rootdir, sem_rootdir, caption_path, prob_use_caption=1, image_size=512,
                 random_flip=False):
        super().__init__(prob_use_caption, image_size, random_flip)
        images = {file_base(p): p for p in recursively_read(image_rootdir, exts=("jpg",))}
        labels = {file_base(p): p for p in recursively_read(sem_rootdir, exts=("png",))}
        if images.keys() != labels.keys():
            only_img = sorted(images.keys() - labels.keys())[:5]
            only_lab = sorted(labels.keys() - images.keys())[:5]
            raise ValueError(f"images in {image_rootdir} and label maps in {sem_rootdir} do not pair up by name "
                             f"(images without label e.g. {only_img}; labels without image e.g. {only_lab})")
        if not images:
            raise ValueError(f"no .jpg images found in {image_rootdir}")
        names = sorted(images)
        self.image_files = [images[n] for n in names]
        self.sem_files = [labels[n] for n in names]
        self.captions = captions_for(self.image_files, load_captions(caption_path), caption_path)

    def __len__(self) -> int:
        return len(self.image_files)

    def describe_sample(self, index: int) -> str:
        return f"{self.image_files[index]} / {self.sem_files[index]}"

    def load_pair(self, index: int):
        label = open_image(self.sem_files[index], mode="L")
        max_value = int(np.asarray(label).max(initial=0))
        if max_value >= SEM_CHANNELS:
            raise ValueError(f"{self.sem_files[index]}: label value {max_value} >= {SEM_CHANNELS}; "
                             f"expected ADE20K class indices 0..150")
        return index, open_image(self.image_files[index]), label, self.captions[index]

    def condition_to_tensor(self, cond: Image.Image) -> torch.Tensor:
        """``S x S`` "L" label map -> (152, S, S) float32 one-hot."""
        return one_hot(torch.from_numpy(np.array(cond, dtype=np.uint8)))
