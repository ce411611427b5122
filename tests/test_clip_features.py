"""ldm.modules.encoders.clip_features against a tiny random CLIPModel (no downloads)."""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data_helpers import make_tiny_clip, rand_image  # noqa: E402

from ldm.modules.encoders import clip_features as cf  # noqa: E402

PHRASES = ["a cat", "a very big brown dog on the left", ""]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip")))
    feats = cf.CLIPGroundingFeatures(path)
    return path, feats


def test_text_features(tiny):
    _, f = tiny
    tok = f.tokenizer(PHRASES, padding=True, return_tensors="pt")
    assert tok["input_ids"][0, 0] == 49406 and (tok["input_ids"] == 49407).any()
    with torch.no_grad():
        ref = f.model.text_model(**tok).pooler_output
        ref_single = f.model.text_model(**f.tokenizer([PHRASES[1]], return_tensors="pt")).pooler_output
        ref_after = f.model.get_text_features(**tok).pooler_output
    before = f.text_before(PHRASES)
    assert before.shape == (3, f.text_dim) == (3, 32)
    assert torch.allclose(before, ref, atol=1e-5)
    assert torch.allclose(before[1:2], ref_single, atol=1e-5)  # padding does not change the pooled feature
    after = f.text_after(PHRASES)
    assert after.shape == (3, 16)
    assert torch.allclose(after, ref_after / ref_after.norm(dim=-1, keepdim=True), atol=1e-5)


def test_image_features_and_reprojection(tiny):
    _, f = tiny
    images = [rand_image(50, 30, 1), rand_image(20, 40, 2)]
    pv = f.pixel_values(images)
    assert pv.shape == (2, 3, 32, 32)
    with torch.no_grad():
        ref_before = f.model.vision_model(pixel_values=pv).pooler_output
        ref_after = f.model.get_image_features(pixel_values=pv).pooler_output
    assert torch.allclose(f.image_before(images), ref_before, atol=1e-5)
    after = f.image_after(images)
    assert torch.allclose(after, ref_after / ref_after.norm(dim=-1, keepdim=True), atol=1e-5)
    rep = f.image_reprojected(images)
    assert rep.shape == (2, 32)
    assert torch.allclose(rep.norm(dim=-1), torch.full((2,), 28.7))
    v = after @ f.model.text_projection.weight.detach()
    assert torch.allclose(rep, v / v.norm(dim=-1, keepdim=True) * 28.7, atol=1e-4)
    assert torch.equal(f.projection_matrix, f.model.text_projection.weight.detach())


def test_preprocessing_modes():
    img = rand_image(60, 30, 5)
    clip = cf.preprocess_images([img], mode="clip", size=16)
    # reference: short side -> 16 (32x16), centre crop 16 -> columns 8..24
    ref = np.asarray(img.resize((32, 16), Image.BICUBIC), dtype=np.float32)[:, 8:24] / 255
    ref = (torch.from_numpy(ref).permute(2, 0, 1) - torch.tensor(cf.CLIP_MEAN).view(3, 1, 1)) / \
        torch.tensor(cf.CLIP_STD).view(3, 1, 1)
    assert torch.allclose(clip[0], ref, atol=1e-6)
    cr = cf.preprocess_images(img, mode="crop_resize", size=16)
    ref = np.asarray(img.resize((16, 16), Image.BICUBIC), dtype=np.float32) / 255
    ref = (torch.from_numpy(ref).permute(2, 0, 1) - torch.tensor(cf.CLIP_MEAN).view(3, 1, 1)) / \
        torch.tensor(cf.CLIP_STD).view(3, 1, 1)
    assert torch.allclose(cr[0], ref, atol=1e-6)
    with pytest.raises(ValueError):
        cf.preprocess_images([img], mode="bogus")
    assert cf.crop_box(img, [10, 5, 20, 10]).size == (20, 10)


def test_load_text_projection_local_and_files(tiny, tmp_path):
    path, f = tiny
    P = cf.load_text_projection(path)
    assert P.shape == (16, 32) and torch.equal(P, f.model.text_projection.weight.detach())
    P.zero_()  # callers get a copy
    assert not torch.equal(cf.load_text_projection(path), P)
    torch.save(f.projection_matrix, tmp_path / "projection_matrix")
    assert torch.equal(cf.resolve_projection_matrix(str(tmp_path / "projection_matrix")), f.projection_matrix)
    assert torch.equal(cf.resolve_projection_matrix(os.path.join(path, "model.safetensors")), f.projection_matrix)
    assert torch.equal(cf.resolve_projection_matrix(f.projection_matrix), f.projection_matrix)


def test_load_text_projection_hub_reads_one_file(tiny, monkeypatch):
    path, f = tiny
    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        return os.path.join(path, filename)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    cf._load_text_projection_cached.cache_clear()
    P = cf.load_text_projection("someone/tiny-clip")
    assert calls == [("someone/tiny-clip", "model.safetensors")]
    assert torch.equal(P, f.projection_matrix)
    cf.load_text_projection("someone/tiny-clip")
    assert len(calls) == 1  # cached
    cf._load_text_projection_cached.cache_clear()


def test_reproject_function():
    e = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    P = torch.randn(4, 6)
    out = cf.reproject_image_embedding(e, P)
    assert out.shape == (3, 6) and torch.allclose(out.norm(dim=-1), torch.full((3,), 28.7))
