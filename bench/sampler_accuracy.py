"""Accuracy per step of every sampler: distance of its result to a 500-step DDIM result from the same noise.

The denoiser is the tiny box+text GLIGEN of ``configs/tiny_text_box.yaml`` trained by the project's
training demo for more iterations (a meaningful, smooth eps-predictor; random weights would make
every sampler look alike). The whole inference path runs: ``ldm.inference.pipeline.Runner.generate``
with classifier-free guidance 7.5, batched CFG, the layout's grounding, the same starting noise for
every run, the sampler's own time grid.

Reproduce (CPU, ~10 minutes in all)::

    python DATA/make_tiny_demo.py --root .cache/sampler_study
    python main.py --yaml_file configs/tiny_text_box.yaml --DATA_ROOT .cache/sampler_study \\
        --OUTPUT_ROOT .cache/sampler_study/OUTPUT --name study --official_ckpt_name tiny_sd.ckpt --device cpu \\
        --batch_size 8 --workers 0 --warmup_steps 20 --base_learning_rate 3e-3 --total_iters 2000 \\
        --save_every_iters 500 --disable_inference_in_training True --seed 0
    python bench/sampler_accuracy.py --root .cache/sampler_study

Metric: ``||x - x_ref|| / ||x_ref||`` over the final latents (mean over the batch of noises), for
scheduled sampling with the gates on at every step (``alpha_type [1, 0, 0]``: the plain ODE) and the
default schedule (``[0.3, 0, 0.7]``). Writes a JSON with every figure and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

STEPS = {
    "plms": [10, 15, 20, 25, 30, 40, 50],
    "ddim": [20, 50, 100, 250],
    "dpmpp_2m": [5, 8, 10, 12, 15, 20, 25, 30],
    "dpmpp_2m_karras": [5, 8, 10, 12, 15, 20, 25, 30],
    "unipc": [5, 8, 10, 12, 15, 20, 25, 30],
    "euler": [10, 20, 30, 50, 100],
}
ALPHA_TYPES = {"gates_on": [1.0, 0.0, 0.0], "scheduled": [0.3, 0.0, 0.7]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=".cache/sampler_study", help="DATA_ROOT of the study (tiny CLIP, layout, OUTPUT)")
    p.add_argument("--ckpt", default=None, help="default ROOT/OUTPUT/study/tag00/checkpoint_latest.pth")
    p.add_argument("--batch", type=int, default=8, help="noises per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-steps", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a few step counts only (smoke run)")
    p.add_argument("--json", default="bench/results/sampler_accuracy.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ldm.inference.layout import Generation
    from ldm.inference.pipeline import Runner, Settings

    ckpt = args.ckpt or os.path.join(args.root, "OUTPUT", "study", "tag00", "checkpoint_latest.pth")
    with open(os.path.join(args.root, "layout.json")) as f:
        entry = json.load(f)
    steps = {k: v[:2] + ([50] if k == "plms" else []) for k, v in STEPS.items()} if args.quick else STEPS

    def settings(sampler, n):
        return Settings(sampler=sampler, steps=n, batch_size=args.batch, device="cpu", ckpt=ckpt,
                        clip=os.path.join(args.root, "tiny_clip"), progress=False, seed=args.seed)

    runner = Runner(settings("ddim", 1))  # one runner: the checkpoint and CLIP load once

    def run(sampler, n, alpha_type, noise):
        runner.settings = settings(sampler, n)
        gen = Generation.from_dict({**entry, "alpha_type": alpha_type}, args.root, "xyxy")
        return runner.generate(gen, starting_noise=noise).latents.float()

    out = {"ckpt": ckpt, "batch": args.batch, "ref": f"ddim-{args.ref_steps}", "threads": args.threads,
           "torch": torch.__version__, "results": {}}
    g = torch.Generator().manual_seed(args.seed)
    for name, alpha_type in ALPHA_TYPES.items():
        t0 = time.perf_counter()
        models, _ = runner.load(ckpt)
        size = models.model.image_size
        noise = torch.randn(args.batch, models.model.in_channels, size, size, generator=g)
        ref = run("ddim", args.ref_steps, alpha_type, noise)
        norm = ref.flatten(1).norm(dim=1)
        rows = {}
        for sampler, counts in steps.items():
            for n in counts:
                x = run(sampler, n, alpha_type, noise)
                rows[f"{sampler}-{n}"] = float(((x - ref).flatten(1).norm(dim=1) / norm).mean())
        out["results"][name] = {"alpha_type": alpha_type, "rel_error": rows, "seconds": time.perf_counter() - t0}

    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(table(out))
    return out


def table(out: dict) -> str:
    """Markdown: per sampler, relative error at each step count, and the fewest steps at least as close as PLMS-50."""
    lines = []
    for name, res in out["results"].items():
        errs = res["rel_error"]
        target = errs.get("plms-50")
        lines.append(f"\n{name} (alpha_type {res['alpha_type']}), relative distance to {out['ref']}; "
                     f"PLMS-50 = {target:.4f}\n")
        lines.append("| sampler | steps: error | fewest steps <= PLMS-50 |")
        lines.append("|---|---|---:|")
        by = {}
        for key, v in errs.items():
            s, n = key.rsplit("-", 1)
            by.setdefault(s, []).append((int(n), v))
        for s, pts in by.items():
            ok = [n for n, v in sorted(pts) if target is not None and v <= target]
            cells = ", ".join(f"{n}: {v:.4f}" for n, v in sorted(pts))
            lines.append(f"| {s} | {cells} | {ok[0] if ok else '> ' + str(max(n for n, _ in pts))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
