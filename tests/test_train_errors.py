"""Bad input to the real training entry point (``python main.py`` in a subprocess): a non-zero exit,
``error: <one line naming the problem>`` on stderr, no traceback, every existing file byte-identical,
and nothing new on disk (no run folder, no temporary file)."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch

from _train_helpers import TINY_CONFIG, TSV_REL, main_cmd, run_main, shared_tiny_root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return shared_tiny_root(tmp_path_factory)


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    """A 3-iteration run with a checkpoint every iteration (read-only: copy it)."""
    out = str(tmp_path_factory.mktemp("done"))
    res = run_main(main_cmd(data_root, out, "exp", "--total_iters", "3", "--save_every_iters", "1",
                            "--batch_size", "2"))
    assert res.returncode == 0, res.stderr[-3000:]
    return os.path.join(out, "exp", "tag00")


def _snapshot(root) -> dict:
    """Every file (sha256) and folder under ``root``."""
    snap = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            snap[os.path.join(folder, d)] = "dir"
        for f in files:
            path = os.path.join(folder, f)
            with open(path, "rb") as fh:
                snap[path] = hashlib.sha256(fh.read()).hexdigest()
    return snap


def _fails_cleanly(cmd, watched) -> str:
    """Run ``cmd``; check the failure contract; return the one error line."""
    before = _snapshot(watched)
    res = run_main(cmd)
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr[-3000:]
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert _snapshot(watched) == before  # byte-identical, no new run folder, no temporary file
    return lines[0]


def _with_yaml(cmd, yaml_path):
    cmd = list(cmd)
    cmd[cmd.index(TINY_CONFIG)] = str(yaml_path)
    return cmd


def test_yaml_syntax_error(data_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(TINY_CONFIG).read().replace("  params:\n    linear_start", "  params: [\n    linear_start", 1))
    msg = _fails_cleanly(_with_yaml(main_cmd(data_root, str(tmp_path / "out")), bad), tmp_path)
    assert "bad.yaml" in msg and "YAML syntax error" in msg and "line" in msg


def test_unresolvable_target(data_root, tmp_path):
    bad = tmp_path / "target.yaml"
    bad.write_text(open(TINY_CONFIG).read().replace("ldm.modules.diffusionmodules.openaimodel.UNetModel",
                                                    "ldm.modules.nowhere.UNetModel"))
    msg = _fails_cleanly(_with_yaml(main_cmd(data_root, str(tmp_path / "out")), bad), tmp_path)
    assert "ldm.modules.nowhere.UNetModel" in msg


def test_tsv_with_only_corrupt_rows(data_root, tmp_path):
    from dataset.tsv import TSVFile, TSVWriter

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    tsv = str(root / TSV_REL)
    n = len(TSVFile(tsv))
    with TSVWriter(tsv) as w:
        for i in range(n):
            w.write([str(i), "{broken json" if i % 2 else '{"data_id": 1, "image": "not base64!!", "annos": []}'])
    msg = _fails_cleanly(main_cmd(str(root), str(tmp_path / "out")), tmp_path)
    assert "cannot read the training data" in msg and "corrupt" in msg
    assert not (tmp_path / "out").exists()


def _tampered(ckpt_path, dst):
    """A copy of a checkpoint whose model lacks two keys and has one extra."""
    from ldm.checkpoint import load_checkpoint_file, save_checkpoint

    ckpt = load_checkpoint_file(ckpt_path)
    model = ckpt["model"]
    dropped = [k for k in model if "fuser" in k][:2]
    for k in dropped:
        del model[k]
    model["position_net.extra.weight"] = torch.zeros(2)
    save_checkpoint(ckpt, dst)
    return dropped


def test_ckpt_state_dict_mismatch(data_root, finished_run, tmp_path):
    bad = tmp_path / "bad.pth"
    dropped = _tampered(os.path.join(finished_run, "checkpoint_00000003.pth"), bad)
    msg = _fails_cleanly(main_cmd(data_root, str(tmp_path / "out"), "t", "--ckpt", str(bad)), tmp_path)
    assert f"--ckpt {bad}: state dict does not match the configured architecture" in msg
    assert "2 missing key(s)" in msg and dropped[0] in msg
    assert "1 unexpected key(s)" in msg and "position_net.extra.weight" in msg


def test_resume_state_dict_mismatch(data_root, finished_run, tmp_path):
    run = tmp_path / "out" / "exp" / "tag00"
    run.mkdir(parents=True)
    dropped = _tampered(os.path.join(finished_run, "checkpoint_00000003.pth"), run / "checkpoint_latest.pth")
    msg = _fails_cleanly(main_cmd(data_root, str(tmp_path / "out"), "exp", "--total_iters", "5"), tmp_path)
    assert "resume checkpoint: state dict does not match the configured architecture" in msg
    assert "2 missing key(s)" in msg and dropped[0] in msg and "position_net.extra.weight" in msg


def test_unreadable_latest_names_newest_intact_checkpoint(data_root, finished_run, tmp_path):
    run = tmp_path / "out" / "exp" / "tag00"
    shutil.copytree(finished_run, run)
    os.remove(run / "checkpoint_latest.pth")  # a hard link of checkpoint_00000003.pth
    data = (run / "checkpoint_00000003.pth").read_bytes()
    (run / "checkpoint_latest.pth").write_bytes(data[: len(data) // 2])  # truncated
    (run / "checkpoint_00000003.pth").write_bytes(data[: len(data) // 3])  # the newest numbered one too
    msg = _fails_cleanly(main_cmd(data_root, str(tmp_path / "out"), "exp", "--total_iters", "5"), tmp_path)
    latest, intact = run / "checkpoint_latest.pth", run / "checkpoint_00000002.pth"
    assert msg.startswith("error: ") and str(latest) in msg  # the loader's wording names the broken file
    assert f"newest intact checkpoint beside it is {intact}" in msg and f"cp {intact} {latest}" in msg

    # following the advice resumes
    shutil.copyfile(intact, latest)
    res = run_main(main_cmd(data_root, str(tmp_path / "out"), "exp", "--total_iters", "4"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"auto-resuming from {latest}" in res.stdout
    assert (tmp_path / "out" / "exp" / "tag01" / "checkpoint_00000004.pth").is_file()
