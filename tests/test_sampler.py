"""Samplers against a literal two-pass re-statement of the original's PLMS/DDIM loops on a toy UNet,
through the functional API (``plms``/``ddim`` over a ``GroundedDenoiser``) and the legacy classes.

Checks numbers, the global-RNG consumption order, gate scheduling, first-conv handling, and that
sampling leaves the model exactly as it found it.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.denoiser import GroundedDenoiser
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.sampling import (KnownRegion, alpha_generator, ddim, make_ddim_timesteps, make_schedule,
                                           plms, set_alpha_scale)

B, N, D = 2, 5, 6
FUNCTIONS = {"plms": plms, "ddim": ddim}


# ----------------------------------------------------------------------------- stand-ins
class GatedSelfAttentionDense(nn.Module):  # matched by class name, like the real layer
    def __init__(self):
        super().__init__()
        self.scale = 1.0


class GatedSelfAttentionDense2(GatedSelfAttentionDense):
    pass


class ToyGroundingInput:
    def __init__(self):
        self.set = False

    def prepare(self, batch):
        self.set = True
        self.batch, self.n = batch["boxes"].shape[:2]
        self.dtype = batch["boxes"].dtype
        return {"boxes": batch["boxes"], "masks": batch["masks"]}

    def get_null_input(self, batch=None, device=None, dtype=None):
        assert self.set
        b = batch or self.batch
        return {"boxes": torch.zeros(b, self.n, 4, dtype=self.dtype), "masks": torch.zeros(b, self.n, dtype=self.dtype)}


class ToyUNet(nn.Module):
    def __init__(self, inpaint=False):
        super().__init__()
        torch.manual_seed(0)
        self.inpaint = inpaint
        self.conv = nn.Conv2d(4 + (5 if inpaint else 0), 4, 3, padding=1)
        self.ctx = nn.Linear(D, 4)
        self.box = nn.Linear(4, 4)
        self.fuser = GatedSelfAttentionDense()
        self.other = GatedSelfAttentionDense2()
        self.grounding_tokenizer_input = ToyGroundingInput()
        self.restores = 0
        self.calls = []  # (batch size, fuser scale) per forward

    def restore_first_conv_from_SD(self):
        self.restores += 1

    def forward(self, input, gate_scale=None, sd_first_conv=None):
        g = input["grounding_input"] if "grounding_input" in input else self.grounding_tokenizer_input.get_null_input()
        x = input["x"]
        scale = self.fuser.scale if gate_scale is None else float(gate_scale)
        self.calls.append((x.shape[0], scale))
        h = torch.cat([x, input["inpainting_extra_input"]], 1) if self.inpaint else x
        h = self.conv(h) + self.ctx(input["context"].mean(1))[:, :, None, None]
        h = h + scale * self.box((g["boxes"] * g["masks"][..., None]).sum(1))[:, :, None, None]
        return torch.tanh(h * (1 + input["timesteps"].float()[:, None, None, None] / 1000))


class ToyDiffusion(nn.Module):
    def __init__(self):
        super().__init__()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        ac = torch.cumprod(1 - betas, 0)
        self.num_timesteps = 1000
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas_cumprod", ac.float())
        self.register_buffer("sqrt_alphas_cumprod", ac.sqrt().float())
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - ac).sqrt().float())

    def q_sample(self, x_start, t, noise=None):
        noise = torch.randn_like(x_start) if noise is None else noise
        a = self.sqrt_alphas_cumprod[t][:, None, None, None]
        s = self.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
        return a * x_start + s * noise


# ----------------------------------------------------------------------------- reference
def reference_sample(kind, diffusion, model, S, input, uc, scale, alphas, mask=None, x0=None):
    """Two-pass, literal transcription of the original's ``plms_sampling`` / ``ddim_sampling`` loops."""
    ac = diffusion.alphas_cumprod
    c = 1000 // S
    ts_all = np.asarray(list(range(0, 1000, c))) + 1
    a = ac[ts_all]
    a_prev = torch.tensor([ac[0].item()] + ac[ts_all[:-1]].tolist())
    sq = torch.sqrt(1.0 - a)
    time_range = np.flip(ts_all)
    n = len(time_range)

    def model_out(inp):
        e = model(inp)
        if uc is not None and scale != 1:
            u = dict(x=inp["x"], timesteps=inp["timesteps"], context=uc,
                     inpainting_extra_input=inp["inpainting_extra_input"],
                     grounding_extra_input=inp["grounding_extra_input"])
            eu = model(u)
            e = eu + scale * (e - eu)
        return e

    def update(x, e, index):
        b = x.shape[0]
        at = torch.full((b, 1, 1, 1), a[index].item())
        ap = torch.full((b, 1, 1, 1), a_prev[index].item())
        sig = torch.full((b, 1, 1, 1), 0.0)
        s1 = torch.full((b, 1, 1, 1), sq[index].item())
        p = (x - s1 * e) / at.sqrt()
        d = (1.0 - ap - sig ** 2).sqrt() * e
        noise = sig * torch.randn_like(x)
        return ap.sqrt() * p + d + noise

    old = []
    for i, step in enumerate(time_range):
        set_alpha_scale(model, alphas[i])
        if alphas[i] == 0:
            model.restore_first_conv_from_SD()
        index = n - i - 1
        ts = torch.full((B,), int(step), dtype=torch.long)
        if mask is not None:
            input["x"] = diffusion.q_sample(x0, ts) * mask + (1 - mask) * input["x"]
        if kind == "ddim":
            input["timesteps"] = ts
            input["x"] = update(input["x"], model_out(input), index)
            continue
        ts_next = torch.full((B,), int(time_range[min(i + 1, n - 1)]), dtype=torch.long)
        x = input["x"].clone()
        input["timesteps"] = ts
        e_t = model_out(input)
        if not old:
            xp = update(x, e_t, index)
            input["x"], input["timesteps"] = xp, ts_next
            ep = (e_t + model_out(input)) / 2
        elif len(old) == 1:
            ep = (3 * e_t - old[-1]) / 2
        elif len(old) == 2:
            ep = (23 * e_t - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            ep = (55 * e_t - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        input["x"] = update(x, ep, index)
        old.append(e_t)
        if len(old) >= 4:
            old.pop(0)
    return input["x"]


def make_inputs(model, inpaint=False):
    g = torch.Generator().manual_seed(1)
    boxes = torch.rand(B, N, 4, generator=g)
    masks = (torch.arange(N) < 2).float().expand(B, N).clone()
    gi = model.grounding_tokenizer_input.prepare({"boxes": boxes, "masks": masks})
    context = torch.randn(B, 77, D, generator=g)
    uc = torch.randn(B, 77, D, generator=g)
    extra = torch.randn(B, 5, 8, 8, generator=g) if inpaint else None
    inp = dict(x=torch.randn(B, 4, 8, 8, generator=g), timesteps=None, context=context, grounding_input=gi,
               inpainting_extra_input=extra, grounding_extra_input=None)
    return inp, uc


def _copy(inp):
    return {k: v for k, v in inp.items()}


def functional_sample(kind, diffusion, model, S, inp, uc, scale, gates, mask=None, x0=None, **kw):
    """The new API: a denoiser built once, a sampler function, nothing else."""
    denoise = GroundedDenoiser(model, inp["context"], inp["grounding_input"], uc, scale,
                               inpainting_extra_input=inp["inpainting_extra_input"],
                               grounding_extra_input=inp["grounding_extra_input"], **kw)
    known = KnownRegion(diffusion, x0, mask) if mask is not None else None
    return FUNCTIONS[kind](denoise, inp["x"], make_schedule(diffusion.alphas_cumprod, S), gates, known=known)


@pytest.mark.parametrize("api", ["functional", "legacy"])
@pytest.mark.parametrize("kind", ["plms", "ddim"])
@pytest.mark.parametrize("alpha_type", [[0.3, 0, 0.7], [1, 0, 0], [0.2, 0.5, 0.3]])
@pytest.mark.parametrize("inpaint", [False, True])
def test_matches_two_pass_reference_and_rng_order(api, kind, alpha_type, inpaint):
    S = 10
    diffusion = ToyDiffusion()
    mask = x0 = None
    if inpaint:
        mask = torch.ones(B, 1, 8, 8)
        mask[:, :, 2:6, 1:5] = 0
        x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    alphas = alpha_generator(S, alpha_type)

    ref_model = ToyUNet(inpaint)
    inp, uc = make_inputs(ref_model, inpaint)
    torch.manual_seed(123)
    ref = reference_sample(kind, diffusion, ref_model, S, _copy(inp), uc, 7.5, alphas, mask, x0)
    ref_next = torch.randn(3)

    model = ToyUNet(inpaint)
    inp, uc = make_inputs(model, inpaint)
    before = _copy(inp)
    torch.manual_seed(123)
    if api == "legacy":
        cls = PLMSSampler if kind == "plms" else DDIMSampler
        sampler = cls(diffusion, model, alpha_generator_func=partial(alpha_generator, type=alpha_type),
                      set_alpha_scale=set_alpha_scale, progress=False)
        got = sampler.sample(S=S, shape=(B, 4, 8, 8), input=inp, uc=uc, guidance_scale=7.5, mask=mask, x0=x0)
    else:
        got = functional_sample(kind, diffusion, model, S, inp, uc, 7.5, alphas, mask, x0)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.randn(3), ref_next), "global RNG consumed in a different order/amount"
    # the original's restore hook is the legacy API's business (called on every zero-gate step,
    # plus PLMS's extra first-step evaluation when that step's gate is 0)
    zero_evals = sum(a == 0 for a in alphas) + (kind == "plms" and alphas[0] == 0)
    assert model.restores == (zero_evals if api == "legacy" else 0)
    # one batched call (2B) per model evaluation; PLMS evaluates twice on its first step
    assert [c[0] for c in model.calls] == [2 * B] * (S + (kind == "plms"))
    # same per-call gate (the functional API passes it as a float32 tensor)
    assert [c[1] for c in model.calls] == pytest.approx([c[1] for c in ref_model.calls[::2]], abs=1e-7)
    assert model.fuser.scale == 1.0 and model.other.scale == 1.0  # the model is as before
    assert inp.keys() == before.keys() and all(inp[k] is before[k] for k in inp)  # input not edited


def test_initial_noise_drawn_from_global_rng():
    diffusion, model = ToyDiffusion(), ToyUNet()
    inp, uc = make_inputs(model)
    inp["x"] = None
    torch.manual_seed(7)
    expected_x = torch.randn(B, 4, 8, 8)
    torch.manual_seed(7)
    got = DDIMSampler(diffusion, model, progress=False).sample(S=1, shape=(B, 4, 8, 8), input=inp, uc=uc,
                                                               guidance_scale=7.5)
    # S=1: the single step used the drawn noise as x_T
    inp2, _ = make_inputs(ToyUNet())
    inp2["x"] = expected_x
    ref = DDIMSampler(diffusion, ToyUNet(), progress=False)
    out = ref.sample(S=1, shape=(B, 4, 8, 8), input=inp2, uc=uc, guidance_scale=7.5)
    torch.testing.assert_close(got, out)


def _denoise(model, inp, uc, scale, **kw):
    return GroundedDenoiser(model, inp["context"], inp["grounding_input"], uc, scale, **kw)


def test_guidance_one_or_no_uc_is_single_conditional_pass():
    model = ToyUNet()
    inp, uc = make_inputs(model)
    t = torch.full((B,), 500)
    e1 = _denoise(model, inp, uc, 1.0)(inp["x"], t, 1.0)
    e2 = _denoise(model, inp, None, 7.5)(inp["x"], t, 1.0)
    assert len(model.calls) == 2 and all(c[0] == B for c in model.calls)
    torch.testing.assert_close(e1, e2)


def test_batched_equals_two_pass_and_uncond_branch_is_null_grounded():
    from grounding_input.base import null_grounding

    model = ToyUNet()
    inp, uc = make_inputs(model)
    t = torch.tensor([981, 501])
    a = _denoise(model, inp, uc, 5.0, batched=True)(inp["x"], t, 0.7)
    b = _denoise(model, inp, uc, 5.0, batched=False)(inp["x"], t, 0.7)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # literal CFG with the null grounding of the same input
    e_c = model(dict(inp, timesteps=t), gate_scale=0.7)
    e_u = model(dict(inp, timesteps=t, context=uc, grounding_input=null_grounding(inp["grounding_input"])),
                gate_scale=0.7)
    torch.testing.assert_close(a, e_u + 5.0 * (e_c - e_u), atol=1e-6, rtol=1e-6)


def test_null_grounding_is_pure():
    from grounding_input.base import null_grounding

    g = {"boxes": torch.rand(2, 3, 4), "masks": torch.ones(2, 3, dtype=torch.float16), "n": 3}
    z = null_grounding(g)
    assert all(torch.equal(z[k], torch.zeros_like(g[k])) and z[k].dtype == g[k].dtype for k in ("boxes", "masks"))
    assert z["n"] == 3 and g["masks"].dtype == torch.float16 and g["boxes"].any()  # input untouched


def test_half_precision_model_keeps_float32_latents():
    model = ToyUNet().to(torch.bfloat16)
    model.grounding_tokenizer_input = ToyGroundingInput()
    inp, uc = make_inputs(model)
    inp = {k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and k != "x" else v) for k, v in inp.items()}
    inp["grounding_input"] = model.grounding_tokenizer_input.prepare(
        {k: v.to(torch.bfloat16) for k, v in inp["grounding_input"].items()})
    out = PLMSSampler(ToyDiffusion(), model, progress=False).sample(
        S=4, shape=(B, 4, 8, 8), input=inp, uc=uc.to(torch.bfloat16), guidance_scale=7.5)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out = functional_sample("ddim", ToyDiffusion(), model, 4, inp, uc.to(torch.bfloat16), 7.5, None)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_schedule_tables():
    assert make_ddim_timesteps(50).tolist() == list(range(1, 1000, 20))
    assert make_ddim_timesteps(250)[:3].tolist() == [1, 5, 9]
    assert len(make_ddim_timesteps(4)) == 4 and len(make_ddim_timesteps(7)) == 8  # 1000//7=142 -> 8 steps
    d = ToyDiffusion()
    s = make_schedule(d.alphas_cumprod, 50)
    assert s.alphas_prev[0] == d.alphas_cumprod[0].item()  # final step: alphas_cumprod[0], not 1
    assert s.alphas[-1] == d.alphas_cumprod[981].item()
    assert s.sigmas == [0.0] * 50
    with pytest.raises(ValueError):
        make_ddim_timesteps(0)
    with pytest.raises(ValueError):
        PLMSSampler(d, ToyUNet()).make_schedule(10, ddim_eta=0.5)


def test_alpha_generator():
    assert alpha_generator(10, [0.3, 0, 0.7]) == [1] * 3 + [0] * 7
    assert alpha_generator(50, [0.9, 0, 0.1]) == [1] * 45 + [0] * 5
    assert alpha_generator(4) == [1, 1, 1, 1]
    decay = alpha_generator(10, [0.2, 0.5, 0.3])
    assert decay[:2] == [1, 1] and decay[-3:] == [0, 0, 0]
    np.testing.assert_allclose(decay[2:7], [0.8, 0.6, 0.4, 0.2, 0.0])
    for n in (49, 98, 103, 107):  # the original's np.arange length bug
        assert len(alpha_generator(n, [0, 1, 0])) == n
    assert len(alpha_generator(50, [0.1, 0.2, 0.7])) == 50  # sum is 1.0000000000000002
    with pytest.raises(ValueError):
        alpha_generator(10, [0.5, 0.6, 0])
    with pytest.raises(ValueError):
        alpha_generator(10, [1, 0])


def test_progress_bar(capsys):
    model = ToyUNet()
    inp, uc = make_inputs(model)
    DDIMSampler(ToyDiffusion(), model, progress=True).sample(S=2, shape=(B, 4, 8, 8), input=inp, uc=uc,
                                                             guidance_scale=2.0)
    assert "DDIM Sampler" in capsys.readouterr().err
    inp, uc = make_inputs(model)
    DDIMSampler(ToyDiffusion(), model, progress=False).sample(S=2, shape=(B, 4, 8, 8), input=inp, uc=uc,
                                                              guidance_scale=2.0)
    assert "DDIM Sampler" not in capsys.readouterr().err


def test_step_counts_beyond_the_schedule_are_rejected():
    for s in (3, 300, 1000):
        with pytest.raises(ValueError, match="outside the 1000-step schedule"):
            make_ddim_timesteps(s)


def test_grounding_tokens_computed_once_per_run():
    """position_net runs once per sampling run (tokens do not depend on x, t or the gate scale),
    and the result equals recomputing them at every step."""
    import tempfile

    from ldm.checkpoint import build_from_checkpoint
    from ldm.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as d:
        m = build_from_checkpoint(write_tiny_checkpoint(f"{d}/t.pth", "text"))
    B = 2
    batch = dict(boxes=torch.rand(B, 30, 4), masks=torch.ones(B, 30), text_embeddings=torch.randn(B, 30, 24))
    gi = m.grounding_tokenizer_input.prepare(batch)
    calls = []
    handle = m.model.position_net.register_forward_hook(lambda *a: calls.append(1))
    ctx, uc = torch.randn(B, 77, 16), torch.randn(B, 77, 16)

    def run(cache):
        denoise = GroundedDenoiser(m.model, ctx, gi, uc, 7.5, cache_tokens=cache)
        x = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        return plms(denoise, x, make_schedule(m.diffusion.alphas_cumprod, 4), alpha_generator(4, [0.5, 0, 0.5]))

    cached = run(True)
    assert len(calls) == 1
    calls.clear()
    per_step = run(False)
    handle.remove()
    assert len(calls) == 5  # 4 steps + PLMS's extra first-step evaluation (gated layers off or not)
    torch.testing.assert_close(cached, per_step)
