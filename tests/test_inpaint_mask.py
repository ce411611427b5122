"""inpaint_mask_func: box masks (1 = keep, 0 = generate) and the random stroke masks."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from inpaint_mask_func import draw_masks_from_boxes, generate_stroke_mask, get_a_bg_mask, get_a_fg_mask

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "golden", "inpaint_text_box")


def test_box_mask_zero_inside_one_outside():
    boxes = torch.zeros(2, 30, 4)
    boxes[0, 0] = torch.tensor([0.25, 0.5, 0.75, 1.0])
    m = draw_masks_from_boxes(boxes, 8)
    assert m.shape == (2, 1, 8, 8) and m.dtype == torch.float32
    expected = torch.ones(8, 8)
    expected[4:8, 2:6] = 0
    assert torch.equal(m[0, 0], expected)
    assert torch.equal(m[1, 0], torch.ones(8, 8))  # zero padding rows have no effect


def test_truncation_of_scaled_coordinates():
    # 0.28 * 8 = 2.24 -> 2 ; 0.52 * 8 = 4.16 -> 4 (int() truncation, float32 products)
    m = draw_masks_from_boxes([[[0.25, 0.28, 0.42, 0.52]]], 8)
    assert m[0, 0, 2:4, 2:3].eq(0).all() and m[0, 0].eq(0).sum() == 2


def test_matches_golden_fixture():
    inputs = torch.load(os.path.join(GOLDEN, "inputs.pt"), map_location="cpu", weights_only=False)
    assert torch.equal(draw_masks_from_boxes(inputs["batch"]["boxes"], 8), inputs["inpainting_mask"])


def test_stroke_masks_are_seeded_and_binary():
    def draw():
        random.seed(3)
        np.random.seed(3)
        return generate_stroke_mask((64, 64), max_parts=4, maxVertex=10, maxLength=32, minBrushWidth=3,
                                    maxBrushWidth=12, maxAngle=360)

    a, b = draw(), draw()
    assert a.shape == (64, 64) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, 1.0} and 0 < a.mean() < 1


def test_fg_and_bg_masks():
    random.seed(0)
    np.random.seed(0)
    fg = get_a_fg_mask(10, 20)
    assert fg.shape == (10, 20) and set(fg.unique().tolist()) <= {0.0, 1.0}
    bg = get_a_bg_mask(64)
    assert bg.shape == (64, 64) and 0 < bg.mean() < 1
    assert get_a_bg_mask(32).shape == (32, 32)  # the original only supports 64
    with pytest.raises(AssertionError):
        get_a_fg_mask(3, 10)


def test_randomized_masks_consume_python_random_per_box():
    boxes = torch.tensor([[[0.1, 0.1, 0.9, 0.9], [0.0, 0.0, 0.02, 0.02]]])
    random.seed(1)
    np.random.seed(1)
    m = draw_masks_from_boxes(boxes, 64, randomize_fg_mask=True, random_add_bg_mask=True)
    assert m.shape == (1, 1, 64, 64)
    # regenerate region is a subset of the box or strokes; outside the boxes only bg strokes can be 0
    random.seed(1)
    np.random.seed(1)
    m2 = draw_masks_from_boxes(boxes, 64, randomize_fg_mask=True, random_add_bg_mask=True)
    assert torch.equal(m, m2)
    plain = draw_masks_from_boxes(boxes, 64)
    assert plain[0, 0, 6:57, 6:57].eq(0).all()
