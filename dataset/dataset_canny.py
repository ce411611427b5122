"""Canny edge map (0/255) condition dataset: a thin wrapper of the shared implementation."""
from __future__ import annotations

from .spatial_dataset import ParallelTSVConditionDataset

__all__ = ["CannyDataset"]


class CannyDataset(ParallelTSVConditionDataset):
    """Main CC3M TSV + parallel `canny_edge` TSV.

    Output: ``id``, ``image`` (3, S, S), ``canny_edge`` (3, S, S) in [-1, 1] (grey map in 3 identical
    channels), ``mask`` (scalar 1.0), ``caption``.
    """

    def __init__(self, tsv_path, canny_tsv_path, prob_use_caption=1, image_size=512, random_flip=False):
        super().__init__(tsv_path, canny_tsv_path, "canny_edge", prob_use_caption=prob_use_caption,
                         image_size=image_size, random_flip=random_flip)
