"""DATA/make_tsv.py and DATA/tsv_split_merge.py end to end with a tiny random CLIP."""
import json
import os
import sys

import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data_helpers import make_tiny_clip, rand_image, write_json, write_tsv  # noqa: E402

from DATA.make_tsv import load_annotations, main, make_tsv  # noqa: E402
from DATA.tsv_split_merge import merge, split  # noqa: E402
from dataset.codec import decode_embedding_b64, decode_image_b64, decode_row  # noqa: E402
from dataset.tsv import TSVFile  # noqa: E402
from dataset.tsv_dataset import TSVDataset  # noqa: E402
from ldm.modules.encoders.clip_features import CLIPGroundingFeatures, crop_box, reproject_image_embedding  # noqa: E402

SIMPLE = [
    {"file_name": "a.jpg", "caption": "a red car next to a tree",
     "annos": [{"bbox": [4, 4, 40, 20], "phrase": "a red car"},
               {"bbox": [40, 0, 20, 40], "tokens_positive": [[18, 24]]},
               {"bbox": [1, 1, 0, 5], "phrase": "nothing"}]},  # zero width -> dropped
    {"file_name": "b.jpg", "caption": "a dog", "annos": [{"bbox": [0, 0, 30, 30], "phrase": "a dog"}]},
    {"file_name": "missing.jpg", "caption": "gone", "annos": []},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip")))
    return path, CLIPGroundingFeatures(path)


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rand_image(64, 48, 1).save(root / "a.jpg")
    rand_image(40, 40, 2).save(root / "b.jpg")
    return str(root)


def test_make_tsv_simple_format_round_trip(tiny, image_root, tmp_path):
    clip_dir, f = tiny
    out = str(tmp_path / "tsv" / "train-00.tsv")
    with pytest.warns(RuntimeWarning):
        stats = make_tsv(write_json(str(tmp_path / "ann.json"), SIMPLE), image_root, out, features=f,
                         batch_size=2, progress=False)
    assert stats == {"rows": 2, "boxes": 3, "skipped_images": 1, "dropped_boxes": 1}
    tsv = TSVFile(out)
    assert len(tsv) == 2
    item = decode_row(tsv[0])
    assert item["data_id"] == 0 and item["caption"] == SIMPLE[0]["caption"] and item["file_name"] == "a.jpg"
    assert decode_image_b64(item["image"]).size == (64, 48)
    a0, a1 = item["annos"]
    assert a0["tokens_positive"] == [[0, 9]] and a1["tokens_positive"] == [[18, 24]]
    assert a0["data_id"] == 0 and a0["id"] != a1["id"]
    # stored embeddings are the CLIP features of the phrase / box crop
    image = Image.open(os.path.join(image_root, "a.jpg")).convert("RGB")
    before, after = f.encode_text(["a red car", "a tree"])
    assert torch.allclose(decode_embedding_b64(a0["text_embedding_before"]), before[0], atol=1e-5)
    assert torch.allclose(decode_embedding_b64(a1["text_embedding_after"]), after[1], atol=1e-5)
    i_before, i_after = f.encode_images([crop_box(image, a0["bbox"])], mode="crop_resize")
    assert decode_embedding_b64(a0["image_embedding_before"]).shape == (48,)
    assert torch.allclose(decode_embedding_b64(a0["image_embedding_before"]), i_before[0], atol=1e-5)
    assert torch.allclose(decode_embedding_b64(a0["image_embedding_after"]), i_after[0], atol=1e-5)

    # ... and the training dataset reads them back (projection from the same CLIP dir)
    ds = TSVDataset(out, image_size=32, max_boxes_per_data=3, random_flip=False, min_box_size=0.0,
                    clip_version=clip_dir, embedding_len=32)
    sample = ds[0]
    assert sample["masks"].tolist() == [1, 1, 0]
    # box a0 (40x20 = 800 px^2) is larger than a1 (20x40 clipped by the crop) -> first
    assert torch.allclose(sample["text_embeddings"][0], before[0], atol=1e-5)
    expected = reproject_image_embedding(i_after[0], f.projection_matrix)
    assert torch.allclose(sample["image_embeddings"][0], expected, atol=1e-4)


def test_make_tsv_coco_grounding_and_detection(tiny, image_root, tmp_path):
    _, f = tiny
    coco = {"images": [{"id": 7, "file_name": "a.jpg", "caption": "a car", "dataset_name": "x"}],
            "annotations": [{"id": 70, "image_id": 7, "bbox": [0, 0, 10, 10], "tokens_positive": [[2, 5]],
                             "iscrowd": 0, "area": 100, "category_id": 3}]}
    out = str(tmp_path / "g.tsv")
    make_tsv(write_json(str(tmp_path / "g.json"), coco), image_root, out, features=f, progress=False)
    item = decode_row(TSVFile(out)[0])
    assert item["data_id"] == 7 and "dataset_name" not in item
    anno = item["annos"][0]
    assert anno["id"] == 70 and anno["data_id"] == 7 and anno["category_id"] == 3
    assert "iscrowd" not in anno and "area" not in anno and "image_id" not in anno
    assert torch.allclose(decode_embedding_b64(anno["text_embedding_before"]), f.text_before("car")[0], atol=1e-5)

    det = {"images": [{"id": 1, "file_name": "b.jpg"}],
           "annotations": [{"id": 5, "image_id": 1, "bbox": [0, 0, 20, 20], "category_id": 2}],
           "categories": [{"id": 2, "name": "dog"}]}
    out = str(tmp_path / "d.tsv")
    make_tsv(write_json(str(tmp_path / "d.json"), det), image_root, out, features=f, detection=True, progress=False)
    item = decode_row(TSVFile(out)[0])
    assert item["is_det"] is True and "caption" not in item and item["annos"][0]["category_name"] == "dog"
    assert torch.allclose(decode_embedding_b64(item["annos"][0]["text_embedding_before"]),
                          f.text_before("dog")[0], atol=1e-5)


def test_annotation_validation():
    with pytest.raises(ValueError, match="caption"):
        load_annotations([{"file_name": "a.jpg", "annos": []}])
    with pytest.raises(ValueError, match="unique"):
        load_annotations({"images": [{"id": 1, "file_name": "a", "caption": "c"}] * 2, "annotations": []})


def test_cli(tiny, image_root, tmp_path):
    clip_dir, _ = tiny
    ann = write_json(str(tmp_path / "ann.json"), SIMPLE[1:2])
    out = str(tmp_path / "cli.tsv")
    stats = main(["--image_root", image_root, "--annotations", ann, "--out", out, "--clip", clip_dir])
    assert stats["rows"] == 1 and os.path.isfile(str(tmp_path / "cli.lineidx"))


def test_merge_pairs_by_stem_in_natural_order(tmp_path):
    parts = tmp_path / "parts"
    for k in (10, 2, 1):
        write_tsv(str(parts / f"train-{k}.tsv"), [[f"{k}", json.dumps({"part": k, "row": r})] for r in range(2)])
    out = merge(str(parts), str(tmp_path / "merged"))
    assert out.endswith("train-00.tsv")
    tsv = TSVFile(out)
    assert [json.loads(tsv[i][1])["part"] for i in range(len(tsv))] == [1, 1, 2, 2, 10, 10]
    pieces = split(out, str(tmp_path / "split"), chuck_size=40)
    rows = [r for p in pieces for r in TSVFile(p)]
    assert rows == list(tsv) and len(pieces) > 1
