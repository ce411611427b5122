"""main.main in-process on the tiny config: inpainting, EMA / accumulation / autocast, bad input."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

import main as main_mod
from _train_helpers import SD_NAME, TINY_CONFIG, TSV_REL, shared_tiny_root
from ldm.checkpoint import load_checkpoint_file


@pytest.fixture(autouse=True)
def _no_spawn(monkeypatch):
    import torch.multiprocessing as mp

    monkeypatch.setattr(mp, "set_start_method", lambda *a, **k: None)
    monkeypatch.delenv("GLIGEN_DEBUG", raising=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return shared_tiny_root(tmp_path_factory)


def _argv(data_root, out, name="t", *extra):
    return ["--yaml_file", TINY_CONFIG, "--DATA_ROOT", str(data_root), "--OUTPUT_ROOT", str(out), "--name", name,
            "--official_ckpt_name", SD_NAME, "--device", "cpu", "--batch_size", "2", "--workers", "0",
            "--warmup_steps", "0", "--base_learning_rate", "1e-3", "--total_iters", "3", "--save_every_iters", "10",
            "--disable_inference_in_training", "True", *extra]


def _latest(out, name="t"):
    return load_checkpoint_file(os.path.join(out, name, "tag00", "checkpoint_latest.pth"))


def test_inpainting_training_from_converted_checkpoint(data_root, tmp_path):
    import convert_ckpt
    from ldm.tiny import write_tiny_checkpoint

    gen = write_tiny_checkpoint(tmp_path / "gen.pth", "text")
    init = tmp_path / "inpaint_init.pth"
    assert convert_ckpt.main(["--ckpt_path", gen, "--new_ckpt_path", str(init)]) == 0
    out = tmp_path / "out"
    assert main_mod.main(_argv(data_root, out, "t", "--inpaint_mode", "True", "--ckpt", str(init),
                               "--randomize_fg_mask", "True", "--random_add_bg_mask", "True",
                               "--disable_inference_in_training", "False", "--preview_steps", "2")) == 0
    ckpt = _latest(out)
    start = load_checkpoint_file(init)["model"]
    w0, w1 = start["input_blocks.0.0.weight"], ckpt["model"]["input_blocks.0.0.weight"]
    assert w1.shape[1] == 9 and w1[:, 4:].abs().sum() > 0  # the new channels are trained
    assert torch.equal(ckpt["model"]["input_blocks.0.0.bias"], start["input_blocks.0.0.bias"])  # bias frozen
    assert not torch.equal(w0, w1)
    assert ckpt["config_dict"]["_content"]["model"]["params"]["inpaint_mode"] is True
    run = out / "t" / "tag00"
    assert (run / "00000001_mased_real.png").is_file() and (run / "00000003.png").is_file()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_ema_accumulation_autocast(data_root, tmp_path, precision):
    out = tmp_path / "out"
    assert main_mod.main(_argv(data_root, out, "t", "--enable_ema", "True", "--ema_rate", "0.5",
                               "--gradient_accumulation_steps", "2", "--precision", precision,
                               "--gradient_checkpointing", "False")) == 0
    ckpt = _latest(out)
    assert "ema" in ckpt and ckpt["iters"] == 3
    assert ckpt["loader"]["epoch"] == 1 and ckpt["loader"]["batches"] == 2  # 6 micro-batches of 2, 4 per epoch
    assert ckpt["config_dict"]["_content"]["model"]["params"]["use_checkpoint"] is False
    k = "input_blocks.1.1.transformer_blocks.0.fuser.linear.weight"
    assert not torch.equal(ckpt["ema"][k], ckpt["model"][k])
    assert torch.equal(ckpt["ema"]["out.2.weight"], ckpt["model"]["out.2.weight"])
    assert ("scaler" in ckpt) == (precision == "fp16")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def _one_line_error(capsys, argv) -> str:
    assert main_mod.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_gives_one_line_errors(data_root, tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _one_line_error(capsys, _argv(empty, out))
    assert "TSV file not found" in msg and TSV_REL in msg

    no_idx = tmp_path / "no_idx"
    shutil.copytree(data_root, no_idx)
    os.remove(no_idx / TSV_REL.replace(".tsv", ".lineidx"))
    msg = _one_line_error(capsys, _argv(no_idx, out))
    assert "line index file not found" in msg and "train-00.lineidx" in msg

    other = tmp_path / "unknown.yaml"
    other.write_text(open(TINY_CONFIG).read().replace("  FlickrGrounding:", "  NoSuchDataset:"))
    argv = _argv(data_root, out)
    argv[argv.index(TINY_CONFIG)] = str(other)
    msg = _one_line_error(capsys, argv)
    assert "NoSuchDataset" in msg and "FlickrGrounding" in msg

    msg = _one_line_error(capsys, _argv(data_root, out, "t", "--official_ckpt_name", "nope.ckpt"))
    assert "Stable Diffusion checkpoint not found" in msg and "nope.ckpt" in msg

    msg = _one_line_error(capsys, _argv(data_root, out, "t", "--scheduler_type", "linear"))
    assert "scheduler_type" in msg
    msg = _one_line_error(capsys, _argv(data_root, out, "t", "--yaml_file", str(tmp_path / "none.yaml")))
    assert "none.yaml" in msg
    msg = _one_line_error(capsys, _argv(data_root, out, "t", "--ckpt", str(tmp_path / "missing.pth")))
    assert "missing.pth" in msg
    msg = _one_line_error(capsys, _argv(data_root, out, "t", "--disable_inference_in_training", "False",
                                        "--preview_steps", "3"))
    assert "preview_steps" in msg
    assert not os.path.exists(out / "t")  # nothing written for runs that could not start


def test_corrupt_row_is_skipped_and_training_goes_on(data_root, tmp_path):
    from dataset.tsv import TSVFile, TSVWriter

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    tsv = str(root / TSV_REL)
    rows = [TSVFile(tsv)[i] for i in range(len(TSVFile(tsv)))]
    rows.insert(3, ["99", '{"data_id": 99, "image": "not base64!!", "annos": []}'])
    rows.insert(5, ["100", "{broken json"])
    with TSVWriter(tsv) as w:
        for r in rows:
            w.write(r)
    out = tmp_path / "out"
    with pytest.warns(RuntimeWarning, match="skipping corrupt"):
        assert main_mod.main(_argv(root, out, "t", "--total_iters", "6", "--batch_size", "4")) == 0
    assert _latest(out)["iters"] == 6
