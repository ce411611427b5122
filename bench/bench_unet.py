#!/usr/bin/env python
"""Benchmark our GLIGEN UNet against diffusers' GLIGEN UNet (same weights, same process).

Builds the full-size box+text GLIGEN UNet (``configs/flickr_text.yaml``: SD-1.4 architecture,
random weights from a fixed seed) and the equivalent ``diffusers.UNet2DConditionModel`` with
``attention_type="gated"`` (what ``StableDiffusionGLIGENPipeline`` uses), copies our weights into
it (so both compute the same function; the max difference of their outputs is reported), then
measures on one device and dtype:

* **step**: milliseconds per denoising step with classifier-free guidance, cond + uncond in ONE
  batch of 2 (x 30 grounding tokens); medians of ``--repeats`` runs, variants interleaved in a
  rotating order to spread drift. Variants: ours (tokenizer in every call, as diffusers), ours with
  precomputed grounding tokens, ours with the gates off (scale 0), diffusers, diffusers with its
  fusers disabled.
* **memory**: CUDA: ``torch.cuda.max_memory_allocated``. CPU: (a) peak live tensor bytes during
  one step from the profiler's allocation events (allocator-independent), and (b) unless
  ``--memory profiler``: each model in its own subprocess, peak RSS (``VmHWM`` reset through
  ``/proc/self/clear_refs`` after the model is built; ``ru_maxrss`` where that is not possible).
* **e2e**: wall time of a ``--steps`` PLMS run of the UNet alone (no text encoder / VAE): ours
  through ``ldm.models.diffusion.sampling.plms`` over a ``GroundedDenoiser`` (batched CFG,
  scheduled sampling through ``alpha_generator``), diffusers through ``PNDMScheduler(skip_prk_steps=True)`` (its PLMS, as the
  GLIGEN pipeline), each with grounding on at every step and with the default schedule
  (grounding for the first 30% of the steps: alpha_type [0.3, 0, 0.7] / gligen beta 0.3).

Prints a table and writes JSON (``--json``). ``--preset tiny`` runs a toy-width model in
seconds (used by the smoke test). On CPU our large-weight convs with small outputs run as
im2col + GEMM unless ``--small-conv-max-pixels 0`` (``bench/small_conv.py``: an explicit switch of
the benchmark, not a default of the model). See bench/RESULTS.md for the figures and commands.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from functools import partial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

import small_conv  # noqa: E402  (bench/, beside this file)
from ldm.devices import DTYPES  # noqa: E402
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "4000000000", "MALLOC_MMAP_THRESHOLD_": "4000000000"}
N_TOKENS = 30


# ----------------------------------------------------------------------------------- models
def model_config(preset: str) -> tuple[dict, dict]:
    """(our UNet config node, diffusers UNet2DConditionModel kwargs) for a preset."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(ROOT, "configs", "flickr_text.yaml")), resolve=True)
    ours = cfg["model"]
    ours["params"]["use_checkpoint"] = False
    if preset == "full":
        theirs = dict(cross_attention_dim=768, attention_type="gated")  # SD-1.4 defaults otherwise
    elif preset == "tiny":
        p = ours["params"]
        p.update(model_channels=32, channel_mult=[1, 1], num_res_blocks=1, attention_resolutions=[1],
                 num_heads=2, context_dim=16)
        p["grounding_tokenizer"]["params"].update(in_dim=16, out_dim=16)  # diffusers: positive_len = context dim
        theirs = dict(block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                      attention_head_dim=2, cross_attention_dim=16, attention_type="gated")
    else:
        raise ValueError(preset)
    return ours, theirs


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Deterministic, non-degenerate random weights (no zero-initialised output convs, open gates)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                p.fill_(0.5)
            elif p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def build_ours(preset: str, seed: int, init: bool = True):
    from grounding_input.base import BoxTextInput as GroundingNetInput
    from ldm.util import instantiate_from_config

    cfg, _ = model_config(preset)
    torch.manual_seed(seed)
    model = instantiate_from_config(cfg).eval()
    if init:
        randomize_(model, seed)
    model.grounding_tokenizer_input = GroundingNetInput()
    return model


def ours_to_diffusers_state(sd: dict, num_levels: int, num_res_blocks: int,
                            attention_resolutions: list[int] | None = None) -> dict:
    """Rename an SD-layout (LDM) GLIGEN UNet state dict to diffusers' UNet2DConditionModel names
    (the project's one mapping, ``ldm.diffusers_format``). Attention levels default to those whose
    first input block holds a transformer."""
    from ldm.diffusers_format import unet_state_to_diffusers

    if attention_resolutions is None:
        attention_resolutions = [2 ** lv for lv in range(num_levels)
                                 if f"input_blocks.{1 + lv * (num_res_blocks + 1)}.1.norm.weight" in sd]
    params = dict(channel_mult=[1] * num_levels, num_res_blocks=num_res_blocks,
                  attention_resolutions=attention_resolutions)
    return unet_state_to_diffusers(sd, params)


def build_theirs(preset: str, latent: int, ours=None, seed: int = 0):
    from diffusers import UNet2DConditionModel

    _, kwargs = model_config(preset)
    torch.manual_seed(seed)
    model = UNet2DConditionModel(sample_size=latent, **kwargs).eval()
    if ours is not None:
        levels = len(ours.channel_mult)
        model.load_state_dict(ours_to_diffusers_state(ours.state_dict(), levels, ours.num_res_blocks,
                                                      list(ours.attention_resolutions)), strict=True)
    return model


def set_diffusers_fuser(model, enabled: bool) -> None:
    """What StableDiffusionGLIGENPipeline.enable_fuser does."""
    from diffusers.models.attention import GatedSelfAttentionDense

    for m in model.modules():
        if type(m) is GatedSelfAttentionDense:
            m.enabled = enabled


# ----------------------------------------------------------------------------------- inputs
def make_inputs(preset: str, latent: int, device, dtype, seed: int, channels_last: bool = False) -> dict:
    """One CFG step's inputs: row 0 = conditional (grounded), row 1 = unconditional (null grounding)."""
    ctx_dim = 768 if preset == "full" else 16
    g = torch.Generator().manual_seed(seed + 1)
    x1 = torch.randn(1, 4, latent, latent, generator=g)
    boxes = torch.rand(1, N_TOKENS, 4, generator=g).sort(-1).values  # x0 <= y0 <= x1 <= y1: valid-ish boxes
    phrase = torch.randn(1, N_TOKENS, ctx_dim, generator=g)
    masks = torch.zeros(1, N_TOKENS)
    masks[:, :N_TOKENS] = 1
    c, uc = torch.randn(1, 77, ctx_dim, generator=g), torch.randn(1, 77, ctx_dim, generator=g)

    def dev(t, floating=True):
        t = t.to(device)
        return t.to(dtype) if floating and t.is_floating_point() else t

    x = dev(torch.cat([x1, x1]))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return dict(
        x1=dev(x1), x=x, t=torch.full((2,), 981, device=device, dtype=torch.long),
        c=dev(c), uc=dev(uc), context=dev(torch.cat([c, uc])),
        boxes1=dev(boxes), phrase1=dev(phrase), masks1=dev(masks),
        grounding=dict(boxes=dev(torch.cat([boxes, torch.zeros_like(boxes)])),
                       masks=dev(torch.cat([masks, torch.zeros_like(masks)])),
                       positive_embeddings=dev(torch.cat([phrase, torch.zeros_like(phrase)]))),
    )


def step_fns(ours, theirs, inp) -> dict:
    """name -> zero-argument callable running one CFG UNet step (batch 2)."""
    g = inp["grounding"]
    fns = {}
    if ours is not None:
        with torch.no_grad():
            tokens = ours.position_net(**g)

        def ours_step(scale=1.0, precomputed=False):
            d = dict(x=inp["x"], timesteps=inp["t"], context=inp["context"])
            if precomputed:
                d["grounding_tokens"] = tokens
            else:
                d["grounding_input"] = g
            return ours(d, gate_scale=scale)

        fns["ours"] = ours_step
        fns["ours_tokens_once"] = partial(ours_step, precomputed=True)
        fns["ours_scale0"] = partial(ours_step, scale=0.0)
    if theirs is not None:
        # diffusers orders the CFG batch uncond-first; same cost either way
        ctx = torch.cat([inp["context"][1:], inp["context"][:1]])
        gl = {k: torch.cat([v[1:], v[:1]]) for k, v in g.items()}

        def theirs_step(enabled=True):
            set_diffusers_fuser(theirs, enabled)
            return theirs(inp["x"], inp["t"], encoder_hidden_states=ctx,
                          cross_attention_kwargs={"gligen": dict(gl)}).sample

        fns["diffusers"] = theirs_step
        fns["diffusers_fuser_off"] = partial(theirs_step, enabled=False)
    return fns


# ----------------------------------------------------------------------------------- timing
def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return out, time.perf_counter() - w0, time.process_time() - c0


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench_steps(fns: dict, device, repeats: int, warmup: int) -> dict:
    """Median wall ms per step of each variant; variants interleaved, rotating the order."""
    names = list(fns)
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                timed(fns[n], device)
        wall = {n: [] for n in names}
        cpu = {n: [] for n in names}
        faults = {n: [] for n in names}
        for r in range(repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:
                f0 = minflt()
                _, w, c = timed(fns[n], device)
                wall[n].append(w * 1000)
                cpu[n].append(c * 1000)
                faults[n].append(minflt() - f0)
    return {n: dict(ms_median=statistics.median(wall[n]), ms=[round(v, 2) for v in wall[n]],
                    cpu_ms_median=statistics.median(cpu[n]), minor_faults_median=statistics.median(faults[n]))
            for n in names}


# ----------------------------------------------------------------------------------- memory
def profiler_peak_bytes(fn) -> int:
    """Peak live CPU tensor bytes during fn(): cumulative allocations minus frees, in event order."""
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
            fn()
    cur = peak = 0
    for e in sorted(p.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def cuda_peak_bytes(fn, device) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device)
    return dict(peak_allocated=peak, above_weights=peak - base)


def read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_memory(args) -> dict:
    """Run in a fresh process: build one model, then peak RSS over warm-up + steps."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    latent = args.resolution // 8
    variant = args._child
    ours = theirs = None
    if variant.startswith("ours"):
        ours = build_ours(args.preset, args.seed, init=False).to(device, dtype)
        small_conv.enable(ours, args.small_conv_max_pixels)
        model = ours
    else:
        theirs = build_theirs(args.preset, latent, seed=args.seed).to(device, dtype)
        model = theirs
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    inp = make_inputs(args.preset, latent, device, dtype, args.seed, args.channels_last)
    fn = step_fns(ours, theirs, inp)[variant]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    rss_built = read_status_kb("VmRSS")
    hwm_reset = reset_peak_rss()
    with torch.inference_mode():
        for _ in range(1 + args.memory_steps):
            fn()
    peak_kb = read_status_kb("VmHWM") if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(variant=variant, weights_bytes=weights, rss_after_build_bytes=rss_built * 1024,
                peak_rss_bytes=peak_kb * 1024, above_build_bytes=(peak_kb - rss_built) * 1024,
                method="VmHWM after clear_refs" if hwm_reset else "ru_maxrss (includes model construction)")


def subprocess_memory(args, variant: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", variant, "--device", args.device,
           "--dtype", args.dtype, "--resolution", str(args.resolution), "--preset", args.preset,
           "--seed", str(args.seed), "--memory-steps", str(args.memory_steps),
           "--small-conv-max-pixels", str(args.small_conv_max_pixels)]
    if args.channels_last:
        cmd.append("--channels-last")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    if p.returncode != 0:
        raise RuntimeError(f"memory subprocess for {variant} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- end to end
def e2e_ours(ours, inp, steps: int, alpha_type, guidance: float, device, seed: int) -> dict:
    from ldm.models.diffusion.denoiser import GroundedDenoiser
    from ldm.models.diffusion.sampling import alpha_generator, make_schedule, plms
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf

    diffusion = instantiate_from_config(OmegaConf.load(os.path.join(ROOT, "configs", "flickr_text.yaml")).diffusion)
    diffusion = diffusion.to(device)
    calls = []
    hook = ours.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        gti = ours.grounding_tokenizer_input
        grounding = gti.prepare({"boxes": inp["boxes1"], "masks": inp["masks1"], "text_embeddings": inp["phrase1"]})
        x = inp["x1"].float().clone()
        schedule = make_schedule(diffusion.alphas_cumprod, steps)
        gates = alpha_generator(len(schedule), alpha_type)
        torch.manual_seed(seed)
        with torch.inference_mode():
            denoise = GroundedDenoiser(ours, inp["c"], grounding, inp["uc"], guidance)
            out, wall, cpu = timed(lambda: plms(denoise, x, schedule, gates), device)
    finally:
        hook.remove()
    return dict(seconds=wall, cpu_seconds=cpu, unet_calls=len(calls), finite=bool(torch.isfinite(out).all()))


def e2e_theirs(theirs, inp, steps: int, beta: float, guidance: float, device) -> dict:
    from diffusers import PNDMScheduler

    sched = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(steps, device=device)
    ctx = torch.cat([inp["uc"], inp["c"]])
    z = torch.zeros_like
    gl = {"boxes": torch.cat([z(inp["boxes1"]), inp["boxes1"]]),
          "masks": torch.cat([z(inp["masks1"]), inp["masks1"]]),
          "positive_embeddings": torch.cat([z(inp["phrase1"]), inp["phrase1"]])}
    n_ground = int(beta * len(sched.timesteps))

    def run():
        latents = inp["x1"].clone()
        set_diffusers_fuser(theirs, True)
        for i, t in enumerate(sched.timesteps):
            if i == n_ground:
                set_diffusers_fuser(theirs, False)
            eps = theirs(torch.cat([latents, latents]), t, encoder_hidden_states=ctx,
                         cross_attention_kwargs={"gligen": dict(gl)}).sample
            e_u, e_c = eps.chunk(2)
            latents = sched.step(e_u + guidance * (e_c - e_u), t, latents).prev_sample
        set_diffusers_fuser(theirs, True)
        return latents

    with torch.inference_mode():
        out, wall, cpu = timed(run, device)
    return dict(seconds=wall, cpu_seconds=cpu, unet_calls=len(sched.timesteps), finite=bool(torch.isfinite(out).all()))


# ----------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--resolution", type=int, default=None, help="image side (latent = resolution/8); "
                   "default 256 on CPU, 512 otherwise")
    p.add_argument("--preset", choices=("full", "tiny"), default="full", help="tiny: toy width, for the smoke test")
    p.add_argument("--compile", action="store_true", help="torch.compile both UNets (compile time reported apart)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. max-autotune)")
    p.add_argument("--channels-last", action="store_true", help="both models and inputs in channels_last")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=50, help="PLMS steps of the end-to-end runs (0: skip them)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--memory", choices=("subprocess", "profiler", "none"), default="subprocess",
                   help="CPU peak memory: also per-model subprocess peak RSS (default), or profiler only")
    p.add_argument("--memory-steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--tune-malloc", action="store_true",
                   help="re-run under glibc malloc with large-block trimming/mmap disabled (" +
                        " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()) + ")")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small-conv-max-pixels", type=int, default=128,
                   help="CPU: run our large-weight convs with at most this many output pixels as im2col + GEMM "
                        "(bench/small_conv.py; 0: off, oneDNN everywhere)")
    p.add_argument("--skip-diffusers", action="store_true")
    p.add_argument("--json", default=None, help="output file (default bench/results/<device>_<dtype>_<res>[...].json)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.resolution is None:
        args.resolution = 256 if torch.device(args.device).type == "cpu" else 512
    if args.preset == "tiny" and args.resolution > 128:
        args.resolution = 64
    if args.resolution % 8:
        p.error("--resolution must be a multiple of 8")
    return args


def env_info(args) -> dict:
    info = dict(python=platform.python_version(), torch=torch.__version__, platform=platform.platform(),
                threads=torch.get_num_threads(), cpu_count=os.cpu_count(), device=str(args.device),
                malloc_env={k: os.environ[k] for k in MALLOC_ENV if k in os.environ},
                small_conv_max_pixels=args.small_conv_max_pixels)
    try:
        import diffusers
        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    if torch.device(args.device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(args.device)
    return info


def fmt_mb(b):
    return "-" if b is None else f"{b / 2 ** 20:,.0f}"


def main(argv=None):
    args = parse_args(argv)
    if args.tune_malloc and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], {**os.environ, **MALLOC_ENV})
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    with contextlib.suppress(ImportError):
        from diffusers.utils import logging as diffusers_logging
        diffusers_logging.set_verbosity_error()
    if args._child:
        print(json.dumps(child_memory(args)))
        return 0

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    latent = args.resolution // 8
    result = dict(args={k: v for k, v in vars(args).items() if not k.startswith("_")}, env=env_info(args),
                  batch="CFG: 1 image -> UNet batch 2 (cond + uncond)", grounding_tokens=N_TOKENS,
                  latent=[4, latent, latent], loadavg_start=loadavg())
    t0 = time.perf_counter()
    ours = build_ours(args.preset, args.seed)
    theirs = None if args.skip_diffusers else build_theirs(args.preset, latent, ours, args.seed)
    result["build_seconds"] = time.perf_counter() - t0
    ours.to(device, dtype)
    small_conv.enable(ours, args.small_conv_max_pixels)
    if theirs is not None:
        theirs.to(device, dtype)
    if args.channels_last:
        ours.to(memory_format=torch.channels_last)
        if theirs is not None:
            theirs.to(memory_format=torch.channels_last)
    result["params"] = sum(p.numel() for p in ours.parameters())
    inp = make_inputs(args.preset, latent, device, dtype, args.seed, args.channels_last)

    run_ours, run_theirs = ours, theirs
    if args.compile:
        run_ours = torch.compile(ours, mode=args.compile_mode)
        run_theirs = None if theirs is None else torch.compile(theirs, mode=args.compile_mode)
    fns = step_fns(run_ours, run_theirs, inp)
    # step_fns set scales on the module the closures see; compiled wrappers share the modules' state
    if args.compile:
        compile_s = {}
        with torch.inference_mode():
            for n, f in fns.items():
                _, w, _ = timed(f, device)
                compile_s[n] = w
        result["compile_seconds_first_call"] = compile_s

    # equivalence: same weights -> same eps
    with torch.inference_mode():
        e_ours = fns["ours"]().float()
        if theirs is not None:
            e_theirs = fns["diffusers"]().float()
            e_theirs = torch.cat([e_theirs[1:], e_theirs[:1]])  # back to cond-first
            result["max_abs_diff_ours_vs_diffusers"] = float((e_ours - e_theirs).abs().max())
            result["max_abs_eps"] = float(e_ours.abs().max())
            e_off = fns["ours_scale0"]().float()
            e_toff = fns["diffusers_fuser_off"]().float()
            result["max_abs_diff_gates_off"] = float((e_off - torch.cat([e_toff[1:], e_toff[:1]])).abs().max())
            result["max_abs_diff_ours_gates_on_vs_off"] = float((e_ours - e_off).abs().max())  # grounding matters
        result["max_abs_diff_tokens_once"] = float((fns["ours_tokens_once"]().float() - e_ours).abs().max())

    print(f"[bench] device={device} dtype={args.dtype} res={args.resolution} latent={latent} "
          f"threads={torch.get_num_threads()} compile={args.compile} channels_last={args.channels_last} "
          f"small_conv_max_pixels={result['env']['small_conv_max_pixels']}", flush=True)
    result["steps"] = bench_steps(fns, device, args.repeats, args.warmup)
    result["loadavg_after_steps"] = loadavg()

    # memory
    mem = {}
    names = [n for n in ("ours", "ours_scale0", "diffusers") if n in fns]
    with torch.inference_mode():
        for n in names:
            if device.type == "cuda":
                mem[n] = cuda_peak_bytes(fns[n], device)
            elif not args.compile:  # the profiler does not see the allocations of compiled CPU code
                mem[n] = dict(profiler_peak_tensor_bytes=profiler_peak_bytes(fns[n]))
    if device.type == "cpu" and args.memory == "subprocess" and not args.compile:
        for n in names:
            mem[n].update(subprocess_memory(args, n))
    result["memory"] = mem

    # end to end
    e2e = {}
    if args.steps:
        runs = [("ours_grounding_all_steps", lambda: e2e_ours(run_ours, inp, args.steps, [1, 0, 0], args.guidance, device, args.seed))]
        if theirs is not None:
            runs.append(("diffusers_grounding_all_steps", lambda: e2e_theirs(run_theirs, inp, args.steps, 1.0, args.guidance, device)))
        runs.append(("ours_scheduled_0.3", lambda: e2e_ours(run_ours, inp, args.steps, [0.3, 0, 0.7], args.guidance, device, args.seed)))
        if theirs is not None:
            runs.append(("diffusers_scheduled_0.3", lambda: e2e_theirs(run_theirs, inp, args.steps, 0.3, args.guidance, device)))
        if args.compile:  # compile / recompile (new input structure, gates-off graph) outside the timings
            print("[bench] e2e compile warm-up ...", flush=True)
            e2e_ours(run_ours, inp, 2, [0.5, 0, 0.5], args.guidance, device, args.seed)
            if theirs is not None:
                e2e_theirs(run_theirs, inp, 2, 0.5, args.guidance, device)
        for n, f in runs:
            print(f"[bench] e2e {n} ...", flush=True)
            e2e[n] = f()
            e2e[n]["loadavg_after"] = loadavg()
    result["e2e"] = e2e
    result["total_seconds"] = time.perf_counter() - t0

    # ratios
    st = result["steps"]
    ratios = {}
    if "diffusers" in st:
        ratios["step_ours_over_diffusers"] = st["ours"]["ms_median"] / st["diffusers"]["ms_median"]
        ratios["step_ours_tokens_once_over_diffusers"] = st["ours_tokens_once"]["ms_median"] / st["diffusers"]["ms_median"]
        m_o, m_t = mem.get("ours", {}), mem.get("diffusers", {})
        for key in ("profiler_peak_tensor_bytes", "peak_rss_bytes", "above_build_bytes", "peak_allocated", "above_weights"):
            if key in m_o and key in m_t and m_t[key]:
                ratios[f"memory_{key}_ours_over_diffusers"] = m_o[key] / m_t[key]
    ratios["step_scale0_over_ours"] = st["ours_scale0"]["ms_median"] / st["ours"]["ms_median"]
    if e2e:
        ratios["e2e_scheduled_over_all_steps_ours"] = e2e["ours_scheduled_0.3"]["seconds"] / e2e["ours_grounding_all_steps"]["seconds"]
        if "diffusers_grounding_all_steps" in e2e:
            ratios["e2e_all_steps_ours_over_diffusers"] = e2e["ours_grounding_all_steps"]["seconds"] / e2e["diffusers_grounding_all_steps"]["seconds"]
            ratios["e2e_scheduled_ours_over_diffusers"] = e2e["ours_scheduled_0.3"]["seconds"] / e2e["diffusers_scheduled_0.3"]["seconds"]
    result["ratios"] = ratios
    result["loadavg_end"] = loadavg()

    print_table(result)
    out = args.json or os.path.join(ROOT, "bench", "results", "{}_{}_{}{}{}{}.json".format(
        device.type, args.dtype, args.resolution, "_compile" if args.compile else "",
        "_cl" if args.channels_last else "", "_tunedmalloc" if result["env"]["malloc_env"] else ""))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"[bench] wrote {out}")
    return 0


def print_table(r):
    st, mem, e2e = r["steps"], r["memory"], r["e2e"]
    print()
    print(f"{'variant':24s} {'ms/step':>9s} {'cpu ms':>9s} {'faults':>8s} {'tensor peak MiB':>16s} "
          f"{'peak RSS MiB':>13s} {'RSS above model MiB':>20s}")
    for n, s in st.items():
        m = mem.get(n, {})
        print(f"{n:24s} {s['ms_median']:9.1f} {s['cpu_ms_median']:9.1f} {s['minor_faults_median']:8.0f} "
              f"{fmt_mb(m.get('profiler_peak_tensor_bytes', m.get('peak_allocated'))):>16s} "
              f"{fmt_mb(m.get('peak_rss_bytes')):>13s} {fmt_mb(m.get('above_build_bytes', m.get('above_weights'))):>20s}")
    if e2e:
        print()
        print(f"{'end-to-end (UNet loop)':32s} {'seconds':>9s} {'UNet calls':>11s}")
        for n, e in e2e.items():
            print(f"{n:32s} {e['seconds']:9.1f} {e['unet_calls']:11d}")
    print()
    for k, v in r["ratios"].items():
        print(f"{k:52s} {v:.3f}")
    for k in ("max_abs_diff_ours_vs_diffusers", "max_abs_diff_gates_off", "max_abs_diff_tokens_once"):
        if k in r:
            print(f"{k:52s} {r[k]:.3e}")


if __name__ == "__main__":
    sys.exit(main())
