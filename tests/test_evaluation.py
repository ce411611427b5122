"""evaluate.py: layouts from COCO files, sharded / resumable generation, FID/KID/AP/MIG/CLIP plumbing.

Everything is offline: tiny random GLIGEN / CLIP / OWLv2 models built from configs, stand-in
detectors and a tiny feature extractor in place of Inception, synthetic images.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from ldm.evaluation import metrics as M
from ldm.evaluation.coco_layouts import Protocol, build_layouts, crop_geometry
from ldm.evaluation.detectors import Detections, OpenVocabDetector, TorchvisionDetector, load_detector
from ldm.evaluation.report import compare, markdown_table, write_scores
from ldm.evaluation.score import ScoreOptions, score
from ldm.inference.errors import LayoutError, ResolveError

CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "traffic_light"}]


def write_coco(folder, images=((1, 64, 48), (2, 40, 60), (3, 50, 50)), anns=None, captions=True):
    """A COCO-format instances file (+ captions, + real images) under ``folder``."""
    os.makedirs(os.path.join(folder, "real"), exist_ok=True)
    rng = np.random.default_rng(0)
    ims = []
    for i, w, h in images:
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, "real", f"{i:06d}.png"))
        ims.append({"id": i, "file_name": f"{i:06d}.png", "width": w, "height": h})
    if anns is None:
        anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 30, 30]},
                {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 20, 20, 20]},
                {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 40, 60]},
                {"id": 4, "image_id": 3, "category_id": 1, "bbox": [5, 5, 20, 20]}]
    path = os.path.join(folder, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": ims, "annotations": anns, "categories": CATS}, f)
    cap = None
    if captions:
        cap = os.path.join(folder, "captions.json")
        with open(cap, "w") as f:
            json.dump({"annotations": [{"id": 11, "image_id": 1, "caption": "a dog"},
                                       {"id": 10, "image_id": 1, "caption": "a cat and a dog"}]}, f)
    return path, cap


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny GLIGEN checkpoint, tiny CLIP, tiny OWLv2 (model + processor folder), COCO files."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from ldm.modules.encoders.clip_tokenizer import build_clip_tokenizer
    from ldm.tiny import write_tiny_checkpoint, write_tiny_clip_model

    d = tmp_path_factory.mktemp("eval_assets")
    ckpt = write_tiny_checkpoint(d / "tiny.pth", "text", seed=0)
    clip = write_tiny_clip_model(d / "clip")
    torch.manual_seed(0)
    owl = Owlv2ForObjectDetection(Owlv2Config(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16))
    owl.save_pretrained(d / "owl")
    Owlv2Processor(Owlv2ImageProcessor(size={"height": 32, "width": 32}),
                   build_clip_tokenizer(model_max_length=16)).save_pretrained(d / "owl")
    ann, cap = write_coco(str(d))
    return {"dir": d, "ckpt": ckpt, "clip": clip, "owl": str(d / "owl"), "ann": ann, "cap": cap,
            "real": str(d / "real")}


def gen_args(a, out, *extra):
    return ["generate", "--annotations", a["ann"], "--captions", a["cap"], "--ckpt", a["ckpt"], "--clip", a["clip"],
            "--out", str(out), "--steps", "2", "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def generated(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    assert evaluate.main(gen_args(assets, out)) == 0
    return out


# ------------------------------------------------------------------------------------------- layouts
def test_crop_geometry_matches_the_training_transform():
    from dataset.transforms import transform_image

    for w, h in [(64, 48), (40, 60), (1100, 700), (513, 2000)]:
        _, info = transform_image(Image.new("RGB", (w, h)), 32 if max(w, h) < 100 else 256, random_flip=False)
        assert crop_geometry(w, h, 32 if max(w, h) < 100 else 256) == info


def test_layouts_follow_the_box_protocol(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10]},  # small
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40]},  # large
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 40], "iscrowd": 1},  # crowd: skipped
            {"id": 4, "image_id": 1, "category_id": 3, "bbox": [60, 60, 2, 2]},  # 0.04 % of the crop: dropped
            {"id": 5, "image_id": 2, "category_id": 3, "bbox": [0, 0, 20, 20]},  # outside the centre crop
            {"id": 6, "image_id": 2, "category_id": 3, "bbox": [60, 10, 40, 40]}]
    ann, cap = write_coco(str(tmp_path), images=((1, 100, 100), (2, 200, 100)), anns=anns)
    p = Protocol(image_size=100)
    one, two = build_layouts(ann, cap, p)
    assert one.phrases == ["cat", "dog"] and one.category_ids == [1, 2]  # largest first
    assert one.boxes == [[0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.1, 0.1]]
    assert one.caption(0) == "a cat and a dog" and one.caption(1) == "a dog"  # captions in annotation-id order
    # 200x100: centre crop x in [50, 150]; LVIS-style "_" in names -> " "
    assert two.phrases == ["traffic light"] and two.boxes == [[0.1, 0.1, 0.5, 0.5]]
    assert two.caption() == "traffic light"  # no caption: the category names (pseudo caption)
    assert build_layouts(ann, None, p)[0].caption() == "cat, dog"
    assert [im.image_id for im in build_layouts(ann, None, Protocol(image_size=100, min_objects=2))] == [1]
    assert [im.image_id for im in build_layouts(ann, None, Protocol(image_size=100, max_objects=1))] == [2]
    assert build_layouts(ann, None, Protocol(image_size=100, max_boxes=1))[0].phrases == ["cat"]
    assert len(build_layouts(ann, None, p, limit=1)) == 1
    with pytest.raises(LayoutError, match="not found"):
        build_layouts(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LayoutError, match="cannot read"):
        build_layouts(str(tmp_path / "bad.json"))
    with pytest.raises(LayoutError, match="between"):
        Protocol(max_boxes=31)
    with pytest.raises(LayoutError, match="no image"):
        build_layouts(ann, None, Protocol(image_size=100, min_objects=3))


# ------------------------------------------------------------------------------------------- AP / MIG
def sample(boxes, cats, phrases=None):
    names = {c["id"]: c["name"].replace("_", " ") for c in CATS}
    return {"entry": {"prompt": "p", "boxes": boxes, "phrases": phrases or [names[c] for c in cats]},
            "category_ids": cats}


CATEGORIES = {c["id"]: c["name"].replace("_", " ") for c in CATS}
SAMPLES = [sample([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]], [1, 2]), sample([[0.0, 0.2, 0.6, 0.8]], [3])]
SIZES = [(100, 100), (50, 50)]


def oracle(samples, sizes, shift=0.0, relabel=None):
    """Stand-in detector output: the layout boxes themselves (optionally shifted right by ``shift`` of the
    width, or with each label ``n`` replaced by ``relabel[n]``)."""
    out = []
    for s, (W, H) in zip(samples, sizes):
        b = M.layout_boxes(s, W, H) + torch.tensor([shift * W, 0, shift * W, 0])
        names = [CATEGORIES[c] for c in s["category_ids"]]
        out.append(Detections(b, torch.ones(len(b)), [relabel[n] for n in names] if relabel else names))
    return out


def test_ap_is_one_for_the_layout_boxes_lower_when_shifted_zero_for_the_wrong_class():
    exact = M.detection_ap(SAMPLES, oracle(SAMPLES, SIZES), SIZES, CATEGORIES, closed_set=True)
    assert (exact["AP"], exact["AP50"], exact["AP75"]) == pytest.approx((1.0, 1.0, 1.0))
    shifted = M.detection_ap(SAMPLES, oracle(SAMPLES, SIZES, shift=0.05), SIZES, CATEGORIES, closed_set=True)
    assert 0.0 < shifted["AP"] < 1.0 and shifted["AP50"] == pytest.approx(1.0)
    swap = {"cat": "dog", "dog": "traffic light", "traffic light": "cat"}  # every box gets another class
    wrong = M.detection_ap(SAMPLES, oracle(SAMPLES, SIZES, relabel=swap), SIZES, CATEGORIES, closed_set=True)
    assert wrong["ap_detections"] == 3 and wrong["AP"] == wrong["AP50"] == wrong["AP75"] == 0.0
    none = M.detection_ap(SAMPLES, [Detections(torch.zeros(0, 4), [], [])] * 2, SIZES, CATEGORIES, closed_set=True)
    assert none["AP"] == 0.0 and none["ap_detections"] == 0
    # open vocabulary: labels are the layout's phrases, mapped through the sample's own phrase -> category
    phr = [sample([[0.1, 0.1, 0.5, 0.5]], [1], phrases=["a fluffy cat"])]
    dets = [Detections(M.layout_boxes(phr[0], 100, 100), [0.9], ["a fluffy cat"])]
    assert M.detection_ap(phr, dets, SIZES[:1], CATEGORIES, closed_set=False)["AP"] == pytest.approx(1.0)


def test_mig_success_rate_and_miou_as_defined():
    s = [sample([[0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6], [0.2, 0.2, 0.3, 0.3]], [1, 2, 3])]
    dets = [Detections([[0, 0, 10, 10],      # cat, exact: IoU 1
                        [55, 50, 65, 60],    # dog, half-shifted: IoU 50 / 150 = 1/3
                        [50, 50, 60, 60],    # dog, exact but below the score threshold: ignored
                        [20, 20, 30, 30]],   # a cat where the traffic light should be: wrong class
                       [0.9, 0.8, 0.1, 0.9], ["cat", "dog", "dog", "cat"])]
    r = M.mig_scores(s, dets, [(100, 100)], CATEGORIES, closed_set=True, iou_threshold=0.5, score_threshold=0.3)
    assert r["mig_instances"] == 3
    assert r["mig_success_rate"] == pytest.approx(1 / 3)
    assert r["mig_miou"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert r["mig_image_success_rate"] == 0.0
    ok = M.mig_scores(SAMPLES, oracle(SAMPLES, SIZES), SIZES, CATEGORIES, closed_set=True)
    assert ok["mig_success_rate"] == ok["mig_miou"] == ok["mig_image_success_rate"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- FID / KID
class TinyFeatures(torch.nn.Module):
    """Stand-in for Inception: uint8 (B, 3, H, W) -> (B, 6) (a fixed random conv on a 16x16 resize)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 4, stride=4)

    def forward(self, x):
        x = torch.nn.functional.interpolate(x.float() / 255, size=(16, 16), mode="bilinear", antialias=True)
        return self.conv(x).mean((2, 3)) + self.conv(x).amax((2, 3))


def test_fid_kid_of_a_set_against_itself_and_against_a_shifted_set():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 200, (24, 3, 20, 20), generator=g, dtype=torch.uint8)
    ext = TinyFeatures()
    real = M.extract_features(ext, [images[:12], images[12:]])
    assert real.shape == (24, 6)
    same = M.fid_kid(real, real.clone(), kid_subsets=10)
    assert abs(same["FID"]) < 1e-3 and abs(same["KID"]) < 1e-2 and same["kid_subset_size"] == 24
    shifted = M.fid_kid(real, M.extract_features(ext, [(images + 50).clamp(max=255)]), kid_subsets=10)
    assert shifted["FID"] > 100 * max(abs(same["FID"]), 1e-4) and shifted["KID"] > 0.01


def test_real_images_are_centre_cropped_like_training_images(tmp_path):
    from dataset.transforms import transform_image
    from ldm.evaluation.score import real_uint8

    arr = np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "r.png")
    x = real_uint8(str(tmp_path / "r.png"), 16)
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16)
    ref, _ = transform_image(Image.fromarray(arr), 16, random_flip=False)
    assert torch.equal(x, ((ref + 1) * 127.5).round().to(torch.uint8))


# ------------------------------------------------------------------------------------------- detectors
def test_torchvision_detector_from_the_torch_hub_cache(tmp_path, monkeypatch, capsys):
    import torchvision.models.detection as tvd

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = tvd.SSDLite320_MobileNet_V3_Large_Weights.DEFAULT
    model = tvd.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url)
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)  # stands in for the downloaded file
    det = load_detector("torchvision:ssdlite320_mobilenet_v3_large", "cpu", score_threshold=0.0)
    assert isinstance(det, TorchvisionDetector) and det.closed_set
    out = det.detect([Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (32, 32))], None)
    assert len(out) == 2 and all(lab in weights.meta["categories"] for d in out for lab in d.labels)
    assert all(d.boxes.shape == (len(d.labels), 4) for d in out)
    # a closed-set detector that cannot name a layout category says so
    from ldm.evaluation.generate import LAYOUTS_FILE

    gen = tmp_path / "gen"
    gen.mkdir()
    Image.new("RGB", (32, 32)).save(gen / "1_0.png")
    (gen / LAYOUTS_FILE).write_text(json.dumps({"categories": {"1": "cat", "9": "okapi"}, "samples": [
        {"file": "1_0.png", "category_ids": [1, 9], "entry": {"prompt": "p", "phrases": ["cat", "okapi"],
                                                             "boxes": [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]}}]}))
    r = score(str(gen), ScoreOptions(metrics=("ap",), device="cpu", progress=False), detector=det)
    assert "1 layout categories are unknown" in capsys.readouterr().err and r["metrics"]["ap_ground_truth_boxes"] == 2
    with pytest.raises(LayoutError, match="unknown torchvision detector"):
        load_detector("torchvision:no_such_model")


def test_open_vocabulary_detector_labels_boxes_with_the_layout_phrases(assets):
    det = load_detector(f"owlv2:{assets['owl']}", "cpu", score_threshold=0.0)
    assert isinstance(det, OpenVocabDetector) and not det.closed_set
    out = det.detect([Image.new("RGB", (48, 32), (10, 200, 10))] * 2, [["cat", "dog", "cat"], []])
    assert len(out[0].labels) > 0 and set(out[0].labels) <= {"cat", "dog"} and out[1].labels == []
    b = out[0].boxes
    assert b.shape[1] == 4 and float(b[:, 2].max()) <= 48 * 1.5  # pixels of the (padded) image


# ------------------------------------------------------------------------------------------- generation
def _pngs(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder)) if f.endswith(".png")}


def test_sharded_generation_writes_exactly_the_unsharded_files(assets, generated, tmp_path, monkeypatch):
    ref = _pngs(generated)
    assert sorted(ref) == ["1_0.png", "2_0.png", "3_0.png"]
    layouts = json.loads((generated / "layouts.json").read_text())
    assert [s["entry"]["prompt"] for s in layouts["samples"]] == ["a cat and a dog", "traffic light", "cat"]
    sharded = tmp_path / "sharded"
    for rank in (1, 0):  # rank 1 first: it must not depend on rank 0's files
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert evaluate.main(gen_args(assets, sharded)) == 0
        if rank == 1:
            assert sorted(_pngs(sharded)) == ["2_0.png"]
    assert _pngs(sharded) == ref
    assert json.loads((sharded / "layouts.json").read_text()) == layouts


def test_rerun_writes_nothing_and_resume_fills_only_the_gaps(assets, generated, tmp_path, monkeypatch):
    import shutil

    from ldm.inference import pipeline

    out = tmp_path / "resume"
    shutil.copytree(generated, out)
    before = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)}
    monkeypatch.setattr(pipeline.Runner, "generate", lambda *a, **k: pytest.fail("nothing should be generated"))
    assert evaluate.main(gen_args(assets, out)) == 0
    assert {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)} == before
    monkeypatch.undo()
    os.remove(out / "2_0.png")
    assert evaluate.main(gen_args(assets, out)) == 0
    assert _pngs(out) == _pngs(generated) and not [f for f in os.listdir(out) if ".tmp" in f]
    # a folder made with other settings is refused rather than mixed
    assert evaluate.main(gen_args(assets, out, "--seed", "5")) == 2


# ------------------------------------------------------------------------------------------- end to end
class OracleDetector:
    """Stand-in closed-set detector returning each image's layout boxes (images come in layout order)."""

    closed_set = True

    def __init__(self, samples):
        self.samples, self.i = samples, 0

    def detect(self, images, queries):
        s = self.samples[self.i:self.i + len(images)]
        self.i += len(images)
        return oracle(s, [im.size for im in images])


def test_end_to_end_generate_then_score(assets, generated, tmp_path, capsys):
    # the CLI with an open-vocabulary detector and the CLIP score (tiny models, offline)
    out = tmp_path / "scores.json"
    assert evaluate.main(["score", "--generated", str(generated), "--annotations", assets["ann"], "--metrics",
                          "ap,mig,clip", "--detector", f"owlv2:{assets['owl']}", "--clip", assets["clip"],
                          "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    scores = json.loads(out.read_text())
    m = scores["metrics"]
    assert 0.0 <= m["AP"] <= 1.0 and 0.0 <= m["mig_miou"] <= 1.0 and 0.0 <= m["CLIP"] <= 100.0
    assert m["ap_ground_truth_boxes"] == 4 and m["mig_instances"] == 4
    assert scores["settings"]["detector"].startswith("owlv2:") and scores["counts"]["scored_images"] == 3
    assert scores["generation"]["settings"]["steps"] == 2
    assert "| AP |" in (tmp_path / "scores.md").read_text() and "| mig_miou |" in capsys.readouterr().out

    # every metric through score(), with stand-ins whose answers are known
    layouts = json.loads((generated / "layouts.json").read_text())["samples"]
    opts = ScoreOptions(metrics=("fid", "kid", "ap", "mig"), real=assets["real"], device="cpu", progress=False,
                        kid_subsets=5)
    r = score(str(generated), opts, detector=OracleDetector(layouts), feature_extractor=TinyFeatures())
    m = r["metrics"]
    assert m["AP"] == pytest.approx(1.0) and m["mig_success_rate"] == pytest.approx(1.0)
    assert m["FID"] > 0 and m["real_images"] == 3 and m["generated_images"] == 3 and "KID" in m and "CLIP" not in m
    same = score(str(generated), ScoreOptions(metrics=("fid",), real=str(generated), real_all=True, device="cpu",
                                              progress=False), feature_extractor=TinyFeatures())
    assert abs(same["metrics"]["FID"]) < 1e-3  # generated images against themselves


def test_compare_and_markdown(tmp_path, capsys):
    a = {"metrics": {"FID": 20.0, "AP": 0.2, "CLIP": 30.0}}
    b = {"metrics": {"FID": 10.0, "AP": 0.1}}
    write_scores(str(tmp_path / "a.json"), a)
    write_scores(str(tmp_path / "b.json"), b)
    assert "| FID | 20.00 |" in markdown_table(a)
    table = compare([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert "| FID | 20.00 | **10.00** |" in table and "| AP | **0.200** | 0.100 |" in table
    assert "| CLIP | 30.00 | – |" in table
    assert evaluate.main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert capsys.readouterr().out == table


# ------------------------------------------------------------------------------------------- errors, offline
def _one_line_error(capsys, argv) -> str:
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line(assets, generated, tmp_path, capsys):
    assert "not found" in _one_line_error(capsys, ["generate", "--annotations", str(tmp_path / "x.json"), "--out",
                                                   str(tmp_path / "o")])
    bad_ckpt = gen_args(assets, tmp_path / "o")
    bad_ckpt[bad_ckpt.index("--ckpt") + 1] = str(tmp_path / "missing.pth")
    assert "missing.pth" in _one_line_error(capsys, bad_ckpt)
    assert not (tmp_path / "o").exists()  # nothing written before the checkpoint is found
    assert "steps" in _one_line_error(capsys, gen_args(assets, tmp_path / "o", "--steps", "0"))
    assert "unknown metric 'fidd'" in _one_line_error(capsys, ["score", "--generated", str(generated), "--metrics",
                                                               "fidd"])
    assert "--real" in _one_line_error(capsys, ["score", "--generated", str(generated), "--metrics", "fid"])
    assert "layouts.json" in _one_line_error(capsys, ["score", "--generated", str(tmp_path), "--metrics", "ap"])
    assert "unknown detector" in _one_line_error(capsys, ["score", "--generated", str(generated), "--metrics", "ap",
                                                          "--detector", "yolo"])
    assert "at least two" in _one_line_error(capsys, ["--compare", str(tmp_path / "a.json")])


def test_offline_without_cached_weights_names_the_file(generated, assets, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    base = ["score", "--generated", str(generated), "--device", "cpu", "--no-progress"]
    err = _one_line_error(capsys, base + ["--metrics", "fid", "--real", assets["real"]])
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "offline" in err
    assert "fasterrcnn_resnet50_fpn_v2_coco" in _one_line_error(capsys, base + ["--metrics", "ap"])
    assert "google/owlv2-base-patch16-ensemble" in _one_line_error(capsys, base + ["--metrics", "mig",
                                                                                    "--detector", "owlv2"])
    assert "openai/clip-vit-large-patch14" in _one_line_error(capsys, base + ["--metrics", "clip"])
    with pytest.raises(ResolveError):
        M.inception_extractor(None)
    assert not os.path.exists(tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth")


def test_hub_loader_notice_and_one_line_errors(tmp_path, monkeypatch, capsys):
    """ldm.hub.load_pretrained, shared by evaluate.py and DATA/prepare_data.py."""
    import huggingface_hub.constants

    from DATA.prepare.inputs import InputError
    from ldm.hub import load_pretrained

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    never = lambda repo: pytest.fail("nothing may be loaded offline")  # noqa: E731
    with pytest.raises(InputError) as e:
        load_pretrained(never, "org/not-cached", "detection", flag="--detector", error=InputError)
    msg = str(e.value)
    assert "'org/not-cached'" in msg and "offline" in msg and "--detector" in msg and "\n" not in msg
    with pytest.raises(ResolveError, match="org/not-cached") as e:
        load_pretrained(never, "org/not-cached", "CLIP score")
    assert "pass a local folder" not in str(e.value)  # no flag given, none named
    with pytest.raises(ResolveError, match="model folder not found: ./no/such/folder"):
        load_pretrained(never, "./no/such/folder", "CLIP score")
    capsys.readouterr()

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def fails(repo):
        calls.append(repo)
        raise OSError("404 Client Error\nmore detail")

    with pytest.raises(ResolveError) as e:
        load_pretrained(fails, "org/not-cached", "detector", flag="--clip")
    assert calls == ["org/not-cached"]
    assert capsys.readouterr().err == "downloading detector org/not-cached (first use) ...\n"
    assert str(e.value) == "detector model 'org/not-cached' could not be loaded (404 Client Error) " \
                           "(or pass a local folder to --clip)"
    with pytest.raises(ResolveError, match=r"model folder .* cannot be loaded \(404 Client Error\)"):
        load_pretrained(fails, str(tmp_path), "detector")
    assert capsys.readouterr().err == ""  # a local folder is not announced
    assert load_pretrained(lambda repo: ("loaded", repo), str(tmp_path), "detector") == ("loaded", str(tmp_path))


def test_grounding_dino_spans_map_back_to_the_layout_phrases(tmp_path):
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    from ldm.evaluation.detectors import match_phrase

    assert match_phrase("traffic light", ["cat", "traffic light"]) == 1  # index of "traffic light"
    assert match_phrase("light", ["cat", "traffic light"]) == 1
    assert match_phrase("zebra", ["cat", "dog"]) is None
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "cat", "dog", "traffic", "light"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                                   window_size=2, out_features=["stage1", "stage2"]),
        text_config=BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_feature_levels=2,
        encoder_n_points=1, decoder_n_points=1, max_text_len=32))
    processor = GroundingDinoProcessor(GroundingDinoImageProcessor(size={"shortest_edge": 32, "longest_edge": 48}),
                                       BertTokenizer(str(tmp_path / "vocab.txt")))
    det = OpenVocabDetector(model, processor, "cpu", score_threshold=0.0)
    assert det.is_grounding_dino
    out = det.detect([Image.new("RGB", (40, 32), (50, 60, 70))], [["cat", "traffic light"]])[0]
    assert len(out.labels) > 0 and set(out.labels) <= {"cat", "traffic light"}
    assert out.boxes.shape == (len(out.labels), 4)


def test_fid_kid_through_the_real_inception_with_local_weights(assets, generated, tmp_path, monkeypatch, capsys):
    """--inception-weights: torch-fidelity's Inception v3 (random weights stand in for the TF-FID file)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        torch.save(fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict(), tmp_path / "inc.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # nothing may come from the cache
    out = tmp_path / "s.json"
    assert evaluate.main(["score", "--generated", str(generated), "--real", assets["real"], "--metrics", "fid,kid",
                          "--inception-weights", str(tmp_path / "inc.pth"), "--device", "cpu", "--no-progress",
                          "--out", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["FID"] > 0 and np.isfinite(m["KID"]) and m["real_images"] == 3 and m["generated_images"] == 3
    capsys.readouterr()
    (tmp_path / "evil.pth").write_bytes(b"not a state dict")
    assert "state dict" in _one_line_error(capsys, ["score", "--generated", str(generated), "--real", assets["real"],
                                                    "--metrics", "fid", "--inception-weights",
                                                    str(tmp_path / "evil.pth")])


def test_clip_score_is_100_times_the_clipped_cosine():
    class StandIn:  # CLIPGroundingFeatures interface: unit-norm projected embeddings
        def image_after(self, images):
            return torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])[:len(images)]

        def text_after(self, captions):
            return torch.tensor([[0.6, 0.8], [-1.0, 0.0], [0.0, 1.0]])[:len(captions)]

    s = M.clip_scores(StandIn(), [None] * 3, ["a", "b", "c"])
    assert torch.allclose(s, torch.tensor([60.0, 0.0, 100.0]))
