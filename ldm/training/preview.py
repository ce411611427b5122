"""Training previews: PLMS samples (guidance 5, as the original's ``save_ckpt_and_result``) of a
fixed batch, written with the real images (boxes drawn) and the captions into the run folder."""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch.utils.data._utils.collate import default_collate

from .data import batch_to_device, sample_seed

__all__ = ["ImageCaptionSaver", "check_preview_steps", "fixed_preview_batch", "real_images", "plms_sample",
           "save_preview"]

PREVIEW_GUIDANCE = 5


class ImageCaptionSaver:
    """Writes preview grids and ``captions.txt`` into the run folder (the original's class).

    ``__call__(images (B,3,H,W) in [-1,1], real (B,3,H,W) in [0,1], masked_real | None, captions, seen)``
    writes ``{seen:08d}.png``, ``{seen:08d}_real.png`` (+ ``_mased_real.png``) and appends the captions."""

    def __init__(self, base_path: str, nrow: int = 8, normalize: bool = True, scale_each: bool = True,
                 range=(-1, 1)):
        self.base_path = base_path
        self.nrow, self.normalize, self.scale_each, self.range = nrow, normalize, scale_each, range

    def __call__(self, images, real, masked_real, captions, seen):
        import torchvision

        torchvision.utils.save_image(images, os.path.join(self.base_path, f"{seen:08d}.png"), nrow=self.nrow,
                                     normalize=self.normalize, scale_each=self.scale_each, value_range=self.range)
        torchvision.utils.save_image(real, os.path.join(self.base_path, f"{seen:08d}_real.png"), nrow=self.nrow)
        if masked_real is not None:  # the original's file name, typo included
            torchvision.utils.save_image(masked_real, os.path.join(self.base_path, f"{seen:08d}_mased_real.png"),
                                         nrow=self.nrow, normalize=self.normalize, scale_each=self.scale_each,
                                         value_range=self.range)
        assert images.shape[0] == len(captions)
        with open(os.path.join(self.base_path, "captions.txt"), "a", encoding="utf-8") as f:
            f.write(f"{seen:08d}:\n")
            for cap in captions:
                f.write(cap + "\n")
            f.write("\n")


def check_preview_steps(steps: int, num_timesteps: int = 1000) -> None:
    """Raise ``ValueError`` (naming ``--preview_steps``) if PLMS cannot use ``steps`` of ``num_timesteps``."""
    from ldm.models.diffusion.sampling import make_ddim_timesteps

    try:
        make_ddim_timesteps(steps, num_timesteps)
    except ValueError as e:
        raise ValueError(f"--preview_steps: {e}") from e


def fixed_preview_batch(samples, seed: int, batch_size: int) -> dict:
    """The first ``batch_size`` samples of ``samples`` (a ``SeededSamples``, cycled if shorter) with
    augmentation seeds fixed by ``seed`` (epoch slot ``2**32 - 1``, never a training epoch), collated."""
    n = len(samples)
    return default_collate([samples[(i % n, sample_seed(seed, -1 % 2 ** 32, i))] for i in range(batch_size)])


def real_images(batch: dict, dataset) -> torch.Tensor:
    """(B,3,H,W) in [0,1] on CPU: the batch images, with boxes drawn when ``dataset`` can
    (``vis_getitem_data``, box datasets)."""
    image = batch["image"]
    if "boxes" in batch and dataset is not None and hasattr(dataset, "vis_getitem_data"):
        return torch.stack([dataset.vis_getitem_data(out={"image": image[i].cpu(), "boxes": batch["boxes"][i].cpu()},
                                                     return_tensor=True, print_caption=False)
                            for i in range(image.shape[0])])
    return (image.cpu().float() * 0.5 + 0.5).clamp(0, 1)


def plms_sample(diffusion, unet, input: dict, uc: torch.Tensor, shape, steps: int) -> torch.Tensor:
    """The one place training calls a sampler: PLMS over :class:`GroundedDenoiser`, ``steps`` steps,
    guidance 5, gates on throughout -> latent (B,C,h,w). ``input``: ``context``, ``grounding_input``,
    ``inpainting_extra_input``, ``grounding_extra_input``. The UNet is not modified."""
    from ldm.models.diffusion.denoiser import GroundedDenoiser
    from ldm.models.diffusion.sampling import make_schedule, plms

    denoise = GroundedDenoiser(unet, input["context"], input["grounding_input"], uc, PREVIEW_GUIDANCE,
                               inpainting_extra_input=input.get("inpainting_extra_input"),
                               grounding_extra_input=input.get("grounding_extra_input"))
    x = torch.randn(tuple(shape), device=diffusion.betas.device)
    return plms(denoise, x, make_schedule(diffusion.alphas_cumprod, steps))


@torch.no_grad()
def save_preview(models, batch: dict, saver: ImageCaptionSaver, iter_name: int, steps: int, device,
                 vis_dataset=None, autocast=contextlib.nullcontext) -> None:
    """PLMS samples of ``batch`` with ``models.unet`` in eval mode, written by ``saver`` as
    ``{iter_name:08d}.png`` with the real (and, inpainting, masked) images and the captions.

    ``models``: :class:`~ldm.training.build.Models`; ``vis_dataset`` draws the boxes on the real
    images when it can; ``autocast``: a context factory (``fabric.autocast``). Consumes RNG: wrap in
    :func:`~ldm.training.state.preserved_rng`."""
    from .loss import get_input

    batch = batch_to_device(dict(batch), device)
    image = batch["image"]
    B = image.shape[0]
    real = real_images(batch, vis_dataset)
    unet = models.unet
    was_training = unet.training
    unet.eval()
    try:
        with autocast():
            uc = models.text_encoder.encode([""] * B).float()
            x_start, _, context, inpainting_extra_input, grounding_extra_input = get_input(
                models, batch, timesteps=torch.zeros(B, dtype=torch.long))
            input = dict(context=context, inpainting_extra_input=inpainting_extra_input,
                         grounding_extra_input=grounding_extra_input,
                         grounding_input=models.grounding_tokenizer_input.prepare(batch))
            shape = (B, unet.in_channels, x_start.shape[-2], x_start.shape[-1])
            samples = plms_sample(models.diffusion, unet, input, uc, shape, steps)
            samples = models.autoencoder.decode(samples.to(x_start.dtype))
    finally:
        unet.train(was_training)
    samples = torch.clamp(samples.float().cpu(), min=-1, max=1)
    masked_real = None
    if models.inpaint_mode:
        mask = inpainting_extra_input[:, -1:].float().cpu()
        masked_real = image.float().cpu() * F.interpolate(mask, size=image.shape[-2:], mode="nearest")
    saver(samples, real, masked_real, list(batch["caption"]), iter_name)
