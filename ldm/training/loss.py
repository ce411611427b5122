"""The training objective of GLIGEN (Li et al., CVPR 2023, eq. 2): the ε-prediction MSE of the
latent diffusion model, with the frozen UNet and the grounding tokens of the batch.

RNG order of one step (what exact resumption relies on): the VAE posterior sample (torch CPU),
then the timesteps, then the noise, then (inside the UNet) Python ``random`` for grounding dropout.
Mixed precision: run under ``fabric.autocast()``; the encoders' outputs are cast back to float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .build import Models

__all__ = ["get_input", "loss"]


@torch.no_grad()
def get_input(models: Models, batch: dict, timesteps: torch.Tensor | None = None):
    """batch -> ``(x_start (B,4,h,w), t (B,), context (B,77,D), inpainting_extra_input (B,5,h,w) | None,
    grounding_extra_input | None)``. ``timesteps`` overrides the uniform draw."""
    x_start = models.autoencoder.encode(batch["image"]).float()
    context = models.text_encoder.encode(list(batch["caption"])).float()
    if timesteps is None:
        t = models.diffusion.sample_timesteps(x_start.shape[0], device=x_start.device)
    else:
        t = timesteps.to(x_start.device)
    inpainting_extra_input = None
    if models.inpaint_mode:
        from inpaint_mask_func import draw_masks_from_boxes

        mask = draw_masks_from_boxes(batch["boxes"], x_start.shape[-1], randomize_fg_mask=models.randomize_fg_mask,
                                     random_add_bg_mask=models.random_add_bg_mask).to(x_start)
        inpainting_extra_input = torch.cat([x_start * mask, mask], dim=1)
    grounding_extra_input = None
    if models.grounding_downsampler_input is not None:
        grounding_extra_input = models.grounding_downsampler_input.prepare(batch)
    return x_start, t, context, inpainting_extra_input, grounding_extra_input


def loss(models: Models, batch: dict, unet=None, timesteps: torch.Tensor | None = None,
         noise: torch.Tensor | None = None) -> dict:
    """``{"loss": scalar tensor with grad}`` for one batch.

    ``unet``: the module to call (e.g. Fabric's DDP wrapper of ``models.unet``; default
    ``models.unet``). ``timesteps`` / ``noise`` override the random draws (tests)."""
    x_start, t, context, inpainting_extra_input, grounding_extra_input = get_input(models, batch, timesteps)
    noise = torch.randn_like(x_start) if noise is None else noise.to(x_start)
    x_noisy = models.diffusion.q_sample(x_start=x_start, t=t, noise=noise)
    grounding_input = models.grounding_tokenizer_input.prepare(batch)
    inputs = dict(x=x_noisy, timesteps=t, context=context, inpainting_extra_input=inpainting_extra_input,
                  grounding_extra_input=grounding_extra_input, grounding_input=grounding_input)
    prediction = (unet if unet is not None else models.unet)(inputs)
    return {"loss": F.mse_loss(prediction.float(), noise)}
