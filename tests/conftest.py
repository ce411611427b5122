"""Shared test fixtures. The reference data produced by the original implementation (golden
fixtures, state-dict manifests, tokenizer ids) lives in ``tests/reference/`` (see its README), so
every parity test runs in a plain clone."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Tests never touch the network: the Hub code paths run against local caches the tests create.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference"
GOLDEN = REFERENCE / "golden"
FIXTURES = ("text_box", "text_image_box", "keypoint", "inpaint_text_box")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)  # tiny models: one thread is fastest and robust on a busy machine


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    assert REFERENCE.is_dir(), f"{REFERENCE} is missing (it is part of the repository)"
    return REFERENCE


@pytest.fixture(scope="session")
def golden_dir(reference_dir) -> Path:
    return reference_dir / "golden"


@pytest.fixture
def in_golden_dir(golden_dir, monkeypatch):
    """The fixtures' embedded configs name the text encoder by a path relative to the golden folder."""
    monkeypatch.chdir(golden_dir)
    return golden_dir
