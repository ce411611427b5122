"""``--height/--width``: non-square generation for box, box+image, keypoint and inpainting modes.

Tiny models run at the aspect ratios of 384x640 and 768x512 (tiny sizes 24x40 and 48x32: the tiny
autoencoder downsamples 2x, the tiny UNet once more); the full-size SD-1.x UNet and autoencoder
are checked at 384x640 and 768x512 on the meta device (shapes only, no memory, no weights).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import gligen_inference
from inpaint_mask_func import draw_masks_from_boxes

PERSON = [[0.7, 0.2]] * 10 + [[0, 0]] * 7


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ldm.inference.standins import write_standins
    from ldm.tiny import write_tiny_checkpoint, write_tiny_clip_model

    d = tmp_path_factory.mktemp("nonsquare")
    out = {name: write_tiny_checkpoint(d / f"{name}.pth", fam, inpaint=inp) for name, (fam, inp) in {
        "text": ("text", False), "text_image": ("text_image", False), "keypoint": ("keypoint", False),
        "inpaint": ("text", True), "hed": ("hed", False)}.items()}
    out["clip"] = write_tiny_clip_model(d / "clip")
    out["images"] = str(d / "images")
    write_standins(out["images"])
    return out


def _entries(tiny):
    img = lambda n: os.path.join(tiny["images"], n)  # noqa: E731
    return {
        "text": dict(prompt="a bird", phrases=["a bird"], locations=[[0.55, 0.1, 0.95, 0.9]]),
        "text_image": dict(prompt="a house", phrases=["a house"], images=[img("style_golden.jpg")],
                           locations=[[0.5, 0.2, 1.0, 0.8]]),
        "keypoint": dict(prompt="a person", locations=[PERSON]),
        "inpaint": dict(prompt="a cake", phrases=["cake"], locations=[[0.5, 0.0, 1.0, 1.0]],
                        input_image=img("dalle2_museum.jpg")),
        "hed": dict(prompt="a man", hed_image=img("hed_man_eat.png")),
    }


def _run(tiny, tmp_path, name, height, width, capture=None):
    entry = {**_entries(tiny)[name], "ckpt": tiny[name], "seed": 1, "save_folder_name": name}
    layout = tmp_path / f"{name}.json"
    layout.write_text(json.dumps({"generations": [entry]}))
    out = tmp_path / "out"
    rc = gligen_inference.main(["--layout", str(layout), "--clip", tiny["clip"], "--device", "cpu", "--steps", "2",
                                "--batch_size", "1", "--folder", str(out), "--no-progress",
                                "--height", str(height), "--width", str(width)])
    return rc, out / name


@pytest.mark.parametrize("height,width", [(24, 40), (48, 32)])  # 384x640 and 768x512, tiny
@pytest.mark.parametrize("name", ["text", "text_image", "keypoint", "inpaint"])
def test_non_square_shapes_through_the_pipeline(tiny, tmp_path, monkeypatch, name, height, width):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    shapes = []
    orig = UNetModel.forward
    monkeypatch.setattr(UNetModel, "forward", lambda self, input, **kw: shapes.append(tuple(input["x"].shape)) or
                        orig(self, input, **kw))
    rc, folder = _run(tiny, tmp_path, name, height, width)
    assert rc == 0
    assert Image.open(folder / "0.png").size == (width, height)
    assert Image.open(folder / "0_annotated.png").size[0] >= width
    record = json.load(open(folder / "0.json"))
    assert (record["settings"]["height"], record["settings"]["width"]) == (height, width)
    assert shapes and all(s[-2:] == (height // 2, width // 2) for s in shapes)  # latent = pixels / 2 (tiny VAE)


def test_spatial_map_models_refuse_other_sizes_with_the_reason(tiny, tmp_path, capsys):
    rc, _ = _run(tiny, tmp_path, "hed", 24, 40)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith("error: generation hed checkpoints generate 16x16 only") and "downsampler" in err


def test_sizes_must_fit_the_unet(tiny, tmp_path, capsys):
    rc, _ = _run(tiny, tmp_path, "text", 24, 44)  # 44 is not a multiple of 8
    assert rc == 2 and "multiple of 8" in capsys.readouterr().err


def test_box_in_the_right_half_of_a_wide_image_lands_in_the_right_half_of_the_latent(tiny, tmp_path, monkeypatch):
    """Inpainting a right-half box of a 2:1 image: the latent mask is 0 (generate) exactly on the right half
    of the latent grid, and before every step the sampler keeps its own (generated) latent on the right half
    only, the left half being replaced by the known, noised input image."""
    mask = draw_masks_from_boxes(torch.tensor([[[0.5, 0.0, 1.0, 1.0]]]), (12, 24))
    assert mask.shape == (1, 1, 12, 24)
    assert mask[..., :12].eq(1).all() and mask[..., 12:].eq(0).all()
    wide = draw_masks_from_boxes(torch.tensor([[[0.25, 0.5, 0.75, 1.0]]]), (4, 8))[0, 0]
    assert wide[2:, 2:6].eq(0).all() and wide.eq(0).sum() == 8  # x scales with the width, y with the height

    from ldm.models.diffusion import sampling

    seen = []

    class Spy(sampling.KnownRegion):  # the known-region replacement the samplers call every step
        def __call__(self, x, t):
            out = super().__call__(x, t)
            seen.append((x.clone(), out.clone(), self.mask))
            return out

    monkeypatch.setattr(sampling, "KnownRegion", Spy)
    rc, folder = _run(tiny, tmp_path, "inpaint", 24, 48)
    assert rc == 0 and len(seen) == 2  # one per step
    for x, replaced, m in seen:
        assert m.shape[-2:] == (12, 24) and m[..., :12].eq(1).all() and m[..., 12:].eq(0).all()
        assert torch.equal(replaced[..., 12:], x[..., 12:])  # right half: the sampler's own latent
        assert not torch.isclose(replaced[..., :12], x[..., :12]).any()  # left half: the known image


@pytest.mark.parametrize("height,width", [(384, 640), (768, 512)])
def test_full_size_sd1_shapes(height, width):
    """SD-1.x's UNet (with GLIGEN layers) and autoencoder at non-square sizes, on the meta device."""
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                             "flickr_text.yaml")))
    cfg["model"]["params"]["use_checkpoint"] = False
    with torch.device("meta"):
        unet = instantiate_from_config(cfg["model"]).eval()
        vae = instantiate_from_config(cfg["autoencoder"]).eval()
        h, w = height // 8, width // 8
        with torch.no_grad():
            eps = unet(dict(x=torch.empty(2, 4, h, w), timesteps=torch.zeros(2, dtype=torch.long),
                            context=torch.empty(2, 77, 768),
                            grounding_input=dict(boxes=torch.empty(2, 30, 4), masks=torch.empty(2, 30),
                                                 positive_embeddings=torch.empty(2, 30, 768))))
            image = vae.decode(torch.empty(1, 4, h, w))
    assert tuple(eps.shape) == (2, 4, h, w)
    assert tuple(image.shape) == (1, 3, height, width)
