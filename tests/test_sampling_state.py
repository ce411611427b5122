"""Sampling leaves the model exactly as it found it (new and legacy API, scheduled sampling), and
the new API's per-call gate / SD-first-conv arguments give the original's numbers."""
from __future__ import annotations

from functools import partial

import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.denoiser import GroundedDenoiser
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.sampling import alpha_generator, ddim, make_schedule, plms, set_alpha_scale
from ldm.tiny import SPATIAL_KEYS, TINY_PHRASE_DIM, build_tiny

B, S, ALPHA_TYPE = 2, 4, [0.5, 0, 0.5]  # 2 steps with the gates on, 2 off


def _adapter(path):
    from ldm.util import instantiate_from_config

    return instantiate_from_config({"target": path})


def setup(family):
    parts = build_tiny(family)
    model, config = parts["model"].eval(), parts["config"]
    gti = _adapter(config["grounding_tokenizer_input"]["target"])
    gdi = _adapter(config["grounding_downsampler_input"]["target"]) if "grounding_downsampler_input" in config else None
    model.grounding_tokenizer_input = gti
    g = torch.Generator().manual_seed(3)
    if family == "text":
        batch = dict(boxes=torch.rand(B, 30, 4, generator=g), masks=(torch.arange(30) < 3).float().expand(B, 30),
                     text_embeddings=torch.randn(B, 30, TINY_PHRASE_DIM, generator=g))
    else:
        batch = {SPATIAL_KEYS[family]: torch.randn(B, 3, 64, 64, generator=g), "mask": torch.ones(B)}
    inp = dict(x=torch.randn(B, 4, 8, 8, generator=g), timesteps=None, context=torch.randn(B, 77, 16, generator=g),
               grounding_input=gti.prepare(batch), inpainting_extra_input=None,
               grounding_extra_input=gdi.prepare(batch) if gdi is not None else None)
    uc = torch.randn(B, 77, 16, generator=g)
    sd_conv = {"weight": torch.randn(model.model_channels, 4, 3, 3, generator=g) * 0.1,
               "bias": torch.randn(model.model_channels, generator=g) * 0.1}
    return parts, model, inp, uc, sd_conv


def observe(model, inp):
    """Everything sampling could leave changed: weights and buffers, gate scales, the first conv."""
    with torch.no_grad():
        out = model(dict(inp, timesteps=torch.tensor([999, 1])))
    return dict(state={k: v.clone() for k, v in model.state_dict().items()},
                buffers={k: v.clone() for k, v in model.named_buffers()},
                scales={n: m.__dict__.get("scale") for n, m in model.named_modules()},
                conv=model.input_blocks[0][0], conv_type=model.first_conv_type,
                attrs=set(model.__dict__), out=out)


def assert_same(a, b):
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert all(torch.equal(a["buffers"][k], b["buffers"][k]) for k in a["buffers"])
    assert a["scales"] == b["scales"]
    assert a["conv"] is b["conv"] and a["conv_type"] == b["conv_type"]
    assert a["attrs"] == b["attrs"]
    assert torch.equal(a["out"], b["out"])


def run(api, kind, parts, model, inp, uc, sd_conv):
    torch.manual_seed(0)
    if api == "legacy":
        model.sd_first_conv = sd_conv  # the legacy swap's source (what the original read from disk)
        cls = PLMSSampler if kind == "plms" else DDIMSampler
        sampler = cls(parts["diffusion"], model, alpha_generator_func=partial(alpha_generator, type=ALPHA_TYPE),
                      set_alpha_scale=set_alpha_scale, progress=False)
        try:
            return sampler.sample(S=S, shape=(B, 4, 8, 8), input=inp, uc=uc, guidance_scale=7.5)
        finally:
            model.sd_first_conv = None
    denoise = GroundedDenoiser(model, inp["context"], inp["grounding_input"], uc, 7.5,
                               grounding_extra_input=inp["grounding_extra_input"], sd_first_conv=sd_conv)
    fn = plms if kind == "plms" else ddim
    return fn(denoise, inp["x"], make_schedule(parts["diffusion"].alphas_cumprod, S), alpha_generator(S, ALPHA_TYPE))


@pytest.mark.parametrize("family", ["text", "canny"])
@pytest.mark.parametrize("kind", ["plms", "ddim"])
def test_model_unchanged_after_sampling_and_both_apis_agree(family, kind):
    parts, model, inp, uc, sd_conv = setup(family)
    before = observe(model, inp)
    results = {}
    for api in ("functional", "legacy"):
        results[api] = run(api, kind, parts, model, inp, uc, sd_conv)
        assert_same(before, observe(model, inp))
    torch.testing.assert_close(results["functional"], results["legacy"], atol=1e-5, rtol=1e-5)


def test_legacy_sampler_applies_the_original_hooks_and_undoes_them():
    parts, model, inp, uc, sd_conv = setup("canny")
    before = observe(model, inp)
    seen = []

    def custom_scale(m, alpha):  # an old script's own set_alpha_scale, also tagging extra modules
        set_alpha_scale(m, alpha)
        m.out.scale = alpha
        seen.append((alpha, m.first_conv_type, m.input_blocks[0][0].in_channels))

    model.sd_first_conv = sd_conv
    PLMSSampler(parts["diffusion"], model, alpha_generator_func=partial(alpha_generator, type=ALPHA_TYPE),
                set_alpha_scale=custom_scale, progress=False).sample(S=S, shape=(B, 4, 8, 8), input=inp, uc=uc,
                                                                      guidance_scale=7.5)
    model.sd_first_conv = None
    # gates 1, 1 (+ PLMS's extra first evaluation), then 0, 0 with SD's 4-channel conv swapped in
    assert [a for a, _, _ in seen] == [1, 1, 1, 0, 0]
    assert seen[-1][1:] == ("SD", 4) and seen[0][1:] == ("GLIGEN", 4 + model.additional_channel_from_downsampler)
    assert_same(before, observe(model, inp))
    assert "scale" not in model.out.__dict__


def test_unet_gate_argument_matches_the_legacy_scale_attribute():
    parts, model, inp, uc, sd_conv = setup("text")
    x = dict(inp, timesteps=torch.tensor([500, 20]))
    with torch.no_grad():
        by_arg = {g: model(x, gate_scale=torch.tensor(g)) for g in (0.3, 1.0)}
        off = model(x, gate_scale=0)
        set_alpha_scale(model, 0.3)
        by_attr = model(x)
        set_alpha_scale(model, 1.0)
        default = model(x)
        no_grounding = model(dict(x, grounding_tokens=torch.full((B, 30, 16), float("nan"))), gate_scale=0)
    torch.testing.assert_close(by_arg[0.3], by_attr, atol=0, rtol=0)
    torch.testing.assert_close(by_arg[1.0], default, atol=0, rtol=0)
    assert torch.equal(off, no_grounding)  # gate 0 skips the gated layers exactly
    assert not torch.allclose(off, default)


def test_denoiser_sd_first_conv_only_at_zero_gate_for_spatial_models():
    parts, model, inp, uc, sd_conv = setup("canny")
    denoise = GroundedDenoiser(model, inp["context"], inp["grounding_input"], None,
                               grounding_extra_input=inp["grounding_extra_input"], sd_first_conv=sd_conv)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        torch.testing.assert_close(denoise(inp["x"], t, 1.0), model(dict(inp, timesteps=t)))
        torch.testing.assert_close(denoise(inp["x"], t, 0.0),
                                   model(dict(inp, timesteps=t), gate_scale=0, sd_first_conv=sd_conv))
    without = GroundedDenoiser(model, inp["context"], inp["grounding_input"], None,
                               grounding_extra_input=inp["grounding_extra_input"])
    with pytest.warns(UserWarning, match="first conv"):
        without(inp["x"], t, 0.0)


def test_runner_generate_leaves_the_model_unchanged(tmp_path):
    """``Runner.generate`` (scheduled sampling on a spatial-map model, SD's first conv at zero-gate
    steps) leaves the loaded model exactly as loaded, generation after generation."""
    from PIL import Image

    from ldm.inference.layout import Generation
    from ldm.inference.pipeline import Runner, Settings
    from ldm.tiny import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "canny.pth", "canny")
    conv_path = tmp_path / "SD_input_conv_weight_bias.pth"
    g = torch.Generator().manual_seed(0)
    torch.save({"weight": torch.randn(32, 4, 3, 3, generator=g), "bias": torch.randn(32, generator=g)}, conv_path)
    Image.new("RGB", (40, 32), (200, 20, 20)).save(tmp_path / "edges.png")
    gen = Generation.from_dict(dict(prompt="a robot", canny_image=str(tmp_path / "edges.png"),
                                    alpha_type=[0.5, 0, 0.5], ckpt=str(ckpt)))
    runner = Runner(Settings(steps=4, batch_size=1, seed=3, device="cpu", progress=False,
                             sd_first_conv=str(conv_path)))
    models, _ = runner.load(str(ckpt))
    model = models.model
    inp = dict(x=torch.randn(B, 4, 8, 8, generator=g), context=torch.randn(B, 77, 16, generator=g),
               grounding_input={"canny_edge": torch.randn(B, 3, 64, 64, generator=g), "mask": torch.ones(B)},
               grounding_extra_input=torch.randn(B, 3, 64, 64, generator=g), inpainting_extra_input=None)
    before = observe(model, inp)
    first = runner.generate(gen).latents
    assert_same(before, observe(model, inp))
    torch.testing.assert_close(runner.generate(gen).latents, first, atol=0, rtol=0)  # repeatable, nothing left over
