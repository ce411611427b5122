#!/usr/bin/env python
"""Half-precision sampling sanity: the full-size box+text UNet (random weights, as bench_unet.py)
sampled in fp32, bf16 and fp16 from the same noise; every result must be finite and close to fp32.

Each run: 20 DPM-Solver++(2M) steps and 20 PLMS steps at ``--resolution`` with classifier-free
guidance 7.5 (batch 1 x 2 branches), 30 grounding tokens, the default scheduled sampling (gates on for
the first 30 % of the steps). Reports ``||x_half - x_fp32|| / ||x_fp32||`` per sampler and dtype and
fails (exit 1) if a result is not finite or the relative distance exceeds ``--max-rel`` (0.1 bf16,
0.05 fp16 by default). Writes JSON (``--json``).

    python bench/gpu_sanity.py --device cuda --resolution 512
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

import bench_unet  # noqa: E402
from ldm.devices import DTYPES  # noqa: E402


def sample(model, diffusion, sampler: str, steps: int, noise, inp, uc, guidance):
    """One guided run from ``noise`` with the default gate schedule; returns the float32 latent."""
    from ldm.models.diffusion.sampling import alpha_generator
    from ldm.models.diffusion.solvers import solve

    gates = alpha_generator(steps, [0.3, 0.0, 0.7])
    try:  # the denoiser of the functional samplers, where present
        from ldm.models.diffusion.denoiser import GroundedDenoiser

        denoise = GroundedDenoiser(model, inp["context"], inp["grounding_input"], uc, guidance)
    except ImportError:
        from ldm.models.diffusion.solvers import unet_denoiser

        denoise = unet_denoiser(model, inp, uc=uc, guidance_scale=guidance)
    if sampler == "plms":
        from ldm.models.diffusion.sampling import make_schedule

        try:  # functional PLMS (after the samplers-as-functions refactor)
            from ldm.models.diffusion.sampling import plms

            return plms(denoise, noise.clone(), make_schedule(diffusion.alphas_cumprod, steps), gates).float()
        except ImportError:
            from functools import partial

            from ldm.models.diffusion.plms import PLMSSampler
            from ldm.models.diffusion.sampling import set_alpha_scale

            s = PLMSSampler(diffusion, model, progress=False, set_alpha_scale=set_alpha_scale,
                            alpha_generator_func=partial(alpha_generator, type=[0.3, 0.0, 0.7]))
            return s.sample(S=steps, shape=tuple(noise.shape), input=dict(inp, x=noise.clone(), timesteps=None),
                            uc=uc, guidance_scale=guidance).float()
    return solve(sampler, denoise, noise.clone(), diffusion.alphas_cumprod, steps, gates=gates).float()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--preset", choices=("full", "tiny"), default="full")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtypes", default="bf16,fp16")
    p.add_argument("--samplers", default="dpmpp_2m,plms")
    p.add_argument("--max-rel", default="bf16=0.1,fp16=0.05")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    from ldm.models.diffusion.ldm import LatentDiffusion

    latent = args.resolution // 8 if args.preset == "full" else 8
    diffusion = LatentDiffusion(linear_start=0.00085, linear_end=0.012).to(device)
    base = bench_unet.build_ours(args.preset, 0)
    limits = dict(kv.split("=") for kv in args.max_rel.split(","))
    inp32 = bench_unet.make_inputs(args.preset, latent, device, torch.float32, 0)
    noise = inp32["x1"].float()
    g1 = base.grounding_tokenizer_input.prepare(  # the adapter's kwargs (and its null input for CFG)
        dict(boxes=inp32["boxes1"], masks=inp32["masks1"], text_embeddings=inp32["phrase1"]))
    cond = dict(context=inp32["c"], grounding_input=g1, inpainting_extra_input=None, grounding_extra_input=None)
    results, ok = {}, True
    ref = {}
    for dt in ["fp32"] + [d for d in args.dtypes.split(",") if d]:
        model = base.to(device, DTYPES[dt])  # (in place: fp32 first, then each half dtype)
        for sampler in args.samplers.split(","):
            t0 = time.perf_counter()
            with torch.inference_mode():
                x = sample(model, diffusion, sampler, args.steps, noise, cond, inp32["uc"], 7.5)
            if device.type == "cuda":
                torch.cuda.synchronize()
            finite = bool(torch.isfinite(x).all())
            row = dict(finite=finite, seconds=time.perf_counter() - t0)
            if dt == "fp32":
                ref[sampler] = x
            else:
                rel = float((x - ref[sampler]).norm() / ref[sampler].norm())
                row["rel_to_fp32"] = rel
                row["ok"] = finite and rel <= float(limits.get(dt, 0.1))
                ok &= row["ok"]
            ok &= finite
            results[f"{sampler}/{dt}"] = row
            print(f"{sampler:10s} {dt:5s} finite={finite} "
                  + (f"rel_to_fp32={row['rel_to_fp32']:.4f} {'ok' if row['ok'] else 'FAIL'}" if dt != "fp32" else "")
                  + f" ({row['seconds']:.1f} s)", flush=True)
    out = dict(device=str(device), resolution=args.resolution, steps=args.steps, results=results, ok=ok)
    path = args.json or os.path.join(ROOT, "bench", "results", f"sanity_{device.type}_{args.resolution}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"half-precision sampling sanity: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
