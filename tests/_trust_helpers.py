"""Helpers of the trust tests: run an entry point in a subprocess and check it failed cleanly."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    e.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e.pop("GLIGEN_TRUST_CHECKPOINTS", None)
    e.pop("GLIGEN_DEBUG", None)
    e.update(extra)
    return e


def run(script: str, *args: str, cwd: str | None = None, timeout: int = 300, **env_extra) -> subprocess.CompletedProcess:
    """``python <repo>/<script> args...`` (``script`` may be ``-m module``)."""
    cmd = [sys.executable, *script.split()] if script.startswith("-m ") else [sys.executable, os.path.join(REPO, script)]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd or REPO, env=env(**env_extra), capture_output=True,
                          text=True, timeout=timeout)


def error_line(p: subprocess.CompletedProcess) -> str:
    """Assert a clean failure (non-zero exit, no traceback, one ``error:`` line last) and return that line."""
    out = p.stdout + p.stderr
    assert p.returncode != 0, f"exit 0:\n{out[-2000:]}"
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), out[-2000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, out[-2000:]
    return lines[-1]


def snapshot(folder) -> dict:
    """``{relative path: sha256}`` of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


TEMP_MARKERS = (".tmp", ".tmp_", "tmp.")


def temporary_files(folder) -> list:
    return [p for p in snapshot(folder) if any(m in os.path.basename(p) for m in TEMP_MARKERS)]
