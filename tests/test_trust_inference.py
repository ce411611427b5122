"""gligen_inference.py turns every bad input into ``error: <one line>`` and a non-zero exit, before any
compute is spent where it can, and never writes a black image or a broken record.

One subprocess per category proves the real entry point; the variants of a category run through
``gligen_inference.main`` in-process (same code path, no interpreter start-up)."""
from __future__ import annotations

import json
import math
import os
import struct
import zlib

import pytest
from PIL import Image

import gligen_inference
from _trust_helpers import error_line, run, snapshot, temporary_files

BOX = [[0.1, 0.1, 0.5, 0.6]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ldm.tiny import write_tiny_checkpoint, write_tiny_clip_model

    d = tmp_path_factory.mktemp("trust_tiny")
    out = {f: write_tiny_checkpoint(d / f"{f}.pth", f) for f in ("text", "text_image", "hed", "sem")}
    out["inpaint"] = write_tiny_checkpoint(d / "inpaint.pth", "text", inpaint=True)
    out["clip"] = write_tiny_clip_model(d / "clip")
    Image.new("RGB", (32, 32), (120, 30, 200)).save(d / "ok.png")
    out["ok"] = str(d / "ok.png")
    return out


def bomb_png(path, width=40000, height=40000) -> str:
    """A few hundred bytes of PNG that claim ``width`` x ``height`` pixels (1.6 G by default)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + b"\0" * width
    idat = zlib.compress(row * 4, 9)  # a few rows are enough: the size is refused from the header
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return str(path)


def text_entry(tiny, **kw):
    return {"prompt": "a cat", "phrases": ["a cat"], "locations": BOX, "ckpt": tiny["text"], **kw}


def write_layout(tmp_path, layout, name="layout.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(layout))
    return str(path)


def cli_args(tiny, tmp_path, layout, *extra):
    return ["--layout", write_layout(tmp_path, layout), "--clip", tiny["clip"], "--device", "cpu", "--steps", "2",
            "--batch_size", "1", "--folder", str(tmp_path / "out"), "--no-progress", *extra]


def in_process(capsys, argv) -> str:
    """Run ``gligen_inference.main`` and return its single error line (asserting a clean failure)."""
    rc = gligen_inference.main(argv)
    out = capsys.readouterr()
    lines = [line for line in out.err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert rc != 0 and len(errors) == 1 and lines[-1] == errors[0], (rc, out.err[-2000:])
    assert "Traceback" not in out.err + out.out
    return errors[0]


# ------------------------------------------------------------------------------------ decompression bombs
def test_bomb_in_reference_images_subprocess(tiny, tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    layout = {"prompt": "x", "phrases": ["a"], "images": [bomb], "locations": BOX, "ckpt": tiny["text_image"]}
    before = snapshot(tmp_path)
    p = run("gligen_inference.py", *cli_args(tiny, tmp_path, layout), cwd=str(tmp_path))
    err = error_line(p)
    assert "too large to decode safely" in err and "bomb.png" in err
    assert not (tmp_path / "out").exists() and snapshot(tmp_path) == {**before, "layout.json": snapshot(tmp_path)["layout.json"]}


@pytest.mark.parametrize("key,ckpt", [("input_image", "inpaint"), ("hed_image", "hed"), ("canny_image", "hed"),
                                      ("depth", "hed"), ("normal", "hed"), ("sem", "sem"), ("images", "text_image")])
def test_bomb_in_every_image_key(tiny, tmp_path, capsys, key, ckpt):
    bomb = bomb_png(tmp_path / f"{key}.png", 12000, 12000)  # 144 MP: above our limit, below Pillow's error
    entry = {"prompt": "x", "ckpt": tiny[ckpt]}
    if key == "images":
        entry.update(phrases=["a"], images=[bomb], locations=BOX)
    elif key == "input_image":
        entry.update(phrases=["a"], locations=BOX, input_image=bomb)
    else:
        entry[key] = bomb
    err = in_process(capsys, cli_args(tiny, tmp_path, entry))
    assert "too large to decode safely" in err and f"{key}.png" in err
    assert not (tmp_path / "out").exists()


def test_safe_opener_refuses_bomb_bytes_and_keeps_normal_images(tmp_path):
    from ldm.imageops import ImageError, open_image

    with pytest.raises(ImageError, match="too large"):
        open_image(open(bomb_png(tmp_path / "b.png"), "rb").read())
    Image.new("RGB", (64, 48), (1, 2, 3)).save(tmp_path / "fine.jpg")
    assert open_image(str(tmp_path / "fine.jpg")).size == (64, 48)


# ------------------------------------------------------------------------------------ output folder
def test_unwritable_output_folder_subprocess(tiny, tmp_path):
    (tmp_path / "a_file").write_text("keep me")
    p = run("gligen_inference.py", *cli_args(tiny, tmp_path, text_entry(tiny))[:-3], "--folder",
            str(tmp_path / "a_file" / "out"), "--no-progress", cwd=str(tmp_path))
    err = error_line(p)
    assert "cannot write to the output folder" in err and "a_file" in err
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_output_sub_folder_checked_before_sampling(tiny, tmp_path, capsys, monkeypatch):
    from ldm.inference.pipeline import Runner

    def no_sampling(*a, **k):
        raise AssertionError("sampling started although the output folder cannot be written")

    monkeypatch.setattr(Runner, "generate", no_sampling)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "taken").write_text("a file where the sub-folder should go")
    err = in_process(capsys, cli_args(tiny, tmp_path, text_entry(tiny, save_folder_name="taken")))
    assert "cannot write to the output folder" in err and "taken" in err


# ------------------------------------------------------------------------------------ numbers
def test_nan_guidance_scale_subprocess(tiny, tmp_path):
    p = run("gligen_inference.py", *cli_args(tiny, tmp_path, text_entry(tiny), "--guidance_scale", "nan"),
            cwd=str(tmp_path))
    assert "guidance_scale must be a finite number" in error_line(p)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--guidance_scale", "inf"], "guidance_scale"), (["--guidance_scale", "-3"], "guidance_scale"),
    (["--guidance_scale", "1e12"], "guidance_scale"), (["--steps", "0"], "steps"), (["--steps", "100000"], "steps"),
    (["--steps", "-5"], "steps"), (["--batch_size", "0"], "batch_size"), (["--batch_size", "-2"], "batch_size"),
    (["--batch_size", "100000"], "batch_size"), (["--seed", "-1"], "seed"), (["--seed", str(2 ** 70)], "seed"),
])
def test_out_of_range_options(tiny, tmp_path, capsys, flags, fragment):
    assert fragment in in_process(capsys, cli_args(tiny, tmp_path, text_entry(tiny), *flags))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings", [{"guidance_scale": float("nan")}, {"guidance_scale": "7"}, {"steps": 2.5},
                                      {"batch_size": True}, {"folder": 3}, {"steps": float("inf")}])
def test_bad_settings_in_layout_file(tiny, tmp_path, capsys, settings):
    layout = {"settings": settings, "generations": [text_entry(tiny)]}
    err = in_process(capsys, ["--layout", write_layout(tmp_path, layout), "--clip", tiny["clip"], "--device", "cpu",
                              "--no-progress"])
    assert next(iter(settings)) in err


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("box_format", ["xyxy", "xywh", "xyxy_pixels", "xywh_pixels"])
@pytest.mark.parametrize("box", [[NAN, 0, 1, 1], [0, 0, INF, 1], [0, -INF, 1, 1], [-5, 0, 1, 1], [0, 0, 1e300, 1e300]])
def test_non_finite_or_out_of_range_boxes_in_every_format(tiny, tmp_path, capsys, box_format, box):
    err = in_process(capsys, cli_args(tiny, tmp_path, text_entry(tiny, locations=[box]), "--box-format", box_format))
    assert "box 0" in err


@pytest.mark.parametrize("alpha", [[NAN, 0, 1], [0.5, 0.5, 0.5], [-1, 1, 1], [INF, 0, 0], [1, 0]])
def test_bad_alpha_type(tiny, tmp_path, capsys, alpha):
    assert "alpha_type" in in_process(capsys, cli_args(tiny, tmp_path, text_entry(tiny, alpha_type=alpha)))


def test_non_finite_keypoints(tiny, tmp_path, capsys):
    person = [[0.5, 0.5]] * 16 + [[NAN, 0.2]]
    entry = {"prompt": "x", "keypoints": [person], "ckpt": tiny["text"]}
    assert "keypoint 16 of person 0" in in_process(capsys, cli_args(tiny, tmp_path, entry))


def test_non_finite_sample_is_an_error_not_a_black_image(tiny, tmp_path, capsys, monkeypatch):
    import torch

    from ldm.models.autoencoder import AutoencoderKL

    monkeypatch.setattr(AutoencoderKL, "decode", lambda self, z: torch.full((z.shape[0], 3, 16, 16), float("nan")))
    err = in_process(capsys, cli_args(tiny, tmp_path, text_entry(tiny, save_folder_name="nan")))
    assert "NaN/inf" in err and not list((tmp_path / "out").rglob("*.png"))


# ------------------------------------------------------------------------------------ text
TRICKY = ['a photo of [a cat]', 'the "best" dog\'s toy', 'un café à Zürich — 猫 🐱', 'x]', '{"k": [1]}', 'back\\slash']


def test_brackets_quotes_unicode_saved_and_reloadable_subprocess(tiny, tmp_path):
    from ldm.inference.layout import load_layout

    entry = text_entry(tiny, prompt=" ".join(TRICKY), phrases=TRICKY, locations=[[0.1, 0.1, 0.5, 0.5]] * len(TRICKY),
                       negative_prompt="[no] \"blur\" ü", save_folder_name="tricky ünïcode [1]", seed=5)
    p = run("gligen_inference.py", *cli_args(tiny, tmp_path, entry), cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    folder = tmp_path / "out" / "tricky ünïcode [1]"
    assert sorted(os.listdir(folder)) == ["0.json", "0.png", "0_annotated.png"]  # no temporary file left
    _, gens = load_layout(str(folder / "0.json"))
    assert gens[0].prompt == " ".join(TRICKY) and gens[0].phrases == TRICKY
    assert gens[0].negative_prompt == "[no] \"blur\" ü" and gens[0].seed == 5
    # the saved record repeats the run
    assert gligen_inference.main(["--layout", str(folder / "0.json"), "--clip", tiny["clip"], "--device", "cpu",
                                  "--folder", str(tmp_path / "out"), "--no-progress", "--batch_size", "1"]) == 0
    assert (folder / "1.png").exists()


def test_layout_file_that_is_not_text(tiny, tmp_path, capsys):
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    err = in_process(capsys, ["--layout", str(tmp_path / "bin.json"), "--device", "cpu"])
    assert "cannot read layout file" in err and "not UTF-8" in err


# ------------------------------------------------------------------------------------ semantic maps
def test_semantic_map_id_151_subprocess(tiny, tmp_path):
    Image.new("L", (16, 16), 151).save(tmp_path / "sem151.png")
    p = run("gligen_inference.py", *cli_args(tiny, tmp_path, {"prompt": "x", "sem": str(tmp_path / "sem151.png"),
                                                               "ckpt": tiny["sem"]}), cwd=str(tmp_path))
    err = error_line(p)
    assert "class index 151" in err and "0..150" in err


@pytest.mark.parametrize("mode,value", [("RGB", (200, 30, 40)), ("RGBA", (10, 200, 10, 255)), ("P", None)])
def test_colour_picture_as_label_map_is_refused(tiny, tmp_path, capsys, mode, value):
    if mode == "P":
        im = Image.new("RGB", (16, 16), (250, 10, 10)).convert("P", palette=Image.ADAPTIVE)
    else:
        im = Image.new(mode, (16, 16), value)
    im.save(tmp_path / "colour.png")
    err = in_process(capsys, cli_args(tiny, tmp_path, {"prompt": "x", "sem": str(tmp_path / "colour.png"),
                                                       "ckpt": tiny["sem"]}))
    assert "colour picture, not a label map" in err and "class ids 0..150" in err


def test_grey_rgb_label_map_and_id_150_accepted():
    from ldm.imageops import open_label_map

    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (150, 150, 150)).save(buf, format="PNG")
    assert open_label_map(buf.getvalue()).getextrema() == (150, 150)


# ------------------------------------------------------------------------------------ checkpoints
def test_state_dict_mismatch_named_subprocess(tiny, tmp_path):
    from ldm.checkpoint import load_checkpoint_file, save_checkpoint

    ckpt = load_checkpoint_file(tiny["text"])
    for k in list(ckpt["model"])[:4]:
        del ckpt["model"][k]
    save_checkpoint(ckpt, tmp_path / "short.pth")
    p = run("gligen_inference.py", *cli_args(tiny, tmp_path, text_entry(tiny, ckpt=str(tmp_path / "short.pth"))),
            cwd=str(tmp_path))
    err = error_line(p)
    assert "model: state dict does not match" in err and "4 missing key(s): " in err
    assert not temporary_files(tmp_path)
