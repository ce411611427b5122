"""DatasetCatalog / ConCatDataset."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data_helpers import D_PROJ, D_TEXT, projection, simple_box_tsv  # noqa: E402

from dataset.catalog import DatasetCatalog  # noqa: E402
from dataset.concat_dataset import ConCatDataset  # noqa: E402

ALL_NAMES = ["VGGrounding", "FlickrGrounding", "SBUGrounding", "CC3MGrounding", "CC3MGroundingHed",
             "CC3MGroundingCanny", "CC3MGroundingDepth", "CC12MGrounding", "Obj365Detection",
             "COCO2017Keypoint", "DIODENormal", "ADESemantic"]


def test_catalog_entries(tmp_path):
    cat = DatasetCatalog(str(tmp_path))
    assert sorted(cat.names()) == sorted(ALL_NAMES)
    assert cat.FlickrGrounding == {"target": "dataset.tsv_dataset.TSVDataset",
                                   "train_params": {"tsv_path": str(tmp_path / "GROUNDING/flickr30k/tsv/train-00.tsv")}}
    assert cat.CC3MGroundingHed["train_params"]["hed_tsv_path"].endswith("GROUNDING/CC3M/tsv_hed/train-00.tsv")
    assert cat.ADESemantic["target"] == "dataset.dataset_sem.SemanticDataset"
    # every target resolves to a class
    from dataset.concat_dataset import import_target
    for name in ALL_NAMES:
        assert isinstance(import_target(cat.get(name)["target"]), type)


def test_concat_with_repeats(tmp_path):
    simple_box_tsv(str(tmp_path / "GROUNDING/flickr30k/tsv/train-00.tsv"), n=3, caption="flickr")
    simple_box_tsv(str(tmp_path / "GROUNDING/gqa/tsv/train-00.tsv"), n=2, caption="gqa")
    kw = dict(image_size=16, max_boxes_per_data=2, projection_matrix=projection(), embedding_len=D_TEXT)
    ds = ConCatDataset({"FlickrGrounding": kw, "VGGrounding": dict(kw)}, str(tmp_path), repeats=[2, 1])
    assert len(ds) == 3 * 2 + 2
    assert ds.mapping.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert ds.which_dataset.tolist() == [0] * 6 + [1] * 2
    assert [ds[i]["caption"] for i in (0, 4, 7)] == ["flickr 0", "flickr 1", "gqa 1"]
    assert ds.total_images() == 5
    # the trainer passes OmegaConf nodes
    from omegaconf import OmegaConf
    conf = OmegaConf.create({"VGGrounding": {"image_size": 16, "max_boxes_per_data": 2, "embedding_len": D_PROJ,
                                             "which_layer_image": "after", "which_layer_text": "after"}})
    ds = ConCatDataset(conf, str(tmp_path))
    assert len(ds) == 2 and ds[1]["boxes"].shape == (2, 4)
    # catalog params are not mutated across instances
    assert DatasetCatalog(str(tmp_path)).FlickrGrounding["train_params"] == {
        "tsv_path": str(tmp_path / "GROUNDING/flickr30k/tsv/train-00.tsv")}


def test_concat_errors(tmp_path):
    with pytest.raises(KeyError, match="FlickrGrounding"):  # the message lists the known names
        ConCatDataset({"NoSuchData": None}, str(tmp_path))
    with pytest.raises(ValueError):
        ConCatDataset({"FlickrGrounding": None}, str(tmp_path), repeats=[1, 2])
    with pytest.raises(FileNotFoundError, match="flickr30k"):
        ConCatDataset({"FlickrGrounding": None}, str(tmp_path))


def test_concat_user_dataset_with_target(tmp_path):
    """Entries carrying their own ``target`` (+ ``params``) need no catalog name; relative path
    kwargs are joined onto DATA_ROOT, absolute ones kept; catalog names still work beside them."""
    from omegaconf import OmegaConf

    simple_box_tsv(str(tmp_path / "my/train-00.tsv"), n=2, caption="mine")
    simple_box_tsv(str(tmp_path / "GROUNDING/flickr30k/tsv/train-00.tsv"), n=3, caption="flickr")
    other = simple_box_tsv(str(tmp_path / "elsewhere/other.tsv"), n=1, caption="abs")
    kw = dict(image_size=16, max_boxes_per_data=2, projection_matrix=projection(), embedding_len=D_TEXT)
    conf = OmegaConf.create({
        "MyBoxes": {"target": "dataset.tsv_dataset.TSVDataset",
                    "params": {"tsv_path": "my/train-00.tsv", "image_size": 16, "max_boxes_per_data": 2,
                               "embedding_len": D_PROJ, "which_layer_image": "after", "which_layer_text": "after"}},
        "Abs": {"target": "dataset.tsv_dataset.TSVDataset",
                "params": {"tsv_path": other, "image_size": 16, "max_boxes_per_data": 2, "embedding_len": D_PROJ,
                           "which_layer_image": "after", "which_layer_text": "after"}},
    })
    ds = ConCatDataset(conf, str(tmp_path), repeats=[1, 2])
    assert len(ds) == 2 + 2 and [ds[i]["caption"] for i in range(4)] == ["mine 0", "mine 1", "abs 0", "abs 0"]
    assert ds.datasets[0].tsv_path == str(tmp_path / "my/train-00.tsv")
    # mixed with a catalog name (plain dicts), in YAML order
    mine = {"target": "dataset.tsv_dataset.TSVDataset", "params": {"tsv_path": "my/train-00.tsv", **kw}}
    ds = ConCatDataset({"FlickrGrounding": kw, "MyBoxes": mine}, str(tmp_path))
    assert len(ds) == 5 and ds[0]["caption"] == "flickr 0" and ds[4]["caption"] == "mine 1"
    # a catalog name may be redefined by its own target
    assert len(ConCatDataset({"FlickrGrounding": mine}, str(tmp_path))) == 2
    # errors: a missing file names the resolved path; stray keys; unimportable target; unknown name still a KeyError
    with pytest.raises(FileNotFoundError, match="nope"):
        ConCatDataset({"X": {"target": "dataset.tsv_dataset.TSVDataset", "params": {"tsv_path": "nope.tsv", **kw}}},
                      str(tmp_path))
    with pytest.raises(ValueError, match="tsv_path"):
        ConCatDataset({"X": {"target": "dataset.tsv_dataset.TSVDataset", "tsv_path": "my/train-00.tsv"}},
                      str(tmp_path))
    with pytest.raises(ValueError, match="NoSuchClass"):
        ConCatDataset({"X": {"target": "dataset.tsv_dataset.NoSuchClass"}}, str(tmp_path))
    with pytest.raises(KeyError, match="FlickrGrounding"):
        ConCatDataset({"MyBoxes": {"tsv_path": "my/train-00.tsv"}}, str(tmp_path))
