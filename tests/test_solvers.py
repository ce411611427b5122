"""Few-step samplers (ldm.models.diffusion.solvers): update rules against diffusers' schedulers on a
toy denoiser, exactness on a point-mass model, scheduled sampling, inpainting, the UNet bridge."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ldm.models.diffusion.ldm import LatentDiffusion
from ldm.models.diffusion.sampling import alpha_generator
from ldm.models.diffusion.solvers import Grid, SOLVERS, dpmpp_2m, euler, make_grid, solve, unipc

AC = LatentDiffusion(linear_start=0.00085, linear_end=0.012).alphas_cumprod  # SD v1 schedule


def _ab(t: torch.Tensor):
    """sqrt(a_t), sqrt(1 - a_t) at (fractional) timesteps t (B,), broadcast to 4-D."""
    a = torch.from_numpy(np.interp(t.double().numpy(), np.arange(len(AC)), AC.double().numpy())).float()
    return a.sqrt().view(-1, 1, 1, 1), (1 - a).sqrt().view(-1, 1, 1, 1)


def toy_eps(x, t, gate=1.0):
    """A smooth nonlinear eps model: exact for Gaussian data N(0.3, 0.5^2) plus a t-dependent wiggle."""
    a, s = _ab(t)
    eps = s * (x - a * 0.3) / (a ** 2 * 0.25 + s ** 2)
    return eps + 0.1 * torch.sin(2 * x) * (t.view(-1, 1, 1, 1) / 1000)


def _diffusers_run(scheduler, x):
    for t in scheduler.timesteps:
        tt = torch.full((x.shape[0],), float(t))
        eps = toy_eps(scheduler.scale_model_input(x, t), tt)
        x = scheduler.step(eps, t, x).prev_sample
    return x


def _grid_of(scheduler) -> Grid:
    return Grid(t=tuple(float(v) for v in scheduler.timesteps) + (0.0,),
                sigmas=tuple(float(v) for v in scheduler.sigmas))


COMMON = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
              final_sigmas_type="sigma_min")


@pytest.mark.parametrize("steps", [5, 12])
@pytest.mark.parametrize("karras", [False, True])
def test_dpmpp_2m_matches_diffusers(steps, karras):
    from diffusers import DPMSolverMultistepScheduler

    sch = DPMSolverMultistepScheduler(**COMMON, algorithm_type="dpmsolver++", solver_order=2,
                                      solver_type="midpoint", lower_order_final=False, use_karras_sigmas=karras)
    sch.set_timesteps(steps)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    ref = _diffusers_run(sch, x.clone())
    ours = dpmpp_2m(toy_eps, x.clone(), _grid_of(sch))
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-4), (ours - ref).abs().max()
    # a non-trivial problem: the result differs from a first-order (DDIM-like) run
    assert (euler(toy_eps, x.clone(), _grid_of(sch)) - ref).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [5, 12])
def test_unipc_matches_diffusers(steps):
    from diffusers import UniPCMultistepScheduler

    sch = UniPCMultistepScheduler(**COMMON, solver_order=2, solver_type="bh2", predict_x0=True,
                                  lower_order_final=False)
    sch.set_timesteps(steps)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    ref = _diffusers_run(sch, x.clone())
    ours = unipc(toy_eps, x.clone(), _grid_of(sch))
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-4), (ours - ref).abs().max()
    assert (dpmpp_2m(toy_eps, x.clone(), _grid_of(sch)) - ref).abs().max() > 1e-4  # the corrector matters


@pytest.mark.parametrize("steps", [5, 12])
def test_euler_matches_diffusers(steps):
    from diffusers import EulerDiscreteScheduler

    sch = EulerDiscreteScheduler(**COMMON)
    sch.set_timesteps(steps)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    # diffusers' Euler state is x / alpha (variance exploding); ours is the UNet's x_t
    grid = _grid_of(sch)
    ref = _diffusers_run(sch, x.clone() / grid.alpha(0))
    ours = euler(toy_eps, x.clone(), grid) / grid.alpha(len(grid))
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-4), (ours - ref).abs().max()


def test_make_grid_matches_diffusers_grids():
    from diffusers import DPMSolverMultistepScheduler

    for steps in (7, 20, 50):
        sch = DPMSolverMultistepScheduler(**COMMON)
        sch.set_timesteps(steps)
        g = make_grid(AC, steps)
        assert len(g) == steps
        np.testing.assert_allclose(g.sigmas, sch.sigmas.numpy(), rtol=1e-5)
        np.testing.assert_array_equal(g.t[:-1], sch.timesteps.numpy())
        assert g.t[0] == 999 and g.t[-1] == 0
        # Karras et al. Eq. 5 with rho 7 between the schedule's extreme sigmas (N + 1 points, no
        # repeated sigma_min as diffusers' grid has); t interpolated in log sigma (fractional)
        k = make_grid(AC, steps, "karras")
        table = ((1 - AC.double()) / AC.double()).sqrt()
        smax, smin = float(table[-1]), float(table[0])
        i = np.arange(steps + 1) / steps
        np.testing.assert_allclose(k.sigmas, (smax ** (1 / 7) + i * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7, rtol=1e-9)
        assert k.t[0] == pytest.approx(999) and k.t[-1] == pytest.approx(0)
        j = int(np.searchsorted(table.numpy(), k.sigmas[steps // 2]))
        assert k.t[steps // 2] in (j - 1, j)  # rounded log-sigma interpolation


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_point_mass_is_solved_exactly(name):
    """For data = a point y the ODE path is x_t = alpha_t y + sigma_t e (e constant): every solver
    here is exact for it, whatever the number of steps."""
    y = torch.randn(1, 4, 5, 5, generator=torch.Generator().manual_seed(3))
    e = torch.randn(1, 4, 5, 5, generator=torch.Generator().manual_seed(4))

    def eps_point(x, t, gate):
        a, s = _ab(t)
        return (x - a * y) / s

    fn, spacing = SOLVERS[name]
    g = make_grid(AC, 4, spacing)
    if spacing == "karras":  # exact only if the model time matches the grid's sigma: unrounded times
        table = ((1 - AC.double()) / AC.double()).sqrt().log().numpy()
        g = Grid(t=tuple(np.interp(np.log(g.sigmas), table, np.arange(len(AC)))), sigmas=g.sigmas)
    out = fn(eps_point, g.alpha(0) * y + g.sigma(0) * e, g)
    assert torch.allclose(out, g.alpha(4) * y + g.sigma(4) * e, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_converges_to_a_fine_reference(name):
    """More steps, closer to a 400-step second-order solution of the same ODE."""
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(5))
    ref = dpmpp_2m(toy_eps, x.clone(), make_grid(AC, 400))
    errs = [(solve(name, toy_eps, x.clone(), AC, n) - ref).abs().max().item() for n in (8, 16, 32, 64)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_scheduled_sampling_gates_per_call(name):
    calls = []

    def rec(x, t, gate):
        calls.append((float(t[0]), gate))
        return toy_eps(x, t)

    steps = 10
    gates = alpha_generator(steps, [0.3, 0.0, 0.7])
    solve(name, rec, torch.randn(1, 4, 4, 4), AC, steps, gates=gates)
    assert [g for _, g in calls] == gates  # one call per step, gate i at call i
    assert [t for t, _ in calls] == pytest.approx(make_grid(AC, steps, SOLVERS[name][1]).t[:-1], abs=1e-3)
    with pytest.raises(ValueError, match="9 gate scales for 10 steps"):
        solve(name, rec, torch.randn(1, 4, 4, 4), AC, steps, gates=gates[:-1])


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_inpainting_known_region(name):
    """``known(x, t)`` (the samplers' inpainting hook) runs before every call, at the call's
    timestep: the denoiser sees x0 noised to that level (a fresh randn_like(x0) draw per call, the
    original's order) in the known region; the unknown region is left to the solver."""
    steps = 6
    diffusion = LatentDiffusion(linear_start=0.00085, linear_end=0.012)
    x0 = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(6))
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., :3] = 1

    def known(x, t):  # the contract of KnownRegion / inpaint_replace
        return mask * diffusion.q_sample(x0, t) + (1 - mask) * x

    def mixing(x, t, gate=1.0):  # couples pixels, so the known region informs the rest
        return toy_eps(x, t) + 0.2 * x.mean(dim=(-2, -1), keepdim=True)

    seen = []

    def rec(x, t, gate):
        assert t.dtype == torch.long
        seen.append((x.clone(), int(t[0])))
        return mixing(x, t)

    x = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(11)
    out = solve(name, rec, x.clone(), AC, steps, known=known)
    assert len(seen) == steps
    torch.manual_seed(11)
    for xi, t in seen:
        a = AC[t]
        expect = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn_like(x0)
        assert torch.allclose(xi[..., :3], expect[..., :3], atol=1e-6)
    assert torch.equal(seen[0][0][..., 3:], x[..., 3:])
    free = solve(name, mixing, x.clone(), AC, steps)
    assert not torch.allclose(free[..., 3:], out[..., 3:])


def test_unknown_sampler_and_bad_grid():
    with pytest.raises(ValueError, match="unknown sampler"):
        solve("heun", toy_eps, torch.randn(1, 4, 4, 4), AC, 5)
    with pytest.raises(ValueError, match="spacing"):
        make_grid(AC, 5, "cosine")
    with pytest.raises(ValueError, match=">= 1"):
        make_grid(AC, 0)


# ------------------------------------------------------------------ the UNet bridge: gates / first conv exact
def _tiny(family, B):
    """A tiny random GLIGEN UNet of ``family`` in eval mode plus its UNet inputs (no x / timesteps)."""
    from ldm.tiny import build_tiny
    from ldm.util import instantiate_from_config

    parts = build_tiny(family)
    cfg = parts["config"]
    model = parts["model"].eval()
    gi = model.grounding_tokenizer_input = instantiate_from_config(cfg["grounding_tokenizer_input"])
    g = torch.Generator().manual_seed(0)
    inp = dict(context=torch.randn(B, 77, 16, generator=g))
    if family == "text":
        batch = dict(boxes=torch.rand(B, 30, 4, generator=g), masks=torch.ones(B, 30),
                     text_embeddings=torch.randn(B, 30, 24, generator=g))
    else:
        batch = {"hed_edge": torch.randn(B, 3, 16, 16, generator=g), "mask": torch.ones(B)}
        inp["grounding_extra_input"] = instantiate_from_config(cfg["grounding_downsampler_input"]).prepare(batch)
    inp["grounding_input"] = gi.prepare(batch)
    return model, inp


def _denoiser(model, inp, **kw):
    from ldm.models.diffusion.denoiser import GroundedDenoiser

    return GroundedDenoiser(model, inp["context"], inp["grounding_input"],
                            grounding_extra_input=inp.get("grounding_extra_input"), **kw)


def test_denoiser_gate_zero_is_exactly_fusers_off():
    model, inp = _tiny("text", 1)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    den = _denoiser(model, inp)
    with torch.no_grad():
        on = den(x, t, 1.0)
        off = den(x, t, 0.0)
        half = den(x, t, 0.5)
        # references: every fuser replaced by the identity; the scale passed by hand
        fusers = [m for m in model.modules() if type(m).__name__ == "GatedSelfAttentionDense"]
        assert fusers
        ref_half = model({**inp, "x": x, "timesteps": t}, gate_scale=torch.tensor(0.5))
        for f in fusers:
            f.forward = lambda x, objs, *a, **k: x
        ref_off = model({**inp, "x": x, "timesteps": t})
    assert torch.equal(off, ref_off)
    assert torch.equal(half, ref_half)
    assert not torch.allclose(on, off)


def test_denoiser_uses_sd_first_conv_of_spatial_models_at_gate_zero_only():
    model, inp = _tiny("hed", 1)
    assert model.downsample_net is not None
    gl_conv = model.input_blocks[0][0]
    sd = {"weight": torch.randn_like(gl_conv.weight[:, :4]), "bias": torch.randn(model.model_channels)}
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    den = _denoiser(model, inp, sd_first_conv=sd)
    with torch.no_grad():
        on = den(x, torch.tensor([900]), 1.0)
        assert torch.equal(on, model({**inp, "x": x, "timesteps": torch.tensor([900])}))
        out = den(x, torch.tensor([100]), 0.0)
        ref = model({**inp, "x": x, "timesteps": torch.tensor([100])}, gate_scale=0.0, sd_first_conv=sd)
        assert model.input_blocks[0][0] is gl_conv  # the model is never modified
    assert torch.equal(out, ref)


def test_denoiser_runs_a_guided_solver_end_to_end():
    B = 2
    model, inp = _tiny("text", B)
    uc = torch.zeros_like(inp["context"])
    den = _denoiser(model, inp, uc=uc, guidance_scale=5.0)
    x = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    out = solve("dpmpp_2m", den, x, AC, 8, gates=alpha_generator(8, [0.3, 0, 0.7]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, x)


# ------------------------------------------------------------------ the CLI / pipeline
BOX = [[0.0, 0.09, 0.33, 0.76], [0.55, 0.11, 1.0, 0.8]]


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    from ldm.inference.standins import write_standins
    from ldm.tiny import write_tiny_checkpoint, write_tiny_clip_model

    d = tmp_path_factory.mktemp("tiny_solvers")
    paths = {name: write_tiny_checkpoint(d / f"{name}.pth", fam, inpaint=inp)
             for name, (fam, inp) in {"text": ("text", False), "inpaint_text": ("text", True), "hed": ("hed", False)}.items()}
    paths["clip"] = write_tiny_clip_model(d / "clip")
    write_standins(str(d / "images"))
    paths["entries"] = {
        "text": dict(prompt="a teddy bear and a bird", phrases=["a teddy bear", "a bird"], locations=BOX),
        "inpaint_text": dict(prompt="a corgi and a cake", phrases=["corgi", "cake"], locations=BOX,
                             input_image=str(d / "images" / "beach.jpg")),
        "hed": dict(prompt="a man", hed_image=str(d / "images" / "hed_man_eat.png")),
    }
    return paths


def test_default_steps_and_step_limits():
    from ldm.inference.errors import LayoutError
    from ldm.inference.pipeline import Settings

    assert Settings(sampler="dpmpp_2m").num_steps == 20 and Settings(sampler="plms").num_steps == 50
    assert Settings(sampler="unipc", steps=3).num_steps == 3  # any count (PLMS/DDIM would refuse 3)
    with pytest.raises(LayoutError, match=r"\(1\.\.1000\), got 1001"):
        Settings(sampler="euler", steps=1001)


@pytest.mark.filterwarnings("ignore:SD first-conv weights not provided", "ignore:SD v1.4 first conv")
@pytest.mark.parametrize("name,sampler", [("text", "dpmpp_2m"), ("text", "unipc"), ("inpaint_text", "dpmpp_2m_karras"),
                                          ("hed", "euler")])
def test_cli_with_solvers(tiny_ckpts, tmp_path, name, sampler):
    """Every solver through gligen_inference.py, with grounding, inpainting and a spatial model
    (scheduled sampling switches to SD's first conv), seeded runs repeatable from the saved JSON."""
    import numpy as np
    from PIL import Image

    import gligen_inference

    entry = {**tiny_ckpts["entries"][name], "ckpt": tiny_ckpts[name], "seed": 5, "save_folder_name": "s",
             "alpha_type": [0.3, 0.0, 0.7]}
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps(entry))
    out = tmp_path / "out"
    rc = gligen_inference.main(["--layout", str(layout), "--clip", tiny_ckpts["clip"], "--device", "cpu",
                                "--steps", "3", "--batch_size", "2", "--folder", str(out), "--no-progress",
                                "--sampler", sampler])
    assert rc == 0
    rec = json.loads((out / "s" / "0.json").read_text())
    assert rec["settings"]["sampler"] == sampler and rec["settings"]["steps"] == 3
    first = np.asarray(Image.open(out / "s" / "0.png"))
    assert gligen_inference.main(["--layout", str(out / "s" / "0.json"), "--folder", str(tmp_path / "again"),
                                  "--device", "cpu", "--no-progress", "--clip", tiny_ckpts["clip"]]) == 0
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "again" / "s" / "0.png")))
