"""End-to-end ``gligen_inference.py`` on tiny random checkpoints (ldm.tiny), offline, every modality."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import gligen_inference
from ldm.inference.standins import write_standins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOX = [[0.0, 0.09, 0.33, 0.76], [0.55, 0.11, 1.0, 0.8]]
PERSON = [[0.5, 0.2]] * 10 + [[0, 0]] * 7

CKPTS = {"text": ("text", False), "text_image": ("text_image", False), "keypoint": ("keypoint", False),
         "hed": ("hed", False), "canny": ("canny", False), "depth": ("depth", False), "normal": ("normal", False),
         "sem": ("sem", False), "inpaint_text": ("text", True), "inpaint_text_image": ("text_image", True)}




@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from ldm.tiny import write_tiny_checkpoint, write_tiny_clip_model

    d = tmp_path_factory.mktemp("tiny")
    paths = {name: write_tiny_checkpoint(d / f"{name}.pth", fam, inpaint=inp) for name, (fam, inp) in CKPTS.items()}
    paths["clip"] = write_tiny_clip_model(d / "clip")
    paths["images"] = str(d / "images")
    write_standins(paths["images"])
    return paths


def img(tiny, name):
    return os.path.join(tiny["images"], name)


def entries(tiny):
    """One layout entry per checkpoint (modality)."""
    return {
        "text": dict(prompt="a teddy bear sitting next to a bird", phrases=["a teddy bear", "a bird"], locations=BOX,
                     alpha_type=[0.5, 0, 0.5]),
        "text_image": dict(prompt="a brick house", phrases=["a brick house", "placeholder"],
                           images=[img(tiny, "placeholder.png"), img(tiny, "style_golden.jpg")],
                           locations=[[0.4, 0.2, 1.0, 0.8], [0.0, 1.0, 0.0, 1.0]], text_mask=[1, 0], image_mask=[0, 1]),
        "keypoint": dict(prompt="two people", locations=[PERSON, PERSON], alpha_type=[0.5, 0, 0.5]),
        "hed": dict(prompt="a man", hed_image=img(tiny, "hed_man_eat.png"), alpha_type=[0.5, 0, 0.5]),
        "canny": dict(prompt="a robot", canny_image=img(tiny, "canny_robot.png")),
        "depth": dict(prompt="a bird", depth=img(tiny, "depth_bird.png")),
        "normal": dict(prompt="a tree", normal=img(tiny, "normal_tree_building.jpg")),
        "sem": dict(prompt="a living room", sem=img(tiny, "sem_ade_living_room.png"), alpha_type=[0.5, 0, 0.5]),
        "inpaint_text": dict(prompt="a corgi and a cake", phrases=["corgi", "cake"], locations=BOX,
                             input_image=img(tiny, "dalle2_museum.jpg")),
        "inpaint_text_image": dict(prompt="a bigben on the beach", images=[img(tiny, "bigben.jpg")],
                                   locations=[[0.18, 0.08, 0.62, 0.75]], input_image=img(tiny, "beach.jpg")),
    }


def run_cli(tiny, tmp_path, layout, *extra, name="layout.json"):
    path = tmp_path / name
    path.write_text(json.dumps(layout))
    out = tmp_path / "out"
    argv = ["--layout", str(path), "--clip", tiny["clip"], "--device", "cpu", "--steps", "2", "--batch_size", "2",
            "--folder", str(out), "--no-progress", *extra]
    return gligen_inference.main(argv), out


NO_SD_CONV_WARNING = pytest.mark.filterwarnings("ignore:SD first-conv weights not provided")


@NO_SD_CONV_WARNING
@pytest.mark.parametrize("name", list(CKPTS))
def test_every_modality(tiny, tmp_path, name):
    entry = {**entries(tiny)[name], "ckpt": tiny[name], "seed": 3, "save_folder_name": name}
    rc, out = run_cli(tiny, tmp_path, entry)
    assert rc == 0
    folder = out / name
    assert sorted(os.listdir(folder)) == ["0.json", "0.png", "0_annotated.png", "1.json", "1.png", "1_annotated.png"]
    im = Image.open(folder / "0.png")
    assert im.size == (16, 16) and im.mode == "RGB"
    assert min(Image.open(folder / "0_annotated.png").size) >= 512
    rec = json.loads((folder / "1.json").read_text())
    assert rec["outputs"]["batch_index"] == 1 and rec["generations"][0]["seed"] == 3
    assert rec["settings"]["steps"] == 2 and rec["settings"]["batch_size"] == 2
    fam, inpaint = CKPTS[name]
    assert rec["outputs"]["mode"].startswith("inpainting" if inpaint else "generation")


def test_seeded_run_is_repeatable_from_saved_json(tiny, tmp_path):
    entry = {**entries(tiny)["inpaint_text"], "ckpt": tiny["inpaint_text"], "seed": 7, "save_folder_name": "a"}
    rc, out = run_cli(tiny, tmp_path, entry, "--sampler", "ddim")
    assert rc == 0
    first = np.asarray(Image.open(out / "a" / "1.png"))
    assert gligen_inference.main(["--layout", str(out / "a" / "1.json"), "--folder", str(tmp_path / "again"),
                                  "--device", "cpu", "--no-progress"]) == 0
    again = np.asarray(Image.open(tmp_path / "again" / "a" / "1.png"))
    assert np.array_equal(first, again)
    rec = json.loads((out / "a" / "0.json").read_text())
    assert rec["settings"]["sampler"] == "ddim"
    # numbering continues after the existing files
    rc, _ = run_cli(tiny, tmp_path, entry)
    assert rc == 0 and {"2.png", "3.png", "3.json"} <= set(os.listdir(out / "a"))


def test_pixel_box_format_and_hub_style_file_name(tiny, tmp_path):
    # a folder holding diffusion_pytorch_model.bin whose path says nothing about the modality
    hub_dir = tmp_path / "snap"
    hub_dir.mkdir()
    shutil.copy(tiny["text"], hub_dir / "diffusion_pytorch_model.bin")
    entry = dict(prompt="x", phrases=["a"], boxes=[[0, 46, 169, 389]], save_folder_name="px", seed=1)
    rc, out = run_cli(tiny, tmp_path, entry, "--ckpt", str(hub_dir), "--box-format", "xywh_pixels",
                      "--batch_size", "1", "--no_plms")
    assert rc == 0
    rec = json.loads((out / "px" / "0.json").read_text())
    assert rec["generations"][0]["boxes"] == [pytest.approx([0, 46 / 512, 169 / 512, 435 / 512])]
    assert rec["settings"]["box_format"] == "xyxy" and rec["settings"]["sampler"] == "ddim"


@NO_SD_CONV_WARNING
def test_example_set_filtered_by_checkpoint(tiny, tmp_path):
    """No layout + --ckpt: the original examples this checkpoint can run (bundled stand-in inputs)."""
    rc = gligen_inference.main(["--ckpt", tiny["hed"], "--device", "cpu", "--steps", "2", "--batch_size", "1",
                                "--folder", str(tmp_path), "--no-progress"])
    assert rc == 0
    assert sorted(os.listdir(tmp_path)) == ["hed"]


def test_missing_example_input_is_named(tiny, tmp_path, monkeypatch, capsys):
    from ldm.inference import examples

    monkeypatch.setattr(examples, "ORIGINAL_EXAMPLES",
                        [dict(examples.ORIGINAL_EXAMPLES[1], input_image="inference_images/nope.jpg")])
    assert gligen_inference.main(["--folder", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: example 'inpainting_box_text': ") and "inference_images/nope.jpg" in err


def _bad_cases(tiny, tmp_path):
    bad_image = tmp_path / "bad.png"
    bad_image.write_text("not an image")
    e = entries(tiny)
    return {
        "more phrases than boxes": ({**e["text"], "phrases": ["a", "b", "c"]}, "3 phrases but 2 boxes"),
        "more boxes than phrases": ({**e["text"], "phrases": ["a"]}, "1 phrases but 2 boxes"),
        "too many objects": ({**e["text"], "phrases": ["a"] * 31, "locations": [[0, 0, 1, 1]] * 31}, "at most 30"),
        "box outside": ({**e["text"], "locations": [[0, 0, 1.5, 1], BOX[1]]}, "outside [0, 1]"),
        "x1 < x0": ({**e["text"], "locations": [[0.5, 0, 0.1, 1], BOX[1]]}, "x1 < x0"),
        "missing image": ({**e["hed"], "hed_image": str(tmp_path / "missing.png")}, "file not found"),
        "not an image": ({**e["text_image"], "images": [str(bad_image), None]}, "not a readable image"),
        "unknown key": ({**e["text"], "colour": "red"}, "unknown layout key 'colour'"),
        "inpaint ckpt without input": ({**e["text"], "ckpt": tiny["inpaint_text"]}, "needs an 'input_image'"),
        "input image with generation ckpt": ({**e["inpaint_text"], "ckpt": tiny["text"]}, "generation model"),
        "modality the ckpt lacks": ({**e["hed"], "ckpt": tiny["text"]}, "'hed_image', which checkpoint"),
        "reference images on a text ckpt": ({**e["text_image"], "ckpt": tiny["text"]}, "reference 'images'"),
        "keypoints on a box ckpt": ({**e["keypoint"], "ckpt": tiny["text"]}, "keypoints"),
    }


def test_bad_inputs_give_one_line_errors(tiny, tmp_path, capsys):
    for what, (entry, fragment) in _bad_cases(tiny, tmp_path).items():
        entry = {"ckpt": tiny["text"], **entry}
        rc, out = run_cli(tiny, tmp_path, entry)
        err = capsys.readouterr().err.strip()
        assert rc == 2, what
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, (what, err)
        assert fragment in err, (what, err)
        assert not out.exists(), what  # nothing was generated


def test_bad_settings(tiny, tmp_path, capsys):
    entry = {**entries(tiny)["text"], "ckpt": tiny["text"]}
    for flags, fragment in ((["--steps", "3"], "use e.g. 2 or 4 steps"), (["--batch_size", "0"], "batch_size"),
                            (["--steps", "0"], "steps must be a positive integer")):
        rc, _ = run_cli(tiny, tmp_path, entry, *flags)
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and fragment in err, err
    rc, _ = run_cli(tiny, tmp_path, {"settings": {"stepz": 2}, "generations": [entry]})
    assert rc == 2 and "unknown key 'stepz' in the layout's settings" in capsys.readouterr().err


def test_cli_subprocess_error_without_traceback(tmp_path):
    """Offline Hub, no cache: the default run names the repo it could not fetch and exits non-zero."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "gligen_inference.py"), "--folder", str(tmp_path / "o")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("error: cannot fetch diffusion_pytorch_model.bin from the Hub repo "
                               "gligen/gligen-generation-text-box"), p.stderr
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1


def test_alpha_helpers_exposed_for_the_parity_checker():
    assert gligen_inference.alpha_generator(10, [0.3, 0, 0.7]) == [1, 1, 1] + [0] * 7
    assert callable(gligen_inference.set_alpha_scale)


def test_sd_first_conv_option(tiny, tmp_path, recwarn):
    """--sd_first_conv feeds zero-gate steps of a spatial model (a box checkpoint's first conv is SD's)."""
    entry = {**entries(tiny)["hed"], "ckpt": tiny["hed"], "seed": 1, "alpha_type": [0, 0, 1], "save_folder_name": "h"}
    rc, out = run_cli(tiny, tmp_path, entry, "--sd_first_conv", tiny["text"], "--batch_size", "1")
    assert rc == 0 and (out / "h" / "0.png").exists()
    assert not [w for w in recwarn if "first-conv" in str(w.message)]


def test_bf16(tiny, tmp_path):
    entry = {**entries(tiny)["text"], "ckpt": tiny["text"], "seed": 1, "save_folder_name": "b"}
    rc, out = run_cli(tiny, tmp_path, entry, "--dtype", "bf16", "--batch_size", "1")
    assert rc == 0 and (out / "b" / "0.png").exists()


def test_hub_repo_ids_resolve_through_hf_hub_download(monkeypatch, tmp_path):
    import huggingface_hub

    from ldm.inference.checkpoints import RELEASED, resolve_checkpoint
    from ldm.inference.modes import Mode

    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, filename, revision=None: calls.append((repo, filename, revision)) or "/x.bin")
    assert resolve_checkpoint("gligen/gligen-generation-hed") == "/x.bin"
    assert resolve_checkpoint("gligen/gligen-generation-sem@main") == "/x.bin"
    assert resolve_checkpoint(None, Mode("text_image", True)) == "/x.bin"
    assert calls == [("gligen/gligen-generation-hed", "diffusion_pytorch_model.bin", None),
                     ("gligen/gligen-generation-sem", "diffusion_pytorch_model.bin", "main"),
                     ("gligen/gligen-inpainting-text-image-box", "diffusion_pytorch_model.bin", None)]
    assert len(RELEASED) == 10
    local = tmp_path / "checkpoint_generation_depth.pth"
    local.write_bytes(b"x")
    assert resolve_checkpoint(None, Mode("depth"), ckpt_dir=str(tmp_path)) == str(local)
    assert resolve_checkpoint(str(local)) == str(local)


# ----------------------------------------------------------------------------- golden fixtures
GOLDEN = os.path.join(ROOT, "tests", "reference", "golden")


class FixtureFeatures:
    """Phrase / image features = the fixture's precomputed rows (its CLIP is not available)."""

    def __init__(self, batch):
        self.batch = batch

    def text_before(self, phrases):
        return self.batch["text_embeddings"][0, :len(phrases)]

    def image_reprojected(self, images):
        return self.batch["image_embeddings"][0, :len(images)]


@pytest.mark.parametrize("fixture", ["text_box", "text_image_box", "keypoint"])
def test_pipeline_reproduces_golden_samples(fixture, tiny, monkeypatch):
    """Runner (batch preparation, CFG, gate schedule, sampler, decode, PNG conversion) vs the original."""
    import torch

    from ldm.inference.layout import Generation
    from ldm.inference.pipeline import Runner, Settings
    from ldm.inference.saving import to_uint8

    fdir = os.path.join(GOLDEN, fixture)
    meta = json.load(open(os.path.join(fdir, "fixture.json")))
    inputs = torch.load(os.path.join(fdir, "inputs.pt"), map_location="cpu", weights_only=False)
    outputs = torch.load(os.path.join(fdir, "outputs.pt"), map_location="cpu", weights_only=False)
    monkeypatch.chdir(GOLDEN)  # the embedded text-encoder config names "tiny_clip" relative to it
    entry = dict(prompt=meta["prompt"], alpha_type=meta["alpha_type"], ckpt=os.path.join(fdir, "checkpoint.pth"))
    if meta["keypoints"]:
        entry["keypoints"] = meta["keypoints"]
    else:
        entry.update(phrases=meta["phrases"], boxes=meta["boxes"], text_mask=meta["text_mask"],
                     image_mask=meta["image_mask"])
        if "image_embeddings" in inputs["batch"]:
            entry["images"] = [img(tiny, "clock.png")] * len(meta["phrases"])
    gen = Generation.from_dict(entry)
    for sampler in ("plms", "ddim"):
        runner = Runner(Settings(sampler=sampler, steps=meta["steps"], batch_size=meta["batch_size"],
                                 seed=meta["sample_seed"], negative_prompt=meta["negative_prompt"],
                                 guidance_scale=meta["guidance_scale"], device="cpu", progress=False))
        monkeypatch.setattr(runner, "features", lambda: FixtureFeatures(inputs["batch"]))
        res = runner.generate(gen, starting_noise=inputs["starting_noise"])
        tol = meta["tolerances"][f"{sampler}_latent"]
        ref = outputs[f"{sampler}_latent"]
        assert (res.latents - ref).abs().max() <= tol["atol"] + tol["rtol"] * ref.abs().max()
    # the prepared batch equals the original's prepare_batch output
    from ldm.inference.batch import prepare_batch

    models, mode = runner.load(entry["ckpt"])
    batch = prepare_batch(gen, mode, meta["batch_size"], 16, dim=24, features=FixtureFeatures(inputs["batch"]))
    assert set(batch) == set(inputs["batch"])
    for k, ref in inputs["batch"].items():
        torch.testing.assert_close(batch[k], ref, atol=0, rtol=0, msg=k)
    # PNGs as the original's saving code writes them
    with torch.no_grad():
        arrays = to_uint8(models.autoencoder.decode(outputs["plms_latent"]))
    for k, a in enumerate(arrays):
        ref_png = np.asarray(Image.open(os.path.join(fdir, f"plms_{k}.png")).convert("RGB"))
        assert np.abs(a.astype(int) - ref_png.astype(int)).max() <= 2
