"""convert_ckpt.py and the DATA/ tools: bad input is one ``error:`` line and a non-zero exit; nothing
that existed before is changed, nothing temporary is left behind."""
from __future__ import annotations

import json
import os

import pytest
import torch

from _data_helpers import make_tiny_clip, rand_image, write_json, write_tsv
from _trust_helpers import error_line, run, snapshot, temporary_files
from ldm.checkpoint import build_from_checkpoint, load_checkpoint_file, save_checkpoint
from ldm.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust_tools")
    return str(write_tiny_checkpoint(d / "gen.pth", "text"))


def _convert_main(capsys, *argv) -> str:
    import convert_ckpt

    assert convert_ckpt.main([str(a) for a in argv]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------ convert_ckpt.py
def test_convert_refuses_output_through_symlink_subprocess(source, tmp_path):
    src = tmp_path / "gen.pth"
    src.write_bytes(open(source, "rb").read())
    os.symlink(src, tmp_path / "link.pth")
    before = snapshot(tmp_path)
    p = run("convert_ckpt.py", "--ckpt_path", src, "--new_ckpt_path", tmp_path / "link.pth", cwd=str(tmp_path))
    err = error_line(p)
    assert "is the input checkpoint" in err and "link.pth" in err
    assert snapshot(tmp_path) == before and not temporary_files(tmp_path)


def test_convert_refuses_same_relative_and_hard_linked_output(source, tmp_path, capsys, monkeypatch):
    src = tmp_path / "gen.pth"
    src.write_bytes(open(source, "rb").read())
    (tmp_path / "sub").mkdir()
    os.link(src, tmp_path / "hard.pth")
    monkeypatch.chdir(tmp_path / "sub")
    before = snapshot(tmp_path)
    for out in ("../gen.pth", "./../sub/../gen.pth", str(src), "../hard.pth"):
        assert "is the input checkpoint" in _convert_main(capsys, "--ckpt_path", "../gen.pth", "--new_ckpt_path", out)
    assert "is a folder" in _convert_main(capsys, "--ckpt_path", src, "--new_ckpt_path", tmp_path / "sub")
    assert snapshot(tmp_path) == before


def test_convert_keeps_every_part_and_widens_ema(source, tmp_path):
    import convert_ckpt

    ckpt = load_checkpoint_file(source)
    ckpt["ema"] = {k: v.clone() for k, v in ckpt["model"].items()}
    ckpt["opt"] = {"state": {}, "param_groups": []}
    ckpt["iters"] = 7
    save_checkpoint(ckpt, tmp_path / "train.pth")
    assert convert_ckpt.main(["--ckpt_path", str(tmp_path / "train.pth"), "--new_ckpt_path",
                              str(tmp_path / "inpaint.safetensors")]) == 0
    new = load_checkpoint_file(tmp_path / "inpaint.safetensors")
    assert {"model", "ema", "text_encoder", "autoencoder", "diffusion", "config_dict"} <= set(new)
    assert "opt" not in new and new["ema"]["input_blocks.0.0.weight"].shape[1] == 9
    for part in ("text_encoder", "autoencoder", "diffusion"):
        assert all(torch.equal(new[part][k], v) for k, v in ckpt[part].items())
    models = build_from_checkpoint(tmp_path / "inpaint.safetensors")  # directly usable for inference
    assert models.model.inpaint_mode
    assert not temporary_files(tmp_path)


# ------------------------------------------------------------------------------------ DATA/make_tsv.py
@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "images").mkdir()
    rand_image(32, 32, 1).save(tmp_path / "images" / "a.jpg")
    write_tsv(str(tmp_path / "out.tsv"), [["0", json.dumps({"old": "row"})]])  # an existing output to protect
    return tmp_path


def _make_tsv_main(capsys, *argv) -> str:
    from DATA.make_tsv import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and sum(line.startswith("error: ") for line in err) == 1, err
    return err[-1]


def test_make_tsv_missing_annotation_file_subprocess(data_dir):
    before = snapshot(data_dir)
    p = run("DATA/make_tsv.py", "--image_root", data_dir / "images", "--annotations", data_dir / "nope.json",
            "--out", data_dir / "out.tsv", "--clip", data_dir / "no_clip", cwd=str(data_dir))
    err = error_line(p)
    assert "annotation file not found" in err and "nope.json" in err
    assert snapshot(data_dir) == before and not temporary_files(data_dir)


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "is not valid JSON"),
    ('{"foo": 1}', "unsupported annotation format"),
    ('["a.jpg"]', "entry 0 must be an object"),
    ('[{"file_name": "a.jpg", "caption": "c", "annos": 3}]', "entry 0 must be an object"),
    ('{"images": [{"file_name": "a.jpg", "caption": "c"}], "annotations": []}', "missing key 'id'"),
    ('{"images": [{"id": 1, "file_name": "a.jpg", "caption": "c"}], "annotations": [{"id": 1, "bbox": [0, 0, 4, 4]}]}',
     "missing key 'image_id'"),
    ('[{"file_name": "a.jpg", "caption": "a cat", "annos": [{"bbox": [0, 0, 9, 9]}]}]', "has no phrase"),
    ('[{"file_name": "a.jpg", "caption": "a cat", "annos": [{"bbox": [0, 0, 9, 9], "phrase": "  "}]}]', "has no phrase"),
    ('[{"file_name": "a.jpg", "caption": "a cat", "annos": [{"bbox": [0, 0, 9, 9], "tokens_positive": [[2, 99]]}]}]',
     "tokens_positive"),
    ('[{"file_name": "a.jpg", "annos": []}]', "has no caption"),
])
def test_make_tsv_malformed_annotations_leave_output_intact(data_dir, capsys, content, fragment):
    (data_dir / "ann.json").write_text(content)
    before = snapshot(data_dir)
    err = _make_tsv_main(capsys, "--image_root", data_dir / "images", "--annotations", data_dir / "ann.json",
                         "--out", data_dir / "out.tsv", "--clip", data_dir / "no_clip")
    assert fragment in err, err
    assert snapshot(data_dir) == before and not temporary_files(data_dir)


def test_make_tsv_all_images_unreadable_keeps_existing_tsv(data_dir, capsys):
    clip = make_tiny_clip(str(data_dir / "clip"))
    ann = write_json(str(data_dir / "ann.json"), [{"file_name": "gone.jpg", "caption": "a dog",
                                                   "annos": [{"bbox": [0, 0, 9, 9], "phrase": "a dog"}]}])
    before = snapshot(data_dir)
    with pytest.warns(RuntimeWarning, match="skipping unreadable image"):
        err = _make_tsv_main(capsys, "--image_root", data_dir / "images", "--annotations", ann,
                             "--out", data_dir / "out.tsv", "--clip", clip)
    assert "no row written" in err
    assert snapshot(data_dir) == before and not temporary_files(data_dir)


# ------------------------------------------------------------------------------------ DATA/tsv_split_merge.py
def test_split_into_the_inputs_own_folder_keeps_the_input(tmp_path):
    from DATA.tsv_split_merge import split

    write_tsv(str(tmp_path / "data.tsv"), [[str(i), "x" * 50] for i in range(6)])
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    parts = split(str(tmp_path / "data.tsv"), str(tmp_path), chuck_size=100)
    after = snapshot(tmp_path)
    assert len(parts) > 1 and all(after[k] == v for k, v in before.items())


def test_split_merge_errors_subprocess(tmp_path):
    p = run("DATA/tsv_split_merge.py", "--mode", "merge", "--merge_in_folder", tmp_path / "none",
            "--merge_out_folder", tmp_path / "m", cwd=str(tmp_path))
    assert "folder not found" in error_line(p)
    assert not (tmp_path / "m").exists()
