"""ADE20K semantic-map dataset (data.md §6.3)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .spatial_dataset import SpatialConditionDataset, captions_for, file_base, load_captions, open_image, \
    recursively_read

__all__ = ["SemanticDataset", "NUM_SEM_CHANNELS", "one_hot_labels"]

#: 151 ADE20K values (0 = unlabeled, 1..150 = classes) + one always-zero spare channel
NUM_SEM_CHANNELS = 152


def one_hot_labels(label: torch.Tensor, num_classes: int = NUM_SEM_CHANNELS) -> torch.Tensor:
    """label: (H, W) integer map -> (num_classes, H, W) float32 one-hot.

    Raises ``ValueError`` for a class id outside ``[0, num_classes)``.
    """
    label = label.long()
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        raise ValueError(f"semantic label values must lie in [0, {num_classes}), got "
                         f"[{int(label.min())}, {int(label.max())}] (ADE20K class indices 0..150 expected)")
    return torch.zeros(num_classes, *label.shape).scatter_(0, label.unsqueeze(0), 1.0)


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
        if max_value >= NUM_SEM_CHANNELS:
            raise ValueError(f"{self.sem_files[index]}: label value {max_value} >= {NUM_SEM_CHANNELS}; "
                             f"expected ADE20K class indices 0..150")
        return index, open_image(self.image_files[index]), label, self.captions[index]

    def condition_to_tensor(self, cond: Image.Image) -> torch.Tensor:
        """``S x S`` "L" label map -> (152, S, S) float32 one-hot."""
        return one_hot_labels(torch.from_numpy(np.array(cond, dtype=np.uint8)))
