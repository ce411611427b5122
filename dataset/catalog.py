"""Registry of training datasets.

``DatasetCatalog(ROOT)`` defines one attribute per dataset name; each value is
``{"target": "<module.Class>", "train_params": {kwargs}}`` with paths joined onto ``ROOT``
(= ``--DATA_ROOT``). YAML ``train_dataset_names`` entries add/override kwargs (see
``dataset.concat_dataset.ConCatDataset``).
"""
from __future__ import annotations

import os

__all__ = ["DatasetCatalog"]

_BOX = "dataset.tsv_dataset.TSVDataset"

# name -> (target, {kwarg: path relative to ROOT})
_CATALOG = {
    "VGGrounding": (_BOX, {"tsv_path": "GROUNDING/gqa/tsv/train-00.tsv"}),
    "FlickrGrounding": (_BOX, {"tsv_path": "GROUNDING/flickr30k/tsv/train-00.tsv"}),
    "SBUGrounding": (_BOX, {"tsv_path": "GROUNDING/SBU/tsv/train-00.tsv"}),
    "CC3MGrounding": (_BOX, {"tsv_path": "GROUNDING/CC3M/tsv/train-00.tsv"}),
    "CC3MGroundingHed": ("dataset.dataset_hed.HedDataset", {
        "tsv_path": "GROUNDING/CC3M/tsv/train-00.tsv",
        "hed_tsv_path": "GROUNDING/CC3M/tsv_hed/train-00.tsv"}),
    "CC3MGroundingCanny": ("dataset.dataset_canny.CannyDataset", {
        "tsv_path": "GROUNDING/CC3M/tsv/train-00.tsv",
        "canny_tsv_path": "GROUNDING/CC3M/tsv_canny/train-00.tsv"}),
    "CC3MGroundingDepth": ("dataset.dataset_depth.DepthDataset", {
        "tsv_path": "GROUNDING/CC3M/tsv/train-00.tsv",
        "depth_tsv_path": "GROUNDING/CC3M/tsv_depth/train-00.tsv"}),
    "CC12MGrounding": (_BOX, {"tsv_path": "GROUNDING/CC12M/tsv/train-00.tsv"}),
    "Obj365Detection": (_BOX, {"tsv_path": "OBJECTS365/tsv/train-00.tsv"}),
    "COCO2017Keypoint": ("dataset.dataset_kp.KeypointDataset", {
        "image_root": "COCO/images",
        "keypoints_json_path": "COCO/annotations2017/person_keypoints_train2017.json",
        "caption_json_path": "COCO/annotations2017/captions_train2017.json"}),
    "DIODENormal": ("dataset.dataset_normal.NormalDataset", {
        "image_rootdir": "normal/image_train",
        "normal_rootdir": "normal/normal_train",
        "caption_path": "normal/diode_cation.json"}),
    "ADESemantic": ("dataset.dataset_sem.SemanticDataset", {
        "image_rootdir": "ADE/ADEChallengeData2016/images/training",
        "sem_rootdir": "ADE/ADEChallengeData2016/annotations/training",
        "caption_path": "ADE/ade_train_images_cation.json"}),
}


class DatasetCatalog:
    """``getattr(DatasetCatalog(ROOT), name)`` -> ``{"target": str, "train_params": dict}``
    (a fresh dict per catalog instance, so callers may update it)."""

    def __init__(self, ROOT: str):
        self.ROOT = ROOT
        for name, (target, rel_paths) in _CATALOG.items():
            params = {k: os.path.join(ROOT, v) for k, v in rel_paths.items()}
            setattr(self, name, {"target": target, "train_params": params})

    @staticmethod
    def names() -> list[str]:
        """All registered dataset names."""
        return list(_CATALOG)

    def get(self, name: str) -> dict:
        """Entry for ``name``; ``KeyError`` listing the known names if unknown."""
        if name not in _CATALOG:
            raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(self.names())}")
        return getattr(self, name)
