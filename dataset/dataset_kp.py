"""COCO person-keypoint dataset (the original's ``dataset/dataset_kp.py``)."""
from __future__ import annotations

import json
import os
import random
from collections import defaultdict

import numpy as np
import torch
from PIL import Image, ImageDraw

from ldm.constants import NUM_KEYPOINTS as N_KEYPOINTS  # COCO order: nose, eyes, ears, shoulders, ...
from ldm.imageops import open_image

from .base_dataset import BaseDataset
from .codec import CorruptSampleError, require
from .transforms import largest_first, recalculate_box, transform_image, transform_point

__all__ = ["KeypointDataset"]
_DROPPED_ANNO_FIELDS = ("segmentation", "area", "iscrowd", "id")


def _load_json(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class KeypointDataset(BaseDataset):
    """Images with up to ``max_persons_per_image`` persons x 17 keypoints.

    Output of ``ds[i]`` (P = ``max_persons_per_image``):
    ``id`` (int), ``image`` (3, S, S) in [-1, 1], ``caption`` (str),
    ``points`` (P*17, 2) float32 in [0, 1] (person-major, largest box first; invalid = [0, 0]),
    ``masks`` (P*17,) float32 (1 = valid keypoint).
    Only COCO visibility 2 counts as valid; flips do not swap left/right joints (as the original).
    """

    def __init__(self, image_root, keypoints_json_path=None, caption_json_path=None, prob_real_caption=0,
                 image_size=512, max_images=None, min_box_size=0.0, max_persons_per_image=8,
                 random_crop=False, random_flip=True):
        super().__init__()
        if prob_real_caption > 0 and caption_json_path is None:
            raise ValueError("prob_real_caption > 0 requires caption_json_path")
        if random_crop:
            raise NotImplementedError("random_crop=True is not implemented (as in the original)")
        if max_persons_per_image > 99:
            raise ValueError("max_persons_per_image must be <= 99")
        if keypoints_json_path is None:
            raise ValueError("keypoints_json_path is required")
        self.image_root = image_root
        self.prob_real_caption = prob_real_caption
        self.image_size = image_size
        self.min_box_size = min_box_size
        self.max_persons_per_image = max_persons_per_image
        self.random_flip = random_flip

        kp_json = _load_json(keypoints_json_path)
        cap_json = _load_json(caption_json_path) if caption_json_path is not None else None
        if cap_json is not None and kp_json["images"] != cap_json["images"]:
            raise ValueError(f"'images' of {keypoints_json_path} and {caption_json_path} differ")

        self.images = {im["id"]: im for im in kp_json["images"]}
        self.image_id_to_persons = defaultdict(list)
        for anno in kp_json["annotations"]:
            anno = {k: v for k, v in anno.items() if k not in _DROPPED_ANNO_FIELDS}
            self.image_id_to_persons[anno["image_id"]].append(anno)
        self.image_id_to_captions = defaultdict(list)
        if cap_json is not None:
            for anno in cap_json["annotations"]:
                self.image_id_to_captions[anno["image_id"]].append(anno)
        self.image_ids = [im["id"] for im in kp_json["images"] if self.image_id_to_persons.get(im["id"])]
        self.max_images = max_images

    def __len__(self) -> int:
        n = len(self.image_ids)
        return min(n, self.max_images) if self.max_images else n

    def describe_sample(self, index: int) -> str:
        image_id = self.image_ids[index]
        return f"image {self.images[image_id].get('file_name')} (id {image_id}) under {self.image_root}"

    def _person(self, anno, info):
        """-> (area, points (17, 2) normalised, valid (17,)) or None if the person is dropped."""
        S = self.image_size
        ok, xyxy = recalculate_box(require(anno, "bbox"), info, S, self.min_box_size)
        if not ok:
            return None
        kps = require(anno, "keypoints")
        if len(kps) != 3 * N_KEYPOINTS:
            raise CorruptSampleError(f"expected {3 * N_KEYPOINTS} keypoint values, got {len(kps)}")
        points = torch.zeros(N_KEYPOINTS, 2)
        valid = torch.zeros(N_KEYPOINTS)
        for k in range(N_KEYPOINTS):
            x, y, v = kps[3 * k: 3 * k + 3]
            if v != 2:
                continue
            px, py = transform_point((x, y), info)
            if px < 0 or px > S or py < 0 or py > S:
                continue
            if info.performed_flip:
                px = S - px
            points[k] = torch.tensor([px, py]) / S
            valid[k] = 1
        if valid.sum() == 0:
            return None
        x0, y0, x1, y1 = xyxy
        return (x1 - x0) * (y1 - y0), points, valid

    def get_item(self, index: int) -> dict:
        image_id = self.image_ids[index]
        path = os.path.join(self.image_root, self.images[image_id]["file_name"])
        pil = open_image(path, error=CorruptSampleError)
        image, info = transform_image(pil, self.image_size, self.random_flip)

        persons = [p for p in (self._person(a, info) for a in self.image_id_to_persons[image_id]) if p is not None]
        persons = largest_first(persons, [p[0] for p in persons])[:self.max_persons_per_image]

        P = self.max_persons_per_image
        points = torch.zeros(P * N_KEYPOINTS, 2)
        masks = torch.zeros(P * N_KEYPOINTS)
        for k, (_, pts, valid) in enumerate(persons):
            points[k * N_KEYPOINTS:(k + 1) * N_KEYPOINTS] = pts
            masks[k * N_KEYPOINTS:(k + 1) * N_KEYPOINTS] = valid

        caption = ""
        captions = self.image_id_to_captions.get(image_id, [])
        if random.uniform(0, 1) < self.prob_real_caption and captions:
            caption = captions[random.randint(0, len(captions) - 1)]["caption"]

        return {"id": image_id, "image": image, "caption": caption, "points": points, "masks": masks}

    def vis_getitem_data(self, index=None, out=None, return_tensor=False, name="res.png", print_caption=True):
        """Draw the valid keypoints as radius-3 dots on a grey canvas of size S."""
        if out is None:
            out = self[index]
        S = self.image_size
        canvas = Image.new("RGB", (S, S), (128, 128, 128))
        draw = ImageDraw.Draw(canvas)
        for (x, y), m in zip(out["points"].tolist(), out["masks"].tolist()):
            if m:
                draw.ellipse([x * S - 3, y * S - 3, x * S + 3, y * S + 3], fill=(255, 0, 0))
        if print_caption:
            print(out["caption"])
        if return_tensor:
            return torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255
        canvas.save(name)
