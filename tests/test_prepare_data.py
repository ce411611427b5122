"""DATA/prepare_data.py end to end on CPU with tiny random-config annotators (nothing downloaded).

One reference run (7 files: 6 images in 3 shards + an unreadable file; all maps) is shared: rows decode
with our dataset classes, two training iterations run from ROOT/dataset.yaml, a run killed inside a
shard and rerun gives the same bytes, and bad input gives one-line errors.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _prepare_helpers import (write_tiny_captioner, write_tiny_depth, write_tiny_detector,  # noqa: E402
                              write_tiny_grounding_dino, write_tiny_pose, write_tiny_segmenter)
from _train_helpers import REPO, run_env  # noqa: E402

from DATA.prepare.inputs import InputError, read_annotations, read_captions  # noqa: E402
from DATA.prepare.phrases import caption_phrases  # noqa: E402
from DATA.prepare.pipeline import CRASH_ENV  # noqa: E402
from DATA.prepare_data import main  # noqa: E402

CAPTIONS = {"img0.png": "a red square and a blue circle", "img1": "the dog on the grass"}
MAPS = "canny,depth,normal,sem,keypoints"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from ldm.tiny import write_tiny_clip_model

    d = tmp_path_factory.mktemp("models")
    return {"captioner": write_tiny_captioner(str(d / "captioner")), "detector": write_tiny_detector(str(d / "det")),
            "clip": write_tiny_clip_model(str(d / "clip")), "depth": write_tiny_depth(str(d / "depth")),
            "sem": write_tiny_segmenter(str(d / "sem")), "pose": write_tiny_pose(str(d / "pose"))}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    (d / "sub").mkdir()
    for i in range(6):
        rng = np.random.default_rng(i)
        img = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        img.save(d / ("sub" if i == 5 else "") / f"img{i}.png")
    (d / "broken.jpg").write_bytes(b"this is not a jpeg")
    caps = d.parent / "captions.json"
    caps.write_text(json.dumps(CAPTIONS))
    return {"dir": str(d), "captions": str(caps)}


def _argv(images, models, out, *extra):
    return ["--images", images["dir"], "--out", str(out), "--captions", images["captions"],
            "--captioner", models["captioner"], "--detector", models["detector"], "--clip", models["clip"],
            "--depth_model", models["depth"], "--sem_model", models["sem"], "--pose_model", models["pose"],
            "--maps", MAPS, "--box_threshold", "0.0", "--keypoint_threshold", "0.0", "--shard_size", "3",
            "--batch_size", "2", "--device", "cpu", "--image_size", "16", "--name", "mine", "--no-progress",
            "--config", os.path.join(REPO, "configs", "tiny_text_box.yaml"), *extra]


@pytest.fixture(scope="module")
def reference(images, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "root"
    assert main(_argv(images, models, out)) == 0
    return out


def _load_yaml(path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def _files(root) -> dict:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read().replace(str(root).encode(), b"ROOT")
    return out


# ----------------------------------------------------------------------------- outputs
def test_summary_counts_and_sources(reference):
    s = json.loads((reference / "summary.json").read_text())
    assert s["images_found"] == 7 and s["rows"] == 6 and s["shards"] == 3
    assert s["images_dropped"] == {"unreadable image": 1} and s["dropped_files"]["unreadable image"] == ["broken.jpg"]
    assert s["captions"] == {"given": 2, "generated": 4}
    assert s["box_sources"] == {"given": 0, "detected": 6}
    assert s["boxes"] == sum(int(k) * v for k, v in s["boxes_per_image"]["histogram"].items()) > 0
    assert sorted(os.listdir(reference / "shards")) == [f"train-0000{k}.json" for k in range(3)]


def test_box_rows_decode_and_match_clip(reference, images, models):
    from dataset.codec import decode_embedding_b64, decode_row
    from dataset.tsv import TSVFile
    from ldm.modules.encoders.clip_features import CLIPGroundingFeatures, crop_box

    rows = [decode_row(r) for k in range(3) for r in TSVFile(str(reference / "tsv" / f"train-0000{k}.tsv"))]
    assert [r["file_name"] for r in rows] == ["img0.png", "img1.png", "img2.png", "img3.png", "img4.png",
                                              "sub/img5.png"]
    assert [r["data_id"] for r in rows] == [1, 2, 3, 4, 5, 6]  # position in the sorted listing (broken.jpg = 0)
    assert rows[0]["caption"] == CAPTIONS["img0.png"] and rows[1]["caption"] == CAPTIONS["img1"]
    features = CLIPGroundingFeatures(models["clip"])
    first = rows[0]
    phrases = [p for p, _ in caption_phrases(first["caption"])]
    image = Image.open(os.path.join(images["dir"], "img0.png")).convert("RGB")
    for anno in first["annos"]:
        (s, e), = anno["tokens_positive"]
        phrase = first["caption"][s:e]
        assert phrase in phrases
        x, y, w, h = anno["bbox"]
        assert w > 0 and h > 0 and x + w <= 48 + 1e-3 and y + h <= 40 + 1e-3
        before, after = features.encode_text([phrase])
        torch.testing.assert_close(decode_embedding_b64(anno["text_embedding_before"]), before[0], atol=1e-5, rtol=1e-4)
        i_before, _ = features.encode_images([crop_box(image, anno["bbox"])], mode="crop_resize")
        torch.testing.assert_close(decode_embedding_b64(anno["image_embedding_before"]), i_before[0], atol=1e-5,
                                   rtol=1e-4)


def test_dataset_yaml_entries_build_batches(reference):
    from torch.utils.data._utils.collate import default_collate

    from dataset.concat_dataset import ConCatDataset

    cfg = _load_yaml(reference / "dataset.yaml")
    assert list(cfg["train_dataset_names"]) == [f"mine_train-0000{k}" for k in range(3)]
    ds = ConCatDataset(cfg["train_dataset_names"], "/nonexistent-root")  # absolute paths: DATA_ROOT not needed
    assert len(ds) == 6
    batch = default_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 16, 16) and batch["text_embeddings"].shape == (4, 30, 24)
    assert (batch["masks"].sum(1) > 0).all()
    for section, key, shape in (("canny", "canny_edge", (3, 16, 16)), ("depth", "depth", (3, 16, 16)),
                                ("sem", "sem", (152, 16, 16)), ("normal", "normal", (3, 16, 16))):
        ds = ConCatDataset(cfg[section]["train_dataset_names"], "/nonexistent-root")
        assert len(ds) == 6, section
        sample = ds[0]
        assert sample[key].shape == shape, section
        assert sample["caption"] == CAPTIONS["img0.png"], section
    ds = ConCatDataset(cfg["keypoints"]["train_dataset_names"], "/nonexistent-root")
    sample = ds[0]
    assert sample["points"].shape == (8 * 17, 2) and sample["masks"].sum() > 0


def test_maps_content(reference, images):
    import cv2

    from dataset.codec import decode_image_b64, decode_row
    from dataset.tsv import TSVFile

    canny = decode_row(TSVFile(str(reference / "tsv_canny" / "train-00000.tsv"))[0])
    assert canny["data_id"] == 1
    grey = np.asarray(Image.open(os.path.join(images["dir"], "img0.png")).convert("L"))
    edges = np.asarray(decode_image_b64(canny["canny_edge"], "L")).astype(int)
    expected = cv2.Canny(grey, 100, 200).astype(int)
    assert np.abs(edges - expected).mean() < 40  # JPEG in the TSV (as the original's maps)
    depth_row = decode_row(TSVFile(str(reference / "tsv_depth" / "train-00000.tsv"))[0])
    depth = np.asarray(decode_image_b64(depth_row["depth"], "L"))
    assert depth.shape == (40, 48) and depth.max() > 200 and depth.min() < 50  # min-max scaled
    label = np.asarray(Image.open(reference / "sem" / "labels" / "train-00000" / "1.png"))
    assert label.shape == (40, 48) and label.min() >= 1 and label.max() <= 150
    normal = np.load(reference / "normal" / "normals" / "train-00000" / "1_normal.npy")
    assert normal.shape == (40, 48, 3)
    np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1, atol=1e-5)
    kp = json.loads((reference / "keypoints" / "person_keypoints.json").read_text())
    assert [im["file_name"] for im in kp["images"]][-1] == "sub/img5.png"
    assert kp["annotations"] and all(len(a["keypoints"]) == 51 for a in kp["annotations"])


def test_two_training_iterations_from_dataset_yaml(reference, tmp_path):
    from omegaconf import OmegaConf

    from ldm.tiny import write_tiny_sd_checkpoint

    # ROOT/train.yaml (--config) = the tiny config with dataset.yaml's entries and the tiny entry's kwargs
    config = OmegaConf.load(os.path.join(REPO, "configs", "tiny_text_box.yaml"))
    tiny_kwargs = OmegaConf.to_container(config.train_dataset_names.FlickrGrounding)
    entries = _load_yaml(reference / "dataset.yaml")["train_dataset_names"]
    for e in entries.values():
        e["params"].update(tiny_kwargs)  # image_size 16, which_layer_image after, embedding_len 24, ...
    config.train_dataset_names = entries
    yaml_file = reference / "train.yaml"
    assert _load_yaml(yaml_file) == OmegaConf.to_container(config)
    write_tiny_sd_checkpoint(str(tmp_path / "tiny_sd.ckpt"), "text", seed=0)
    cmd = [sys.executable, os.path.join(REPO, "main.py"), "--yaml_file", str(yaml_file), "--DATA_ROOT",
           str(tmp_path), "--OUTPUT_ROOT", str(tmp_path / "OUT"), "--name", "mine", "--official_ckpt_name",
           "tiny_sd.ckpt", "--device", "cpu", "--batch_size", "2", "--workers", "0", "--total_iters", "2",
           "--save_every_iters", "2", "--warmup_steps", "1", "--disable_inference_in_training", "True"]
    res = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    import glob

    from ldm.checkpoint import load_checkpoint_file

    latest = glob.glob(str(tmp_path / "OUT" / "mine" / "*" / "checkpoint_latest.pth"))
    assert len(latest) == 1 and load_checkpoint_file(latest[0])["iters"] == 2


# ----------------------------------------------------------------------------- resume
def test_crash_inside_a_shard_then_rerun_gives_the_same_files(reference, images, models, tmp_path):
    out = tmp_path / "root"
    env = dict(run_env(), **{CRASH_ENV: "1"})
    script = os.path.join(REPO, "DATA", "prepare_data.py")
    res = subprocess.run([sys.executable, script, *_argv(images, models, out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 17, res.stderr[-2000:]
    assert sorted(os.listdir(out / "shards")) == ["train-00000.json"]  # shard 1 died half written
    assert (out / "tsv" / "train-00001.tsv").is_file() and not (out / "dataset.yaml").exists()
    shard0 = (out / "tsv" / "train-00000.tsv").stat().st_mtime_ns
    assert main(_argv(images, models, out)) == 0
    assert (out / "tsv" / "train-00000.tsv").stat().st_mtime_ns == shard0  # finished shard not redone
    got, want = _files(out), _files(reference)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
    assert main(_argv(images, models, out)) == 0  # nothing left to do: same files again
    assert _files(out) == want
    os.rename(os.path.join(images["dir"], "img3.png"), os.path.join(images["dir"], "img3b.png"))
    try:  # the folder changed under finished shards: refused, not silently mixed
        assert main(_argv(images, models, out)) == 2
    finally:
        os.rename(os.path.join(images["dir"], "img3b.png"), os.path.join(images["dir"], "img3.png"))


# ----------------------------------------------------------------------------- errors
def _error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_one_line_errors(tmp_path, images, models, reference, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images found in" in _error_line(capsys, ["--images", str(empty), "--out", str(tmp_path / "o")])
    err = _error_line(capsys, ["--images", images["dir"], "--out", str(tmp_path / "o2"), "--captioner",
                               "gligen-tests/not-a-cached-captioner", "--no-progress"])
    assert "'gligen-tests/not-a-cached-captioner'" in err and "hf download" in err
    assert not (tmp_path / "o2").exists()  # nothing written: a corrected rerun is not refused
    assert "--device must be" in _error_line(capsys, ["--images", images["dir"], "--out", str(tmp_path / "o4"),
                                                      "--device", "tpu"])
    assert "HED" in _error_line(capsys, ["--images", images["dir"], "--out", str(tmp_path / "o3"), "--maps", "hed"])
    # rerun into the reference ROOT with another threshold: refused, nothing changed
    before = _files(reference)
    assert "box_threshold" in _error_line(capsys, _argv(images, models, reference, "--box_threshold", "0.5"))
    assert _files(reference) == before
    assert main(_argv(images, models, reference, "--batch_size", "3")) == 0  # runtime flags may change
    assert _files(reference) == before
    err = _error_line(capsys, ["--images", images["dir"], "--out", str(tmp_path / "o5"), "--config",
                               os.path.join(REPO, "configs", "cc3m_canny.yaml")])
    assert "add --maps canny" in err and not (tmp_path / "o5").exists()
    err = _error_line(capsys, ["--images", images["dir"], "--out", str(tmp_path / "o6"), "--clip", models["clip"],
                               "--config", os.path.join(REPO, "configs", "flickr_text.yaml")])
    assert "width 768" in err and "gives 24" in err and not (tmp_path / "o6").exists()
    (tmp_path / "notours").mkdir()
    (tmp_path / "notours" / "x.txt").write_text("keep me")
    assert "not an output" in _error_line(capsys, ["--images", images["dir"], "--out", str(tmp_path / "notours")])


# ----------------------------------------------------------------------------- preview, inputs
def test_preview_draws_annotations(images, models, tmp_path):
    out = tmp_path / "p"
    assert main(_argv(images, models, out, "--preview", "2")) == 0
    files = sorted(os.listdir(out / "preview"))
    assert files == ["1.png", "2.png"]  # broken.jpg (id 0) is skipped
    im = Image.open(out / "preview" / "1.png")
    assert im.size == (48 * 5, 40 + 16)  # image + canny, depth, normal, sem panels, caption strip
    assert not (out / "tsv").exists()
    orig = np.asarray(Image.open(os.path.join(images["dir"], "img0.png")).convert("RGB"))
    assert (np.asarray(im)[:40, :48] != orig).any()  # boxes drawn


def test_semantic_map_of_a_large_image_is_upsampled_as_labels(models):
    from DATA.prepare.annotators import SemanticMap

    seg = SemanticMap.from_pretrained(models["sem"])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    full = np.asarray(seg([image])[0])
    seg.max_side = 24  # logits at 24x20, labels resized (nearest) to the image
    small = np.asarray(seg([image])[0])
    assert small.shape == full.shape == (40, 48)
    assert set(np.unique(small)) <= set(range(1, 151)) and (small == full).mean() > 0.3


def test_canny_edges_of_a_square(tmp_path):
    from ldm.imageops import canny

    a = np.zeros((32, 40), np.uint8)
    a[8:24, 10:30] = 200
    rgb = canny(Image.fromarray(a).convert("RGB"))
    assert rgb.mode == "RGB" and rgb.size == (40, 32)
    edges = np.asarray(canny(Image.fromarray(a), mode="L"))
    assert set(np.unique(edges)) == {0, 255} and (np.asarray(rgb) == edges[..., None]).all()
    assert edges[16, 9:11].any() and edges[7:9, 20].any() and not edges[16, 15:25].any()  # on the border only
    assert not np.asarray(canny(Image.fromarray(a // 10), mode="L")).any()  # a faint step (20) is below 100 / 200
    assert np.asarray(canny(Image.fromarray(a // 10), low=10, high=20, mode="L")).any()
    Image.fromarray(a).save(tmp_path / "sq.png")
    assert (np.asarray(canny(str(tmp_path / "sq.png"))) == np.asarray(rgb)).all()  # a path opens safely


def test_normal_from_depth_of_a_ramp():
    from DATA.prepare.annotators import normal_from_depth

    ramp = Image.fromarray(np.tile(np.linspace(50, 250, 32), (16, 1)).astype(np.uint8))  # nearer to the right
    n = normal_from_depth(ramp)
    inner = n[2:-2, 2:-2]
    assert (inner[..., 0] < -0.1).all() and np.allclose(inner[..., 1], 0, atol=1e-6) and (inner[..., 2] > 0).all()
    np.testing.assert_allclose(inner, inner[:1, :1].repeat(12, 0).repeat(28, 1), atol=0.05)  # a plane
    flat = normal_from_depth(Image.new("L", (8, 8), 10))  # background: facing the camera
    np.testing.assert_allclose(flat[..., 2], 1.0)


def test_grounding_dino_detector(tmp_path):
    from DATA.prepare.annotators import Detector
    from ldm.evaluation.detectors import match_phrase

    detector = Detector.from_pretrained(write_tiny_grounding_dino(str(tmp_path / "gd")), threshold=0.0,
                                        text_threshold=0.0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    dets = detector(image, ["a red square", "the dog"])
    assert dets and all(lab in (0, 1) for lab, _, _ in dets)
    scores = [s for _, s, _ in dets]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 40 for _, _, (x0, y0, x1, y1) in dets)
    assert match_phrase("red square", ["a dog", "a red square"]) == 1 and match_phrase("cat", ["a dog"]) is None


def test_given_boxes_and_txt_captions_then_preview_folder_reused(images, models, tmp_path, capsys):
    from dataset.codec import decode_row
    from dataset.tsv import TSVFile

    caps = tmp_path / "caps"
    caps.mkdir()
    (caps / "img0.txt").write_text("a teddy bear on a table\n")
    inst = {"images": [{"id": 9, "file_name": "img0.png"}, {"id": 10, "file_name": "img2.png"}],
            "annotations": [{"id": 1, "image_id": 9, "bbox": [2, 3, 20, 10], "category_id": 5},
                            {"id": 2, "image_id": 9, "bbox": [0, 0, 0.1, 0.1], "category_id": 5}],  # too small
            "categories": [{"id": 5, "name": "teddy bear"}]}
    (tmp_path / "inst.json").write_text(json.dumps(inst))
    out = tmp_path / "root"
    argv = ["--images", images["dir"], "--out", str(out), "--captions", str(caps), "--annotations",
            str(tmp_path / "inst.json"), "--captioner", models["captioner"], "--detector", models["detector"],
            "--clip", models["clip"], "--device", "cpu", "--no-progress", "--box_threshold", "0.0"]
    assert main(argv + ["--preview", "1"]) == 0 and os.listdir(out) == ["preview"]
    assert main(argv) == 0  # a ROOT holding only previews is ours
    s = json.loads((out / "summary.json").read_text())
    assert s["box_sources"] == {"given": 1, "detected": 4}
    assert s["captions"] == {"given": 1, "generated": 4}  # of the rows written
    assert s["images_dropped"] == {"no box": 1, "unreadable image": 1}  # img2 is annotated with no boxes
    assert s["dropped_files"]["no box"] == ["img2.png"] and s["boxes_dropped"]["too small"] >= 1
    row = decode_row(TSVFile(str(out / "tsv" / "train-00000.tsv"))[0])
    assert row["caption"] == "a teddy bear on a table"
    assert [(a["bbox"], a["tokens_positive"]) for a in row["annos"]] == [([2, 3, 20, 10], [[2, 12]])]
    capsys.readouterr()
    err = _error_line(capsys, ["--images", images["dir"], "--out", str(tmp_path / "none"), "--captions", str(caps),
                               "--captioner", models["captioner"], "--detector", models["detector"], "--clip",
                               models["clip"], "--device", "cpu", "--no-progress", "--box_threshold", "2.0"])
    assert "no image was kept" in err and "no box above threshold 2.0" in err


def test_caption_phrases():
    assert caption_phrases("a man riding a horse next to a red car") == [
        ("a man", [[0, 5]]), ("a horse", [[13, 20]]), ("a red car", [[29, 38]])]
    assert [p for p, _ in caption_phrases("A cat on a wooden bench, with a building")] == [
        "A cat", "a wooden bench", "a building"]
    assert caption_phrases("") == []


def test_caption_and_annotation_readers(tmp_path):
    imgs = ["a.jpg", "d/b.png"]
    (tmp_path / "caps" / "d").mkdir(parents=True)
    (tmp_path / "caps" / "a.txt").write_text("a  cat\n")
    (tmp_path / "caps" / "d" / "b.txt").write_text("a dog")
    caps = read_captions(str(tmp_path / "caps"), imgs)
    assert caps.get("a.jpg") == "a cat" and caps.get("d/b.png") == "a dog"
    (tmp_path / "c.jsonl").write_text('{"file_name": "a.jpg", "caption": "x"}\n\n{"image": "b.png", "text": "y"}\n')
    caps = read_captions(str(tmp_path / "c.jsonl"))
    assert caps.get("a.jpg") == "x" and caps.get("d/b.png") == "y"
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [
        {"id": 1, "image_id": 1, "caption": "first"}, {"id": 2, "image_id": 1, "caption": "second"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert read_captions(str(tmp_path / "c.json")).get("a.jpg") == "first"
    inst = {"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
            "annotations": [{"id": 3, "image_id": 1, "bbox": [1, 1, 4, 4], "category_id": 7, "area": 16, "iscrowd": 0}],
            "categories": [{"id": 7, "name": "teddy bear"}]}
    (tmp_path / "inst.json").write_text(json.dumps(inst))
    ann = read_annotations(str(tmp_path / "inst.json")).get("a.jpg")
    assert ann == {"caption": None, "annos": [{"bbox": [1, 1, 4, 4], "phrase": "teddy bear"}]}
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match="not valid JSON"):
        read_captions(str(tmp_path / "bad.json"))
