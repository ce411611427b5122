#!/usr/bin/env python
"""The golden fixtures (outputs of the original implementation) on another device, fp32.

For each fixture of ``--golden`` (default ``../shared/reference/golden``): the text encoder, the
grounding tokens, the UNet's eps with and without grounding, a PLMS run from the fixture's starting
noise (legacy ``PLMSSampler`` API, scheduled gates) and the VAE decode, all on ``--device`` in float32
with TF32 disabled, compared with the fixture's own tolerances. Prints one line per check and
``gpu parity: ok/n``; exit status 0 only if every check passes.

    python bench/gpu_parity.py --device cuda
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402


def close(got, ref, tol) -> tuple[bool, float]:
    err = (got.detach().float().cpu() - ref.float()).abs().max().item()
    return err <= tol["atol"] + tol["rtol"] * ref.abs().max().item(), err


def to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to(v, device) for k, v in x.items()}
    return x


@torch.no_grad()
def run_fixture(folder: str, device) -> list:
    from ldm.checkpoint import build_from_checkpoint
    from ldm.models.diffusion.plms import PLMSSampler
    from ldm.models.diffusion.sampling import alpha_generator, set_alpha_scale

    meta = json.load(open(os.path.join(folder, "fixture.json")))
    inputs = torch.load(os.path.join(folder, "inputs.pt"), weights_only=False)
    outputs = torch.load(os.path.join(folder, "outputs.pt"), weights_only=False)
    tol = meta["tolerances"]
    m = build_from_checkpoint(os.path.join(folder, "checkpoint.pth"))
    for part in (m.model, m.autoencoder, m.text_encoder, m.diffusion):
        part.to(device)
    sd_conv = os.path.join(folder, meta.get("sd_input_conv") or "sd_input_conv.pth")
    if os.path.isfile(sd_conv):
        m.model.sd_first_conv = to(torch.load(sd_conv, weights_only=True), device)
    rows = []
    context = m.text_encoder.encode(meta["prompts"])
    uc = m.text_encoder.encode([meta.get("negative_prompt") or ""] * meta["batch_size"])
    rows.append(("context", *close(context, outputs["context"], tol["context"])))
    gi = m.grounding_tokenizer_input.prepare(to(inputs["batch"], device))
    rows.append(("grounding_tokens", *close(m.model.position_net(**gi), outputs["grounding_tokens"],
                                            tol["grounding_tokens"])))
    base = dict(x=to(inputs["unet_x"], device), timesteps=to(inputs["unet_timesteps"], device),
                inpainting_extra_input=to(inputs.get("inpainting_extra_input"), device), grounding_extra_input=None)
    rows.append(("unet_eps", *close(m.model(dict(base, context=context, grounding_input=gi)), outputs["unet_eps"],
                                    tol["unet_eps"])))
    rows.append(("unet_eps_null", *close(m.model(dict(base, context=uc)), outputs["unet_eps_null_grounding"],
                                         tol["unet_eps_null_grounding"])))
    if not meta.get("inpaint"):
        sampler = PLMSSampler(m.diffusion, m.model, progress=False, set_alpha_scale=set_alpha_scale,
                              alpha_generator_func=functools.partial(alpha_generator, type=meta["alpha_type"]))
        x = to(inputs["starting_noise"], device).clone()
        inp = dict(x=x, timesteps=None, context=context, grounding_input=gi, inpainting_extra_input=None,
                   grounding_extra_input=None)
        lat = sampler.sample(S=meta["steps"], shape=tuple(x.shape), input=inp, uc=uc,
                             guidance_scale=meta["guidance_scale"])
        rows.append(("plms_latent", *close(lat, outputs["plms_latent"], tol["plms_latent"])))
    rows.append(("decoded_image", *close(m.autoencoder.decode(to(outputs["plms_latent"], device)),
                                         outputs["decoded_image"], tol["decoded_image"])))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--golden", default=os.path.join(ROOT, "..", "shared", "reference", "golden"))
    args = p.parse_args(argv)
    if not os.path.isdir(args.golden):
        print(f"gpu parity: golden fixtures not found at {args.golden} (skipped)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    golden = os.path.abspath(args.golden)
    ok = n = 0
    cwd = os.getcwd()
    for name in sorted(os.listdir(golden)):
        folder = os.path.join(golden, name)
        if not os.path.isfile(os.path.join(folder, "fixture.json")):
            continue
        os.chdir(golden)  # the fixtures name their text encoder relative to the golden folder
        try:
            for check, passed, err in run_fixture(folder, torch.device(args.device)):
                n += 1
                ok += passed
                print(f"{'PASS' if passed else 'FAIL'} {name}/{check}: max abs err {err:.2e}")
        finally:
            os.chdir(cwd)
    print(f"gpu parity: {ok}/{n} on {args.device}")
    return 0 if n and ok == n else 1


if __name__ == "__main__":
    sys.exit(main())
