"""Shared test fixtures. Tests that read ``../shared/reference`` skip cleanly when it is absent."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
GOLDEN = REFERENCE / "golden"
FIXTURES = ("text_box", "text_image_box", "keypoint", "inpaint_text_box")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference is not available (user clone)")
    return REFERENCE


@pytest.fixture(scope="session")
def golden_dir(reference_dir) -> Path:
    return reference_dir / "golden"


@pytest.fixture
def in_golden_dir(golden_dir, monkeypatch):
    """The fixtures' embedded configs name the text encoder by a path relative to the golden folder."""
    monkeypatch.chdir(golden_dir)
    return golden_dir
