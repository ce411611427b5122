"""Grounding tokenizers, downsamplers and adapters of every modality: shapes, masking, null inputs."""
import os

import pytest
import torch
from omegaconf import OmegaConf

from ldm.modules.diffusionmodules.util import FourierEmbedder
from ldm.tiny import SPATIAL_KEYS, build_tiny, tiny_config
from ldm.util import instantiate_from_config
from conftest import ROOT

torch.manual_seed(0)
B, N = 2, 30


def adapter(family, kind="tokinzer"):
    suffix = "GroundingNetInput" if kind == "tokinzer" else "GroundingDSInput"
    return instantiate_from_config({"target": f"grounding_input.{family}_grounding_{kind}_input.{suffix}"})


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return module


def box_batch(d=24, with_image=False):
    boxes = torch.rand(B, N, 4)
    masks = torch.zeros(B, N)
    masks[0, :3] = 1
    masks[1, :1] = 1
    batch = dict(boxes=boxes, masks=masks, text_embeddings=torch.randn(B, N, d))
    if with_image:
        batch.update(image_embeddings=torch.randn(B, N, d), text_masks=masks.clone(), image_masks=masks.clone())
    return batch


def test_fourier_embedder_layout():
    emb = FourierEmbedder(num_freqs=8, temperature=100)
    x = torch.rand(3, 4)
    out = emb(x)
    assert out.shape == (3, 64)
    f1 = 100 ** (1 / 8)
    torch.testing.assert_close(out[:, :4], torch.sin(x))
    torch.testing.assert_close(out[:, 4:8], torch.cos(x))
    torch.testing.assert_close(out[:, 8:12], torch.sin(f1 * x))
    assert emb(torch.rand(5, 2)).shape == (5, 32)


def test_one_fourier_embedder_shared():
    from ldm.modules.diffusionmodules import grounding_net

    box = grounding_net.BoxTextPositionNet(24, 16)
    kp = grounding_net.KeypointPositionNet(8, 16)
    assert type(box.fourier_embedder) is type(kp.fourier_embedder) is FourierEmbedder


@pytest.mark.parametrize("family", ["text", "text_image"])
def test_box_padded_slot_gets_null_feature(family):
    net = randomize(build_tiny(family)["model"].position_net)
    batch = box_batch(with_image=family == "text_image")
    gi = adapter(family)
    tokens = net(**gi.prepare(batch))
    assert tokens.shape == (B, N * (2 if family == "text_image" else 1), 16)
    # every padded slot (mask 0) carries the same learned null token, whatever its inputs were
    pad = tokens[0, 5:N]
    torch.testing.assert_close(pad, pad[:1].expand_as(pad))
    linears = net.linears if family == "text" else net.linears_text
    null_feat = net.null_positive_feature if family == "text" else net.null_text_feature
    expected = linears(torch.cat([null_feat, net.null_position_feature]))
    torch.testing.assert_close(pad[0], expected)
    # a real slot differs from the null token
    assert not torch.allclose(tokens[0, 0], expected)


def test_text_image_masks_independent():
    net = randomize(build_tiny("text_image")["model"].position_net)
    batch = box_batch(with_image=True)
    batch["image_masks"] = torch.zeros(B, N)  # text only: image tokens fall back to the null image feature
    tokens = net(**adapter("text_image").prepare(batch))
    image_tokens = tokens[:, N:]
    pos = net.fourier_embedder(batch["boxes"][0, 0])
    expected = net.linears_image(torch.cat([net.null_image_feature, pos]))
    torch.testing.assert_close(image_tokens[0, 0], expected)
    assert not torch.allclose(tokens[0, 0], net.linears_text(torch.cat([net.null_text_feature, pos])))


@pytest.mark.parametrize("family", ["text", "text_image", "keypoint", *SPATIAL_KEYS])
def test_no_grounding_equals_null_input(family):
    parts = build_tiny(family)
    net = randomize(parts["model"].position_net)
    gi = adapter(family)
    if family in ("text", "text_image"):
        batch = box_batch(with_image=family == "text_image")
        for k in ("masks", "text_masks", "image_masks"):
            if k in batch:
                batch[k] = torch.zeros(B, N)
    elif family == "keypoint":
        batch = dict(points=torch.rand(B, 8 * 17, 2), masks=torch.zeros(B, 8 * 17))
    else:
        key = SPATIAL_KEYS[family]
        batch = {key: torch.randn(B, 152 if family == "sem" else 3, 16, 16), "mask": torch.zeros(B)}
    tokens = net(**gi.prepare(batch))
    null = gi.get_null_input()
    assert set(null) == set(gi.prepare(batch))
    assert all(v.shape == gi.prepare(batch)[k].shape and not v.any() for k, v in null.items())
    torch.testing.assert_close(tokens, net(**null))


def test_null_input_follows_requested_batch_device_dtype():
    gi = adapter("text")
    gi.prepare(box_batch())
    null = gi.get_null_input(batch=5, dtype=torch.float64)
    assert null["boxes"].shape == (5, N, 4) and null["positive_embeddings"].dtype == torch.float64
    with pytest.raises(RuntimeError, match="before prepare"):
        adapter("text").get_null_input()


def test_adapter_reports_missing_keys():
    with pytest.raises(KeyError, match="text_embeddings"):
        adapter("text").prepare(dict(boxes=torch.zeros(1, 30, 4), masks=torch.zeros(1, 30)))


def test_keypoint_tokens_person_major():
    net = randomize(build_tiny("keypoint")["model"].position_net)
    points, masks = torch.rand(B, 136, 2), torch.zeros(B, 136)
    masks[:, 17 + 3] = 1  # person 1, keypoint 3
    tokens = net(points=points, masks=masks)
    assert tokens.shape == (B, 136, 16)
    identity = net.person_embeddings[1] + net.keypoint_embeddings[3]
    xy = net.fourier_embedder(points[0, 20])
    torch.testing.assert_close(tokens[0, 20], net.linears(torch.cat([identity, xy])))
    null = net.linears(torch.cat([net.null_person_feature, net.null_xy_feature]))
    torch.testing.assert_close(tokens[0, 0], null)


@pytest.mark.parametrize("family", list(SPATIAL_KEYS))
def test_spatial_tokens_masking(family):
    net = randomize(build_tiny(family)["model"].position_net)
    key = SPATIAL_KEYS[family]
    maps = torch.randn(B, 152 if family == "sem" else 3, 16, 16)
    tokens = net(**{key: maps, "mask": torch.tensor([1.0, 0.0])})
    assert tokens.shape == (B, net.num_tokens, 16)
    expected_null = net.linears(net.null_feature + net.pos_embedding[0])
    torch.testing.assert_close(tokens[1], expected_null)
    assert not torch.allclose(tokens[0], expected_null)
    with pytest.raises(TypeError, match=key):
        net(mask=torch.ones(B), wrong=maps)


@pytest.mark.parametrize("family,channels", [("hed", 1), ("canny", 8), ("depth", 8), ("normal", 8), ("sem", 8)])
def test_downsampler_shapes_and_channel_use(family, channels):
    ds = build_tiny(family)["model"].downsample_net
    key = SPATIAL_KEYS[family]
    x = torch.randn(B, 152 if family == "sem" else 3, 16, 16)
    out = ds(adapter(family, "downsampler").prepare({key: x}))
    assert out.shape == (B, channels, 8, 8)
    if family in ("hed", "canny", "depth"):  # only channel 0 of the (grey->RGB) map is used
        x2 = x.clone()
        x2[:, 1:] = torch.randn_like(x2[:, 1:])
        torch.testing.assert_close(ds(x2), out)


def test_spatial_unet_sd_first_conv_argument_matches_the_original_swap():
    parts = build_tiny("canny")
    model = parts["model"].eval()
    gi, gdi = adapter("canny"), adapter("canny", "downsampler")
    model.grounding_tokenizer_input = gi
    batch = {"canny_edge": torch.randn(B, 3, 16, 16), "mask": torch.ones(B)}
    inp = dict(x=torch.randn(B, 4, 8, 8), timesteps=torch.tensor([10, 500]), context=torch.randn(B, 77, 16),
               grounding_input=gi.prepare(batch), grounding_extra_input=gdi.prepare(batch))
    sd = {"weight": torch.randn(model.model_channels, 4, 3, 3), "bias": torch.randn(model.model_channels)}
    with torch.no_grad():
        full = model(inp)
        with_sd = model(inp, sd_first_conv=sd)  # SD's conv for this call only
        torch.testing.assert_close(model(inp), full)  # nothing stayed changed
        model.sd_first_conv = sd
        model.restore_first_conv_from_SD()  # the original's module swap (legacy API)
        assert model.first_conv_type == "SD" and model.input_blocks[0][0].in_channels == 4
        swapped = model(inp)
    torch.testing.assert_close(with_sd, swapped)
    assert not torch.allclose(full, with_sd)


def test_legacy_swap_without_sd_conv_warns_and_uses_the_checkpoint_conv():
    parts = build_tiny("canny")
    model = parts["model"].eval()
    conv = model.input_blocks[0][0]
    with pytest.warns(UserWarning, match="SD first-conv"):
        model.restore_first_conv_from_SD()
    torch.testing.assert_close(model.input_blocks[0][0].weight, conv.weight[:, :4])


def test_semantic_label_out_of_range_rejected():
    from ldm.imageops import one_hot as one_hot_labels

    labels = torch.tensor([[0, 150], [151, 3]])
    assert one_hot_labels(labels).shape == (152, 2, 2)
    with pytest.raises(ValueError, match="152"):
        one_hot_labels(torch.tensor([[0, 200]]))


def test_full_size_spatial_model_forward_small_resolution():
    """The released canny architecture (ConvNeXt-T backbone, SD-size UNet) on a 16x16 latent, CPU."""
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "cc3m_canny.yaml"), resolve=True)
    cfg["model"]["params"]["grounding_downsampler"]["params"]["resize_input"] = 64  # -> 16x16 latent
    cfg["model"]["params"]["grounding_tokenizer"]["params"]["resize_input"] = 64  # -> 2x2 = 4 tokens
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    try:
        model = instantiate_from_config(cfg["model"]).eval()
        gi, gdi = adapter("canny"), adapter("canny", "downsampler")
        model.grounding_tokenizer_input = gi
        batch = {"canny_edge": torch.randn(1, 3, 128, 128), "mask": torch.ones(1)}
        with torch.no_grad():
            tokens = model.position_net(**gi.prepare(batch))
            assert tokens.shape == (1, 4, 768)
            eps = model(dict(x=torch.randn(1, 4, 16, 16), timesteps=torch.tensor([500]), context=torch.randn(1, 77, 768),
                             grounding_input=gi.prepare(batch), grounding_extra_input=gdi.prepare(batch)))
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest): later tests compare bytes across processes
    assert eps.shape == (1, 4, 16, 16) and torch.isfinite(eps).all()
