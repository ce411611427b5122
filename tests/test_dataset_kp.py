"""KeypointDataset (the original's ``dataset/dataset_kp.py``) on tiny COCO-style JSONs."""
import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data_helpers import rand_image, write_json  # noqa: E402

from dataset.dataset_kp import KeypointDataset  # noqa: E402

S = 32


def kps(points):
    """{joint index: (x, y, v)} -> COCO flat list of 51 numbers."""
    flat = [0] * 51
    for k, (x, y, v) in points.items():
        flat[3 * k:3 * k + 3] = [x, y, v]
    return flat


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rand_image(64, 64, 1).save(root / "a.jpg")
    rand_image(64, 64, 2).save(root / "b.jpg")
    rand_image(64, 64, 3).save(root / "c.jpg")
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "c.jpg"}]
    annotations = [
        # small person: valid nose, eye with visibility 1 (-> invalid)
        {"id": 10, "image_id": 1, "bbox": [0, 0, 20, 20], "area": 1, "iscrowd": 0, "segmentation": [],
         "keypoints": kps({0: (10, 10, 2), 1: (12, 8, 1)})},
        # big person: two valid joints
        {"id": 11, "image_id": 1, "bbox": [10, 10, 50, 50], "keypoints": kps({5: (20, 30, 2), 16: (60, 62, 2)})},
        # no visible keypoints -> dropped
        {"id": 12, "image_id": 1, "bbox": [0, 0, 60, 60], "keypoints": kps({3: (5, 5, 1)})},
        # image 3 has a person annotation, image 2 none
        {"id": 13, "image_id": 3, "bbox": [0, 0, 64, 64], "keypoints": kps({0: (32, 32, 2)})},
    ]
    captions = [{"id": 1, "image_id": 1, "caption": "two people"}, {"id": 2, "image_id": 1, "caption": "persons"},
                {"id": 3, "image_id": 3, "caption": "one person"}]
    kp_path = write_json(str(tmp_path / "kp.json"), {"images": images, "annotations": annotations})
    cap_path = write_json(str(tmp_path / "cap.json"), {"images": images, "annotations": captions})
    return str(root), kp_path, cap_path


def make_ds(coco, **kw):
    root, kp_path, cap_path = coco
    params = dict(image_size=S, max_persons_per_image=3, random_flip=False, prob_real_caption=1)
    params.update(kw)
    return KeypointDataset(root, kp_path, cap_path, **params)


def test_keypoint_outputs(coco):
    ds = make_ds(coco)
    assert len(ds) == 2  # image 2 has no persons
    out = ds[0]
    assert set(out) == {"id", "image", "caption", "points", "masks"}
    assert out["id"] == 1 and out["caption"] in ("two people", "persons")
    assert out["image"].shape == (3, S, S)
    assert out["points"].shape == (51, 2) and out["masks"].shape == (51,)
    assert out["points"].dtype == torch.float32 and out["masks"].dtype == torch.float32
    # scale 0.5, no crop; big person first
    m = out["masks"].view(3, 17)
    assert m[0].nonzero().flatten().tolist() == [5, 16]
    assert m[1].nonzero().flatten().tolist() == [0]
    assert m[2].sum() == 0  # third person dropped (no visible keypoint)
    p = out["points"].view(3, 17, 2)
    assert torch.allclose(p[0, 5], torch.tensor([10, 15]) / S)
    assert torch.allclose(p[0, 16], torch.tensor([30, 31]) / S)
    assert torch.allclose(p[1, 0], torch.tensor([5, 5]) / S)
    assert p[1, 1].abs().sum() == 0  # visibility 1 is invalid


def test_keypoint_flip_and_limits(coco):
    ds = make_ds(coco, random_flip=True, max_persons_per_image=1)
    ref = make_ds(coco, max_persons_per_image=1)[0]
    for seed in range(20):
        random.seed(seed)
        out = ds[0]
        if not torch.equal(out["image"], ref["image"]):
            break
    assert torch.equal(out["image"], ref["image"].flip(-1))
    assert out["points"].shape == (17, 2)
    assert torch.allclose(out["points"][5], torch.tensor([1 - 10 / S, 15 / S]))  # identities not swapped
    assert len(make_ds(coco, max_images=1)) == 1


def test_keypoint_caption_options(coco):
    root, kp_path, _ = coco
    assert make_ds(coco, prob_real_caption=0)[1]["caption"] == ""
    with pytest.raises(ValueError):
        KeypointDataset(root, kp_path, None, prob_real_caption=1)
    out = KeypointDataset(root, kp_path, None, image_size=S)[1]
    assert out["caption"] == "" and out["id"] == 3


def test_missing_image_is_skipped(coco, tmp_path):
    os.remove(tmp_path / "images" / "a.jpg")
    ds = make_ds(coco)
    with pytest.warns(RuntimeWarning, match="a.jpg"):
        assert ds[0]["id"] == 3
    assert ds.skipped_rows == 1


def test_equal_size_persons_take_the_original_slots(tmp_path):
    """Equal-size persons are ordered by ``torch.tensor(areas).sort(descending=True)`` (float32,
    torch's tie order): it decides which persons survive the cut and which slot (learned per-slot
    embedding) each one lands in."""
    root = tmp_path / "images"
    root.mkdir()
    rand_image(64, 64, 1).save(root / "a.jpg")
    images = [{"id": 1, "file_name": "a.jpg"}]
    n, P = 40, 8  # enough for torch.sort to leave file order on ties
    sizes = [20, 20, 10, 20, 10, 20]  # box side per person (two sizes, many ties)
    annotations = [{"id": k, "image_id": 1, "bbox": [k, k, sizes[k % 6], sizes[k % 6]],
                    "keypoints": kps({0: (k + 1, k + 1, 2)})} for k in range(n)]
    kp_path = write_json(str(tmp_path / "kp.json"), {"images": images, "annotations": annotations})
    out = KeypointDataset(str(root), kp_path, None, image_size=64, max_persons_per_image=P, random_flip=False,
                          prob_real_caption=0)[0]
    slots = [round(float(out["points"][17 * s, 0]) * 64) - 1 for s in range(P)]  # nose x = k + 1
    areas = [float(sizes[k % 6] ** 2) for k in range(n)]
    assert slots == torch.tensor(areas).sort(descending=True).indices.tolist()[:P]
    assert slots != sorted(range(n), key=lambda k: -areas[k])[:P]  # not the stable order
