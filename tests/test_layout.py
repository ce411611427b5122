"""Layout parsing / validation, mode detection and per-modality batch preparation (no models)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ldm import imageops
from ldm.inference.batch import (box_batch, complete_mask, keypoint_batch, semantic_map,
                                 spatial_map)
from ldm.inference.errors import LayoutError
from ldm.inference.layout import Generation, convert_box, load_layout, read_layout_file
from ldm.inference.modes import Mode, detect_mode, family_from_state_dict

BOX = [[0.0, 0.09, 0.33, 0.76], [0.55, 0.11, 1.0, 0.8]]


@pytest.fixture
def img(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (40, 20), (10, 200, 30)).save(p)
    return str(p)


def gen(**kw):
    return Generation.from_dict({"prompt": "p", **kw})


# ----------------------------------------------------------------------------- parsing
def test_locations_boxes_and_keypoints():
    g = gen(phrases=["a", "b"], locations=BOX)
    assert g.boxes == BOX and g.implied_mode() == Mode("text")
    g = gen(phrases=["a", "b"], boxes=BOX)
    assert g.boxes == BOX
    person = [[0.5, 0.5]] * 17
    g = gen(locations=[person, person])
    assert len(g.keypoints) == 2 and g.implied_mode() == Mode("keypoint")


@pytest.mark.parametrize("fmt,box,canvas,expected", [
    ("xyxy", [0.1, 0.2, 0.3, 0.4], (512, 512), [0.1, 0.2, 0.3, 0.4]),
    ("xywh", [0.1, 0.2, 0.3, 0.4], (512, 512), [0.1, 0.2, 0.4, 0.6000000000000001]),
    ("xyxy_pixels", [0, 128, 256, 512], (512, 512), [0.0, 0.25, 0.5, 1.0]),
    ("xywh_pixels", [10, 5, 20, 10], (40, 20), [0.25, 0.25, 0.75, 0.75]),
])
def test_box_formats(fmt, box, canvas, expected):
    assert convert_box(box, fmt, canvas) == pytest.approx(expected)


def test_pixel_boxes_relative_to_input_image(img):
    g = Generation.from_dict({"prompt": "p", "phrases": ["x"], "boxes": [[10, 5, 30, 15]], "input_image": img},
                             box_format="xyxy_pixels")
    assert g.boxes == [pytest.approx([0.25, 0.25, 0.75, 0.75])]
    g = Generation.from_dict({"prompt": "p", "phrases": ["x"], "boxes": [[0, 0, 256, 512]]}, box_format="xyxy_pixels")
    assert g.boxes == [[0.0, 0.0, 0.5, 1.0]]


def test_style_example_zero_area_box_is_valid():
    g = gen(phrases=["a brick house", "placeholder"], locations=[[0.4, 0.2, 1.0, 0.8], [0.0, 1.0, 0.0, 1.0]],
            text_mask=[1, 0], image_mask=[0, 1])
    assert g.text_mask == [1.0, 0.0]


@pytest.mark.parametrize("entry,match", [
    (dict(phrases=["a", "b", "c"], locations=BOX), "3 phrases but 2 boxes"),
    (dict(phrases=["a"], locations=BOX), "1 phrases but 2 boxes"),
    (dict(phrases=["a"] * 31, locations=[[0, 0, 1, 1]] * 31), "31 objects given, at most 30"),
    (dict(phrases=["a"], locations=[[0.1, 0.1, 1.2, 0.5]]), "outside \\[0, 1\\]"),
    (dict(phrases=["a"], locations=[[-0.1, 0.1, 0.2, 0.5]]), "outside \\[0, 1\\]"),
    (dict(phrases=["a"], locations=[[0.5, 0.1, 0.2, 0.5]]), "x1 < x0"),
    (dict(phrases=["a"], locations=[[0.1, 0.6, 0.2, 0.5]]), "y1 < y0"),
    (dict(phrases=["a"], locations=[[0.1, 0.6, 0.2]]), "box 0 must be 4 numbers"),
    (dict(locations=BOX), "2 boxes but no phrases or images"),
    (dict(colour="red"), "unknown layout key 'colour'"),
    (dict(alpha_type=[0.5, 0.6, 0]), "alpha_type"),
    (dict(seed=-1), "seed"),
    (dict(locations=[[[0.5, 0.5]] * 16]), "17 \\[x, y\\] keypoints"),
    (dict(locations=[[[0.5, 0.5]] * 17] * 9), "9 persons given, at most 8"),
    (dict(hed_image="nope.png", depth="nope.png"), "only one spatial condition"),
    (dict(save_folder_name="../x"), "relative folder name"),
])
def test_bad_layouts(entry, match):
    with pytest.raises(LayoutError, match=match):
        gen(**entry)


def test_prompt_required():
    with pytest.raises(LayoutError, match="'prompt' must be a string"):
        Generation.from_dict({"phrases": []})


def test_missing_and_invalid_image_files(tmp_path, img):
    with pytest.raises(LayoutError, match="hed_image file not found: .*missing.png"):
        gen(hed_image=str(tmp_path / "missing.png"))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(LayoutError, match="reference image is not a readable image"):
        gen(phrases=["x"], images=[str(bad)], locations=[[0, 0, 1, 1]])
    with pytest.raises(LayoutError, match="input_image file not found"):
        gen(input_image=str(tmp_path / "missing.jpg"))
    assert gen(hed_image=img).condition == {"hed": img}


def test_relative_paths_resolve_next_to_layout_file(tmp_path, img, monkeypatch):
    sub = tmp_path / "layouts"
    sub.mkdir()
    (sub / "l.json").write_text(json.dumps({"prompt": "x", "canny_image": "../a.png"}))
    monkeypatch.chdir("/")
    _, gens = load_layout(str(sub / "l.json"))
    assert gens[0].condition["canny"] == img


def test_layout_files_json_yaml_and_settings(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"prompt": "a"}))
    (tmp_path / "many.yaml").write_text("- prompt: a\n- prompt: b\n  phrases: [x]\n  boxes: [[0, 0, 0.5, 0.5]]\n")
    (tmp_path / "full.json").write_text(json.dumps({"settings": {"steps": 3}, "generations": [{"prompt": "c"}]}))
    assert [g.prompt for g in load_layout(str(tmp_path / "one.json"))[1]] == ["a"]
    assert [g.prompt for g in load_layout(str(tmp_path / "many.yaml"))[1]] == ["a", "b"]
    settings, gens = load_layout(str(tmp_path / "full.json"))
    assert settings == {"steps": 3} and gens[0].prompt == "c"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LayoutError, match="cannot parse layout file"):
        read_layout_file(str(tmp_path / "bad.json"))
    (tmp_path / "top.json").write_text(json.dumps({"settings": {}, "generations": [], "extra": 1}))
    with pytest.raises(LayoutError, match="unknown top-level key 'extra'"):
        read_layout_file(str(tmp_path / "top.json"))
    with pytest.raises(LayoutError, match="generation 1: unknown layout key"):
        (tmp_path / "two.json").write_text(json.dumps([{"prompt": "a"}, {"prompt": "b", "box": []}]))
        load_layout(str(tmp_path / "two.json"))
    with pytest.raises(LayoutError, match="layout file not found"):
        load_layout(str(tmp_path / "nope.json"))


# ----------------------------------------------------------------------------- modes
def test_compatibility_checks(img):
    text, inpaint = Mode("text"), Mode("text", True)
    g = gen(phrases=["a", "b"], locations=BOX)
    g.check_compatible(text)
    with pytest.raises(LayoutError, match="inpainting model .* needs an 'input_image'"):
        g.check_compatible(inpaint)
    gi = gen(phrases=["a"], locations=[BOX[0]], input_image=img)
    gi.check_compatible(inpaint)
    with pytest.raises(LayoutError, match="'input_image' given, but .* generation model"):
        gi.check_compatible(text)
    with pytest.raises(LayoutError, match="reference 'images'.*does not support"):
        gen(phrases=["a"], images=[img], locations=[BOX[0]]).check_compatible(text)
    with pytest.raises(LayoutError, match="'hed_image'.*does not support"):
        gen(hed_image=img).check_compatible(text)
    with pytest.raises(LayoutError, match="boxes/phrases.*does not support"):
        g.check_compatible(Mode("keypoint"))
    with pytest.raises(LayoutError, match="needs a 'depth' image"):
        gen().check_compatible(Mode("depth"))
    with pytest.raises(LayoutError, match="inpainting is only available"):
        gen(hed_image=img, input_image=img).implied_mode()


def test_detect_mode_from_config_and_weights():
    from ldm.tiny import build_tiny, tiny_config

    for fam in ("text", "text_image", "keypoint", "hed", "canny", "depth", "normal", "sem"):
        assert detect_mode(tiny_config(fam)) == Mode(fam)
    assert detect_mode(tiny_config("text_image", inpaint=True)) == Mode("text_image", True)
    # without a config: from the UNet keys (canny and depth share an architecture)
    for fam in ("text", "text_image", "keypoint", "hed", "normal", "sem"):
        state = build_tiny(fam)["model"].state_dict()
        assert family_from_state_dict(state) == fam
        assert detect_mode(None, state) == Mode(fam)
    state = build_tiny("text", inpaint=True)["model"].state_dict()
    assert detect_mode({"model": {"params": {"in_channels": 4}}}, state) == Mode("text", True)
    assert family_from_state_dict(build_tiny("canny")["model"].state_dict()) is None


# ----------------------------------------------------------------------------- batches
class FakeFeatures:
    def __init__(self, dim):
        self.dim, self.calls = dim, []

    def text_before(self, phrases):
        self.calls.append(("text", list(phrases)))
        return torch.arange(len(phrases), dtype=torch.float32)[:, None].repeat(1, self.dim) + 1

    def image_reprojected(self, images):
        self.calls.append(("image", len(images)))
        return -torch.ones(len(images), self.dim)


def test_box_batch_text_image(img):
    g = gen(phrases=["a brick house", None], images=[None, img], locations=[[0.4, 0.2, 1.0, 0.8], [0, 1, 0, 1]],
            text_mask=[1, 0], image_mask=0.5)
    f = FakeFeatures(6)
    b = box_batch(g, 3, 6, f, with_images=True)
    assert {k: tuple(v.shape) for k, v in b.items()} == {
        "boxes": (3, 30, 4), "masks": (3, 30), "text_embeddings": (3, 30, 6), "text_masks": (3, 30),
        "image_masks": (3, 30), "image_embeddings": (3, 30, 6)}
    assert b["masks"][0, :3].tolist() == [1, 1, 0]
    assert b["text_masks"][0, :3].tolist() == [1, 0, 0]
    assert b["image_masks"][0, :3].tolist() == [0, 0.5, 0]
    assert b["text_embeddings"][0, 0].eq(1).all() and b["text_embeddings"][0, 1].eq(0).all()
    assert b["image_embeddings"][0, 1].eq(-1).all()
    assert f.calls == [("text", ["a brick house"]), ("image", 1)]
    t = box_batch(g, 1, 6, f, with_images=False)
    assert set(t) == {"boxes", "masks", "text_embeddings"}


def test_box_batch_checks_feature_width():
    from ldm.inference.errors import ResolveError

    with pytest.raises(ResolveError, match="width 5 .* expects 6"):
        box_batch(gen(phrases=["a"], locations=[BOX[0]]), 1, 6, FakeFeatures(5), with_images=False)


def test_complete_mask():
    assert complete_mask(None, 4).tolist() == [1, 1, 1, 1]
    assert complete_mask(0.5, 3).tolist() == [0.5] * 3
    assert complete_mask([0, 2], 4).tolist() == [0, 2, 1, 1]


def test_keypoint_batch():
    person = [[0.5, 0.25]] * 5 + [[0, 0]] * 12
    b = keypoint_batch(gen(keypoints=[person]), 2)
    assert b["points"].shape == (2, 136, 2) and b["masks"].shape == (2, 136)
    assert b["masks"][0].sum() == 5 and b["points"][1, 0].tolist() == [0.5, 0.25]


def test_spatial_and_semantic_maps(tmp_path):
    p = tmp_path / "m.png"
    Image.new("RGB", (30, 20), (255, 0, 0)).save(p)
    m = spatial_map(str(p), 8)
    assert m.shape == (3, 8, 8) and m[0].eq(1).all() and m[1].eq(-1).all()
    assert imageops.center_crop(Image.new("RGB", (31, 20))).size == (20, 20)
    lab = Image.new("L", (10, 10), 3)
    lab.paste(150, (0, 0, 5, 10))
    lab.save(tmp_path / "s.png")
    s = semantic_map(str(tmp_path / "s.png"), 4)
    assert s.shape == (152, 4, 4) and s.sum(0).eq(1).all() and s[3].sum() == 8 and s[150].sum() == 8
    Image.new("L", (4, 4), 200).save(tmp_path / "bad.png")
    with pytest.raises(LayoutError, match="class index 200"):
        semantic_map(str(tmp_path / "bad.png"), 4)


# ----------------------------------------------------------------------------- bundled inputs
def test_original_example_set_covers_all_ten_checkpoints():
    import os

    from ldm.inference.checkpoints import RELEASED
    from ldm.inference.examples import ORIGINAL_EXAMPLES

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    gens = [Generation.from_dict(e, root) for e in ORIGINAL_EXAMPLES]  # bundled stand-ins exist
    modes = {(g.implied_mode().family, g.implied_mode().inpaint) for g in gens}
    assert modes == set(RELEASED)
    assert len({g.save_folder_name for g in gens}) == len(gens) == 11


def test_bundled_demo_and_example_layouts_parse():
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    settings, gens = load_layout(os.path.join(root, "examples", "demo_layout.json"))
    assert settings["batch_size"] == 2 and len(gens) == 6
    assert {g.implied_mode().family for g in gens} == {"text", "text_image", "keypoint", "hed", "sem"}
    _, gens = load_layout(os.path.join(root, "examples", "layout_example.yaml"))
    assert gens[0].boxes and gens[0].phrases
