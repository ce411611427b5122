"""TSVDataset (the original's ``dataset/tsv_dataset.py``): transform, boxes, embeddings, drops, captions,
corrupt rows, ordering of equal-size boxes."""
import os
import random
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data_helpers import (D_PROJ, D_TEXT, box_anno, box_item, emb, projection, rand_image,  # noqa: E402
                           simple_box_tsv, write_tsv)

from dataset.tsv_dataset import TSVDataset, mask_for_random_drop_text_or_image_feature  # noqa: E402

S = 32
# Image 100x50 -> scale 0.64 -> resized 64x32 -> crop_x = 16, crop_y = 0.
ANNOS = [
    box_anno([10, 0, 30, 50], 1.0, 0),    # -> [0, 0, 9.6, 32] (clamped), area 307
    box_anno([25, 10, 50, 25], 2.0, 1),   # -> [0, 6.4, 32, 22.4], area 512 (largest)
    box_anno([0, 0, 20, 50], 3.0, 2),     # completely left of the crop -> dropped
    box_anno([50, 25, 2, 2], 4.0, 3),     # 1.3 x 1.3 px -> < 1 % of the crop -> dropped
    box_anno([30, 30, 0, 10], 5.0, 4),    # zero area -> dropped (kept with min_box_size=0)
]


def make_ds(path, **kw):
    params = dict(image_size=S, max_boxes_per_data=4, random_flip=False, which_layer_image="after_reproject",
                  projection_matrix=projection(), embedding_len=D_TEXT)
    params.update(kw)
    return TSVDataset(path, **params)


@pytest.fixture
def geom_tsv(tmp_path):
    return write_tsv(str(tmp_path / "g.tsv"), [box_item(7, rand_image(100, 50), ANNOS, caption="two boxes")])


def test_output_keys_shapes_dtypes(geom_tsv):
    out = make_ds(geom_tsv)[0]
    assert set(out) == {"id", "image", "caption", "boxes", "masks", "image_masks", "text_masks",
                        "text_embeddings", "image_embeddings"}
    assert out["id"] == 7 and out["caption"] == "two boxes"
    assert out["image"].shape == (3, S, S) and out["image"].dtype == torch.float32
    assert out["image"].min() >= -1 and out["image"].max() <= 1
    for k, shape in [("boxes", (4, 4)), ("masks", (4,)), ("image_masks", (4,)), ("text_masks", (4,)),
                     ("text_embeddings", (4, D_TEXT)), ("image_embeddings", (4, D_TEXT))]:
        assert out[k].shape == shape and out[k].dtype == torch.float32, k


def test_boxes_normalised_clamped_filtered_sorted(geom_tsv):
    out = make_ds(geom_tsv)[0]
    expected = torch.tensor([[0, 6.4, 32, 22.4], [0, 0, 9.6, 32]]) / S
    assert torch.allclose(out["boxes"][:2], expected, atol=1e-5)
    assert out["boxes"][2:].abs().sum() == 0
    assert out["masks"].tolist() == [1, 1, 0, 0]
    # embeddings follow the area order (anno 2.0 first), padding stays zero
    assert torch.equal(out["text_embeddings"][0], emb(2.0, D_TEXT))
    assert torch.equal(out["text_embeddings"][1], emb(1.0, D_TEXT))
    assert out["text_embeddings"][2:].abs().sum() == 0


def test_zero_area_box_kept_without_min_size(geom_tsv):
    """As the original: only ``area / S^2 < min_box_size`` drops a box, so with 0 a zero-area box stays."""
    out = make_ds(geom_tsv, min_box_size=0.0)[0]
    assert out["masks"].tolist() == [1, 1, 1, 1]  # tiny box and zero-area box kept, smallest last
    assert torch.equal(out["text_embeddings"][2], emb(4.0, D_TEXT))
    assert torch.equal(out["text_embeddings"][3], emb(5.0, D_TEXT))
    assert out["boxes"][3, 0] == out["boxes"][3, 2]  # x0 == x1


def test_inverted_and_nan_boxes_dropped_even_without_min_size(tmp_path):
    annos = [box_anno([30, 10, -5, 10], 1.0, 0), box_anno([30, 10, float("nan"), 10], 2.0, 1),
             box_anno([25, 10, 50, 25], 3.0, 2)]
    path = write_tsv(str(tmp_path / "n.tsv"), [box_item(1, rand_image(100, 50), annos)])
    out = make_ds(path, min_box_size=0.0)[0]
    assert out["masks"].tolist() == [1, 0, 0, 0] and torch.equal(out["text_embeddings"][0], emb(3.0, D_TEXT))


def test_equal_size_boxes_ordered_as_the_original(tmp_path):
    """Duplicated / equal-size boxes: the original orders them by ``torch.tensor(areas).sort(descending=True)``
    (float32, torch's own tie order), which decides which survive the cut and in which slot."""
    # inside the crop (x in [25, 75] of the 100x50 image); two sizes, many ties
    sizes = [[30, 10, 10, 10], [40, 20, 20, 20], [50, 10, 10, 10], [52, 20, 20, 20], [35, 30, 10, 10]]
    annos = [box_anno(sizes[k % len(sizes)], float(k), k) for k in range(35)]
    path = write_tsv(str(tmp_path / "t.tsv"), [box_item(1, rand_image(100, 50), annos)])
    out = make_ds(path, max_boxes_per_data=30, min_box_size=0.0)[0]
    kept = [int(v) for v in out["text_embeddings"][:, 0].tolist()]
    s, cx = 32 / 50, 16  # the crop's scale and offset

    def area(x, y, w, h):  # the original's recalculated box, in Python floats
        return (((x + w) * s - cx) - (x * s - cx)) * ((y + h) * s - y * s)

    areas = [area(*sizes[k % len(sizes)]) for k in range(35)]
    rule = torch.tensor(areas).sort(descending=True).indices.tolist()[:30]
    assert kept == rule
    stable = sorted(range(35), key=lambda k: -areas[k])[:30]
    assert kept != stable and set(kept) != set(stable)  # a stable sort keeps other boxes / slots


def test_float32_areas_make_ties(tmp_path):
    """Areas equal in float32 but not in float64 are ties for the original (float32 tensor)."""
    from dataset.transforms import largest_first

    items = ["a", "b", "c"]
    assert largest_first(items, [100.0, 100.00000001, 50.0]) == ["a", "b", "c"]
    assert largest_first([], []) == []


def test_max_boxes_truncates_largest_first(geom_tsv):
    out = make_ds(geom_tsv, max_boxes_per_data=1)[0]
    assert out["masks"].tolist() == [1] and torch.equal(out["text_embeddings"][0], emb(2.0, D_TEXT))


def test_flip(geom_tsv):
    ds0, ds1 = make_ds(geom_tsv), make_ds(geom_tsv, random_flip=True)
    ref = ds0[0]
    flipped = None
    for seed in range(20):
        random.seed(seed)
        out = ds1[0]
        if not torch.equal(out["image"], ref["image"]):
            flipped = out
            break
    assert flipped is not None
    assert torch.equal(flipped["image"], ref["image"].flip(-1))
    x0, y0, x1, y1 = ref["boxes"][1]
    assert torch.allclose(flipped["boxes"][1], torch.stack([1 - x1, y0, 1 - x0, y1]))


def test_text_layer_and_image_mappings(geom_tsv):
    P = projection()
    out = make_ds(geom_tsv, which_layer_text="after", which_layer_image="after", embedding_len=D_PROJ)[0]
    assert torch.equal(out["text_embeddings"][0], emb(2.0, D_PROJ))
    e = emb(2.0, D_PROJ) / emb(2.0, D_PROJ).norm()
    assert torch.allclose(out["image_embeddings"][0], e)
    out = make_ds(geom_tsv, which_layer_text="after", which_layer_image="after_renorm", embedding_len=D_PROJ)[0]
    assert torch.allclose(out["image_embeddings"][0], e * 28.7)
    out = make_ds(geom_tsv)[0]
    v = e @ P
    assert torch.allclose(out["image_embeddings"][0], v / v.norm() * 28.7, atol=1e-5)
    assert torch.allclose(out["image_embeddings"][:2].norm(dim=-1), torch.full((2,), 28.7))


def test_projection_matrix_from_file_and_lazy(geom_tsv, tmp_path):
    P = projection(seed=3)
    path = str(tmp_path / "projection_matrix")
    torch.save(P, path)
    ds = make_ds(geom_tsv, projection_matrix=path)
    assert ds._projection_matrix is None  # lazy
    ds[0]
    assert torch.equal(ds.projection_matrix, P)
    # text-only mappings never load it
    ds = make_ds(geom_tsv, projection_matrix=str(tmp_path / "missing"), which_layer_image="after_renorm",
                 which_layer_text="after", embedding_len=D_PROJ)
    ds[0]
    assert ds._projection_matrix is None


def test_random_drop_embedding_semantics():
    random.seed(0)
    masks = torch.ones(4000)
    masks[-1000:] = 0
    img, txt = mask_for_random_drop_text_or_image_feature(masks, "both")
    real = slice(0, 3000)
    assert ((img[real] + txt[real]) >= 1).all()  # never both dropped
    assert img[-1000:].sum() == 0 and txt[-1000:].sum() == 0
    both = ((img[real] == 1) & (txt[real] == 1)).float().mean()
    only_text = ((img[real] == 0) & (txt[real] == 1)).float().mean()
    assert abs(both - 0.5) < 0.04 and abs(only_text - 0.25) < 0.04
    img, txt = mask_for_random_drop_text_or_image_feature(masks, "image")
    assert torch.equal(txt, masks) and abs(img[real].mean() - 0.5) < 0.05 and img[-1000:].sum() == 0
    img, txt = mask_for_random_drop_text_or_image_feature(masks, "none")
    assert torch.equal(img, masks) and torch.equal(txt, masks)


def test_dataset_drop_masks(geom_tsv):
    random.seed(1)
    out = make_ds(geom_tsv, random_drop_embedding="both")[0]
    assert ((out["image_masks"] + out["text_masks"]) >= out["masks"]).all()
    assert (out["image_masks"] <= out["masks"]).all() and (out["text_masks"] <= out["masks"]).all()


def test_caption_probability(tmp_path):
    path = simple_box_tsv(str(tmp_path / "c.tsv"), n=2)
    ds1 = make_ds(path, prob_use_caption=1)
    ds0 = make_ds(path, prob_use_caption=0)
    for _ in range(5):
        assert ds1[1]["caption"] == "a caption 1"
        assert ds0[1]["caption"] == ""


def test_detection_pseudo_caption(tmp_path):
    annos = [box_anno([10, 0, 30, 50], 1.0, 0, category_name="person"),
             box_anno([25, 10, 50, 25], 2.0, 1, category_name="Bed-other")]
    path = write_tsv(str(tmp_path / "d.tsv"), [box_item(3, rand_image(100, 50), annos, is_det=True)])
    assert make_ds(path)[0]["caption"] == "Bed-other, person"  # area order, no cleaning


def test_corrupt_rows_are_skipped_and_counted(tmp_path):
    good = [box_item(i, rand_image(40, 40, i), [box_anno([0, 0, 30, 30], 1.0)]) for i in range(3)]
    bad_b64 = dict(good[0], data_id=100, image="!!not base64!!")
    bad_img = dict(good[0], data_id=101, image="aGVsbG8=")  # base64 of "hello"
    bad_emb = box_item(102, rand_image(40, 40), [dict(box_anno([0, 0, 30, 30], 1.0), text_embedding_before="AAA")])
    rows = [good[0], ["1", "{not json"], good[1], bad_b64, bad_img, bad_emb, good[2]]
    ds = make_ds(write_tsv(str(tmp_path / "bad.tsv"), rows))
    with pytest.warns(RuntimeWarning, match="skipping corrupt row 1"):
        assert ds[1]["id"] == 1  # row 1 corrupt -> next valid row
    assert ds.skipped_rows == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ds[3]["id"] == 2  # rows 3, 4, 5 corrupt -> row 6
        assert ds[1]["id"] == 1  # known-bad rows are not re-counted
    assert ds.skipped_rows == 4
    assert [ds[i]["id"] for i in (0, 2, 6)] == [0, 1, 2]
    only_bad = make_ds(write_tsv(str(tmp_path / "all_bad.tsv"), [["1", "{not json"]]))
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="giving up"):
        only_bad[0]


def test_collate_and_vis(tmp_path):
    path = simple_box_tsv(str(tmp_path / "v.tsv"), n=3)
    ds = make_ds(path)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, S, S) and batch["boxes"].shape == (3, 4, 4)
    assert batch["id"].tolist() == [0, 1, 2] and len(batch["caption"]) == 3
    vis = ds.vis_getitem_data(0, return_tensor=True, print_caption=False)
    assert vis.shape == (3, S, S) and 0 <= vis.min() and vis.max() <= 1
    ds.vis_getitem_data(0, name=str(tmp_path / "res.jpg"), print_caption=False)
    assert os.path.isfile(tmp_path / "res.jpg")


def test_dataloader_workers(tmp_path):
    ds = make_ds(simple_box_tsv(str(tmp_path / "w.tsv"), n=4))
    ds[0]  # open the file handle in the parent; workers must re-open their own
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    assert sorted(i for b in loader for i in b["id"].tolist()) == [0, 1, 2, 3]


def test_invalid_options(tmp_path):
    path = simple_box_tsv(str(tmp_path / "o.tsv"), n=1)
    with pytest.raises(ValueError):
        make_ds(path, random_drop_embedding="text")
    with pytest.raises(NotImplementedError):
        make_ds(path, random_crop=True)
    with pytest.raises(FileNotFoundError, match="missing.lineidx"):
        os.rename(path, str(tmp_path / "missing.tsv"))
        make_ds(str(tmp_path / "missing.tsv"))
