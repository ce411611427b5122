"""Tiny CPU training runs for the trainer tests.

The data root is made by ``DATA/make_tiny_demo.py`` (``make_tiny_training_root``): what
``configs/tiny_text_box.yaml`` expects (tiny SD checkpoint, tiny CLIP, a small box TSV).
"""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from DATA.make_tiny_demo import SD_NAME, TSV_REL, make_tiny_training_root  # noqa: E402,F401

TINY_CONFIG = os.path.join(REPO, "configs", "tiny_text_box.yaml")


_CACHE: dict = {}


def shared_tiny_root(tmp_path_factory) -> str:
    """One tiny data root per test session (read-only for the tests: copy it to modify)."""
    if "root" not in _CACHE:
        _CACHE["root"] = make_tiny_training_root(str(tmp_path_factory.mktemp("tiny_data")))
    return _CACHE["root"]


def main_cmd(data_root: str, out_root: str, name: str = "tiny", *extra: str, torchrun_procs: int = 0) -> list[str]:
    """Command line of a tiny CPU training run (``extra`` appended / overriding)."""
    py = sys.executable
    args = ["--yaml_file", TINY_CONFIG, "--DATA_ROOT", data_root, "--OUTPUT_ROOT", out_root, "--name", name,
            "--official_ckpt_name", SD_NAME, "--device", "cpu", "--batch_size", "4", "--workers", "0",
            "--warmup_steps", "5", "--base_learning_rate", "1e-3", "--total_iters", "30", "--save_every_iters", "10",
            "--disable_inference_in_training", "True", "--seed", "7", *extra]
    if torchrun_procs:
        return [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_procs}",
                os.path.join(REPO, "main.py"), *args]
    return [py, os.path.join(REPO, "main.py"), *args]


def run_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_main(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=timeout)
