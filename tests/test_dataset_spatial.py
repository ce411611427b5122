"""Spatial-condition datasets: hed / canny / depth, normal, semantic."""
import os
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data_helpers import box_item, rand_image, write_json, write_tsv  # noqa: E402

from dataset.codec import encode_image_b64  # noqa: E402
from dataset.dataset_canny import CannyDataset  # noqa: E402
from dataset.dataset_depth import DepthDataset  # noqa: E402
from dataset.dataset_hed import HedDataset  # noqa: E402
from dataset.dataset_normal import NormalDataset  # noqa: E402
from dataset.dataset_sem import SemanticDataset  # noqa: E402

S = 16


def half_image(w=40, h=30, mode="RGB"):
    """Left half white, right half black (so flips are visible)."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = 255
    return Image.fromarray(arr).convert(mode)


def parallel_tsvs(tmp_path, key, n=2, ids=None):
    main = write_tsv(str(tmp_path / "main.tsv"),
                     [box_item(i, half_image(), [], caption=f"cap {i}") for i in range(n)])
    ids = ids or list(range(n))
    cond = write_tsv(str(tmp_path / f"{key}.tsv"),
                     [{"data_id": i, key: encode_image_b64(half_image(mode="L"))} for i in ids])
    return main, cond


@pytest.mark.parametrize("cls,key", [(HedDataset, "hed_edge"), (CannyDataset, "canny_edge"), (DepthDataset, "depth")])
def test_parallel_tsv_datasets(tmp_path, cls, key):
    main, cond = parallel_tsvs(tmp_path, key)
    ds = cls(main, cond, image_size=S, random_flip=True)
    assert len(ds) == 2 and ds.total_images() == 2
    seen = set()
    for seed in range(10):
        random.seed(seed)
        out = ds[1]
        assert set(out) == {"id", "image", key, "mask", "caption"}
        assert out["id"] == 1 and out["caption"] == "cap 1"
        assert out["image"].shape == (3, S, S) and out[key].shape == (3, S, S)
        assert out[key].dtype == torch.float32 and out[key].min() >= -1 and out[key].max() <= 1
        assert torch.equal(out[key][0], out[key][1]) and torch.equal(out[key][0], out[key][2])  # grey -> 3 ch
        assert out["mask"].shape == () and out["mask"] == 1
        # image and condition are flipped together
        left_white = out["image"][0, :, 0].mean() > 0
        assert left_white == (out[key][0, :, 0].mean() > 0)
        seen.add(bool(left_white))
    assert seen == {True, False}
    assert cls(main, cond, image_size=S, prob_use_caption=0)[0]["caption"] == ""


def test_parallel_tsv_alignment_errors(tmp_path):
    main, cond = parallel_tsvs(tmp_path, "hed_edge", ids=[0, 5])
    ds = HedDataset(main, cond, image_size=S)
    ds[0]
    with pytest.raises(ValueError, match="not aligned"):
        ds[1]
    short = write_tsv(str(tmp_path / "short.tsv"), [{"data_id": 0, "hed_edge": encode_image_b64(half_image())}])
    with pytest.raises(ValueError, match="row-aligned"):
        HedDataset(main, short, image_size=S)


def test_spatial_collate(tmp_path):
    main, cond = parallel_tsvs(tmp_path, "depth")
    batch = next(iter(torch.utils.data.DataLoader(DepthDataset(main, cond, image_size=S), batch_size=2)))
    assert batch["depth"].shape == (2, 3, S, S) and batch["mask"].shape == (2,)


def test_normal_dataset(tmp_path):
    img_dir, nrm_dir = tmp_path / "image_train" / "scene", tmp_path / "normal_train" / "scene"
    img_dir.mkdir(parents=True)
    nrm_dir.mkdir(parents=True)
    normal = np.zeros((30, 40, 3), dtype=np.float32)
    normal[..., 0], normal[..., 1], normal[..., 2] = 1.0, -1.0, 0.0
    for name in ("a", "b", "c"):
        rand_image(40, 30).save(img_dir / f"{name}.png")
    for name in ("a", "b"):  # "c" has no normal map -> dropped
        np.save(nrm_dir / f"{name}_normal.npy", normal)
    caps = write_json(str(tmp_path / "diode_cation.json"), {"a.png": "cap a", "b": "cap b"})
    ds = NormalDataset(str(tmp_path / "image_train"), str(tmp_path / "normal_train"), caps, image_size=S)
    assert len(ds) == 2
    out = ds[1]
    assert set(out) == {"id", "image", "normal", "mask", "caption"}
    assert out["id"] == 1 and out["caption"] == "cap b" and out["normal"].shape == (3, S, S)
    assert torch.allclose(out["normal"][0], torch.ones(S, S))
    assert torch.allclose(out["normal"][1], torch.full((S, S), -1.0))
    assert torch.allclose(out["normal"][2], torch.full((S, S), 127 / 127.5 - 1))


def make_sem(tmp_path, label_value=3):
    img_dir, lab_dir = tmp_path / "images", tmp_path / "annotations"
    img_dir.mkdir(exist_ok=True)
    lab_dir.mkdir(exist_ok=True)
    label = np.zeros((30, 40), dtype=np.uint8)
    label[:, 20:] = label_value
    label[:5, :5] = 150
    for name in ("ADE_1", "ADE_2"):
        rand_image(40, 30).save(img_dir / f"{name}.jpg")
        Image.fromarray(label, "L").save(lab_dir / f"{name}.png")
    caps = write_json(str(tmp_path / "ade_cation.json"), {"ADE_1.jpg": "one", "ADE_2.jpg": "two"})
    return str(img_dir), str(lab_dir), caps


def test_semantic_dataset_one_hot(tmp_path):
    ds = SemanticDataset(*make_sem(tmp_path), image_size=S)
    out = ds[0]
    assert set(out) == {"id", "image", "sem", "mask", "caption"}
    sem = out["sem"]
    assert sem.shape == (152, S, S) and sem.dtype == torch.float32
    assert torch.equal(sem.sum(0), torch.ones(S, S))
    assert set(sem.argmax(0).unique().tolist()) <= {0, 3, 150}  # NEAREST: no new labels
    assert sem[3].sum() > 0 and sem[151].sum() == 0
    assert out["caption"] == "one"


def test_semantic_label_out_of_range(tmp_path):
    ds = SemanticDataset(*make_sem(tmp_path, label_value=200), image_size=S)
    with pytest.raises(ValueError, match="200"):
        ds[0]


def test_semantic_pairing_error(tmp_path):
    img_dir, lab_dir, caps = make_sem(tmp_path)
    os.remove(os.path.join(lab_dir, "ADE_2.png"))
    with pytest.raises(ValueError, match="ADE_2"):
        SemanticDataset(img_dir, lab_dir, caps, image_size=S)
