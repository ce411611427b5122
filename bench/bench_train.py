#!/usr/bin/env python
"""One GLIGEN training iteration: our UNet against diffusers' gated UNet, same trainable set, same process.

Builds the full-size box+text GLIGEN UNet (``configs/flickr_text.yaml``, random weights, as
``bench_unet.py``) and diffusers' ``UNet2DConditionModel(attention_type="gated")`` holding the same
weights (the frozen SD weights are *shared* between the two models, so the process needs one copy of
them; each model has its own trainable tensors, gradients and optimizer). Trainable: the gated
self-attention layers and the ``position_net`` (ours: ``ldm.training.state.is_trainable_name``,
diffusers: ``*.fuser.*`` and ``position_net.*``), everything else ``requires_grad=False``.

One iteration = noise + timesteps draw, ``q_sample``, forward (batch ``--batch`` x 30 grounding
tokens, 77 text tokens), epsilon MSE, backward, AdamW step, ``zero_grad(set_to_none=True)``.
Variants: ``{ours, diffusers} x {fp32, bf16 autocast} x {no checkpointing, gradient checkpointing}``
(ours: ``use_checkpoint`` of the ResBlocks / transformer blocks; diffusers:
``enable_gradient_checkpointing()``). Optimizer: ours ``AdamW(fused=True)`` where the device
supports it (``--ours-optimizer``), diffusers ``AdamW()`` (torch's default, foreach), as its training
scripts. Timing: median of ``--repeats`` iterations after ``--warmup``, every variant once per round
in a rotating order. Memory: (a) bytes saved for backward at the end of the forward (unique
storages reached through ``saved_tensors_hooks``, parameters excluded): the activation footprint;
(b) peak live tensor bytes during a whole iteration above what was live before it (CPU: profiler
allocation events; CUDA: ``max_memory_allocated``). Prints a table, writes JSON.

    python bench/bench_train.py --device cpu --resolution 128            # ~10 min on 2 cores
    python bench/bench_train.py --device cuda --resolution 512 --batch 2
    python bench/bench_train.py --preset tiny --repeats 1 --warmup 1     # smoke run, seconds
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bench_unet  # noqa: E402
from ldm.devices import DTYPES  # noqa: E402


# ----------------------------------------------------------------------------------- models
def trainable_ours(name: str) -> bool:
    from ldm.training.state import is_trainable_name

    return is_trainable_name(name, False)


def trainable_theirs(name: str) -> bool:
    return ".fuser." in name or name.startswith("position_net.")


def build_pair(preset: str, latent: int, device, seed: int = 0):
    """(ours, theirs): same weights; frozen tensors shared, trainable ones separate."""
    ours = bench_unet.build_ours(preset, seed)
    with torch.device("meta"):
        theirs = bench_unet.build_theirs(preset, latent)
    renamed = bench_unet.ours_to_diffusers_state(ours.state_dict(), len(ours.channel_mult), ours.num_res_blocks)
    renamed = {k: (v.clone() if trainable_theirs(k) else v) for k, v in renamed.items()}
    theirs.load_state_dict(renamed, strict=True, assign=True)
    for m, rule in ((ours, trainable_ours), (theirs, trainable_theirs)):
        for n, p in m.named_parameters():
            p.requires_grad_(rule(n))
        m.to(device).train()
    return ours, theirs


def set_checkpointing(ours, theirs, enabled: bool) -> None:
    from ldm.modules.attention import BasicTransformerBlock
    from ldm.modules.diffusionmodules.openaimodel import ResBlock

    for m in ours.modules():
        if isinstance(m, (ResBlock, BasicTransformerBlock)):
            m.use_checkpoint = enabled
    if enabled:
        theirs.enable_gradient_checkpointing()
    else:
        theirs.disable_gradient_checkpointing()


def n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_optimizer(model, kind: str, device):
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(lr=5e-5, weight_decay=0.0)
    if kind == "fused":
        return torch.optim.AdamW(params, fused=True, **kw)
    if kind == "foreach":
        return torch.optim.AdamW(params, foreach=True, **kw)
    return torch.optim.AdamW(params, foreach=False, **kw)


# ----------------------------------------------------------------------------------- one iteration
class Iteration:
    """A zero-argument callable running one training iteration of one model."""

    def __init__(self, which: str, model, opt, inp: dict, alphas_cumprod, device, dtype):
        self.which, self.model, self.opt, self.inp = which, model, opt, inp
        self.ac, self.device, self.dtype = alphas_cumprod, device, dtype

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.dtype)

    def forward_loss(self):
        inp = self.inp
        x0 = inp["x0"]
        noise = torch.randn_like(x0)
        t = torch.randint(0, len(self.ac), (x0.shape[0],), device=x0.device)
        a = self.ac[t].view(-1, 1, 1, 1)
        x = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with self.autocast():
            if self.which == "ours":
                out = self.model(dict(x=x, timesteps=t, context=inp["context"], grounding_input=inp["grounding"]))
            else:
                out = self.model(x, t, encoder_hidden_states=inp["context"],
                                 cross_attention_kwargs={"gligen": dict(inp["grounding_theirs"])}).sample
        return F.mse_loss(out.float(), noise)

    def __call__(self):
        loss = self.forward_loss()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


def make_train_inputs(preset: str, latent: int, batch: int, device, seed: int) -> dict:
    base = bench_unet.make_inputs(preset, latent, device, torch.float32, seed)
    g = base["grounding"]
    rep = lambda t: t[:1].expand(batch, *t.shape[1:]).contiguous()  # noqa: E731  (grounded rows)
    grounding = {k: rep(v) for k, v in g.items()}
    return dict(
        x0=torch.randn(batch, 4, latent, latent, generator=torch.Generator().manual_seed(seed)).to(device),
        context=rep(base["context"]),
        grounding=grounding,
        grounding_theirs=dict(grounding),
    )


# ----------------------------------------------------------------------------------- memory
def saved_activation_bytes(it: Iteration) -> int:
    """Bytes of the unique storages saved for backward by one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in it.model.parameters()}
    seen = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            ptr = s.data_ptr()
            if ptr not in params:
                seen[ptr] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. nested / fake)
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = it.forward_loss()
    del loss
    it.opt.zero_grad(set_to_none=True)
    return sum(seen.values())


def peak_iteration_bytes(it: Iteration, device) -> int:
    if torch.device(device).type == "cuda":
        gc.collect()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        it()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    return bench_unet.profiler_peak_bytes(it)


# ----------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("full", "tiny"), default="full")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolution", type=int, default=None, help="image side (latent = /8); default 128 CPU, 512 GPU")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16, fp16 (autocast)")
    p.add_argument("--checkpointing", default="off,on", help="comma list of off, on")
    p.add_argument("--models", default="ours,diffusers")
    p.add_argument("--ours-optimizer", choices=("fused", "foreach", "for"), default="fused")
    p.add_argument("--theirs-optimizer", choices=("fused", "foreach", "for"), default="foreach")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--memory", choices=("all", "saved", "none"), default="all")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer-only", action="store_true",
                   help="time AdamW steps (fused / foreach / for-loop) on our trainable set with random gradients")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def optimizer_only(args, device) -> dict:
    """Median ms of one ``AdamW.step()`` per implementation over our trainable parameters, interleaved."""
    ours = bench_unet.build_ours(args.preset, args.seed, init=False)
    params = [p.detach().to(device).requires_grad_() for n, p in ours.named_parameters() if trainable_ours(n)]
    del ours
    for p in params:
        p.grad = torch.randn_like(p)
    opts = {k: torch.optim.AdamW(params, lr=5e-5, fused=k == "fused", foreach=k == "foreach")
            for k in ("fused", "foreach", "for")}
    times = {k: [] for k in opts}
    for o in opts.values():
        o.step()  # states allocated
    names = list(opts)
    for r in range(args.repeats):
        for k in names[r % 3:] + names[:r % 3]:
            _, w, _ = bench_unet.timed(opts[k].step, device)
            times[k].append(w * 1000)
    res = dict(params=sum(p.numel() for p in params), ms={k: statistics.median(v) for k, v in times.items()},
               samples={k: [round(x, 1) for x in v] for k, v in times.items()})
    res["fused_over_foreach"] = res["ms"]["fused"] / res["ms"]["foreach"]
    print(json.dumps(res, indent=1))
    return res


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.optimizer_only:
        r = optimizer_only(args, device)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(r, f, indent=1)
        return r
    res = args.resolution or (128 if device.type == "cpu" else 512)
    latent = res // 8 if args.preset == "full" else 8
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    ours, theirs = build_pair(args.preset, latent, device, args.seed)
    from ldm.models.diffusion.ldm import LatentDiffusion

    ac = LatentDiffusion(linear_start=0.00085, linear_end=0.012).alphas_cumprod.to(device)
    inp = make_train_inputs(args.preset, latent, args.batch, device, args.seed)
    models = {"ours": ours, "diffusers": theirs}
    opts = {"ours": make_optimizer(ours, args.ours_optimizer, device),
            "diffusers": make_optimizer(theirs, args.theirs_optimizer, device)}
    which = [m for m in args.models.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    ckpts = [c for c in args.checkpointing.split(",") if c]

    # same function: forward outputs of the two models (eval mode: no grounding dropout)
    with torch.no_grad():
        ours.eval(), theirs.eval()
        t = torch.full((args.batch,), 500, device=device)
        e1 = ours(dict(x=inp["x0"], timesteps=t, context=inp["context"], grounding_input=inp["grounding"]))
        e2 = theirs(inp["x0"], t, encoder_hidden_states=inp["context"],
                    cross_attention_kwargs={"gligen": dict(inp["grounding_theirs"])}).sample
        max_diff = float((e1 - e2).abs().max())
        ours.train(), theirs.train()

    result = dict(
        preset=args.preset, device=str(device), resolution=res, latent=latent, batch=args.batch,
        trainable_params={"ours": n_trainable(ours), "diffusers": n_trainable(theirs)},
        optimizers={"ours": args.ours_optimizer, "diffusers": args.theirs_optimizer},
        max_abs_diff_forward=max_diff, env=dict(python=platform.python_version(), torch=torch.__version__,
                                                threads=torch.get_num_threads(), cpu=platform.processor(),
                                                loadavg_start=bench_unet.loadavg()),
        iterations={}, memory={}, ratios={},
    )
    print(f"trainable: ours {result['trainable_params']['ours'] / 1e6:.1f} M, diffusers "
          f"{result['trainable_params']['diffusers'] / 1e6:.1f} M; forward max |diff| {max_diff:.2e}", flush=True)

    for ck in ckpts:
        set_checkpointing(ours, theirs, ck == "on")
        fns = {}
        for dt in dtypes:
            for m in which:
                fns[f"{m}/{dt}/ckpt_{ck}"] = Iteration(m, models[m], opts[m], inp, ac, device, DTYPES[dt])
        names = list(fns)
        for _ in range(args.warmup):
            for n in names:
                fns[n]()
        wall = {n: [] for n in names}
        cpu = {n: [] for n in names}
        for r in range(args.repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:
                _, w, c = bench_unet.timed(fns[n], device)
                wall[n].append(w * 1000)
                cpu[n].append(c * 1000)
                print(f"  {n}: {w * 1000:.0f} ms", flush=True)
        for n in names:
            result["iterations"][n] = dict(ms_median=statistics.median(wall[n]), ms=[round(v, 1) for v in wall[n]],
                                           cpu_ms_median=statistics.median(cpu[n]))
            if args.memory != "none":
                mem = dict(saved_bytes=saved_activation_bytes(fns[n]))
                if args.memory == "all":
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        mem["peak_iteration_bytes"] = peak_iteration_bytes(fns[n], device)
                result["memory"][n] = mem
        gc.collect()

    for n in result["iterations"]:
        if n.startswith("ours/"):
            other = "diffusers/" + n.split("/", 1)[1]
            if other in result["iterations"]:
                key = n.split("/", 1)[1]
                result["ratios"][f"time_{key}"] = result["iterations"][n]["ms_median"] / result["iterations"][other]["ms_median"]
                result["ratios"][f"cpu_time_{key}"] = (result["iterations"][n]["cpu_ms_median"]
                                                       / result["iterations"][other]["cpu_ms_median"])
                for k in ("saved_bytes", "peak_iteration_bytes"):
                    a, b = result["memory"].get(n, {}).get(k), result["memory"].get(other, {}).get(k)
                    if a and b:
                        result["ratios"][f"{k}_{key}"] = a / b
    result["env"]["loadavg_end"] = bench_unet.loadavg()
    path = args.json or os.path.join(ROOT, "bench", "results",
                                     f"train_{device.type}_{res}_{args.preset}_{'-'.join(dtypes)}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print_table(result)
    print(f"wrote {path}")
    return result


def print_table(r: dict) -> None:
    print(f"\n{r['preset']} {r['device']} {r['resolution']}x{r['resolution']} batch {r['batch']}")
    print(f"{'variant':32s} {'ms (median)':>12s} {'cpu ms':>10s} {'saved MiB':>10s} {'peak MiB':>10s}")
    for n, v in r["iterations"].items():
        m = r["memory"].get(n, {})
        sv = m.get("saved_bytes")
        pk = m.get("peak_iteration_bytes")
        print(f"{n:32s} {v['ms_median']:12.0f} {v['cpu_ms_median']:10.0f} "
              f"{(sv or 0) / 2 ** 20:10.1f} {(pk or 0) / 2 ** 20:10.1f}")
    for k, v in r["ratios"].items():
        print(f"ours/diffusers {k}: {v:.3f}")


if __name__ == "__main__":
    main()
