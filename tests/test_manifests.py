"""Every configuration builds state dicts whose keys and shapes equal the reference manifests."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config
from conftest import ROOT

CONFIGS = ["GoldG+SBU+CC3M+O365_box_text", "GoldG+SBU+CC3M+O365_box_text_image", "flickr_text", "flickr_text_image",
           "coco2017K", "cc3m_hed", "cc3m_canny", "cc3m_depth", "diode_normal", "ade_sem"]


def load_config(name):
    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / f"{name}.yaml"), resolve=True)


def build_on_meta(cfg):
    with torch.device("meta"):
        return instantiate_from_config(cfg)


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def manifest(reference_dir, name):
    return json.loads((reference_dir / "state_dicts" / f"{name}.json").read_text())


def test_all_ten_configs_present():
    assert sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if p.stem in CONFIGS) == sorted(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_model_manifest(reference_dir, name):
    ref = manifest(reference_dir, name)
    model = build_on_meta(load_config(name)["model"])
    got = shapes(model)
    assert sorted(set(got) - set(ref["keys"])) == [] and sorted(set(ref["keys"]) - set(got)) == []
    assert got == ref["keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["n_params"]


@pytest.mark.parametrize("name", ["flickr_text", "flickr_text_image"])
def test_inpainting_manifest(reference_dir, name):
    ref = manifest(reference_dir, f"inpainting_{name}")
    cfg = load_config(name)["model"]
    cfg["params"]["inpaint_mode"] = True
    model = build_on_meta(cfg)
    assert shapes(model) == ref["keys"]
    assert model.input_blocks[0][0].weight.shape[1] == 9


@pytest.mark.parametrize("section", ["autoencoder", "text_encoder", "diffusion"])
def test_shared_section_manifests(reference_dir, section):
    ref = manifest(reference_dir, section)
    module = build_on_meta(load_config("flickr_text")[section])
    assert shapes(module) == ref["keys"]


def test_diffusion_buffers_values():
    d = instantiate_from_config(load_config("flickr_text")["diffusion"])
    assert all(b.dtype == torch.float32 and b.shape == (1000,) for b in d.buffers())
    assert d.betas[0].item() == pytest.approx(0.00085, rel=1e-6)
    assert d.betas[-1].item() == pytest.approx(0.012, rel=1e-6)
    assert d.alphas_cumprod[0].item() == pytest.approx(0.99915, rel=1e-6)
    assert d.alphas_cumprod[-1].item() == pytest.approx(0.0046601, rel=1e-4)


@pytest.mark.parametrize("name,width", [("flickr_text", 4), ("cc3m_hed", 5), ("cc3m_canny", 12), ("ade_sem", 12)])
def test_first_conv_width(name, width):
    model = build_on_meta(load_config(name)["model"])
    assert model.input_blocks[0][0].in_channels == width
