"""SD v1 KL autoencoder: images in [-1, 1] <-> scaled latents."""
from __future__ import annotations

import torch
from torch import nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder


class AutoencoderKL(nn.Module):
    """``encode``: (B, 3, R, R) -> (B, embed_dim, R/8, R/8) posterior *sample* x scale_factor;
    ``decode``: the inverse map to images (~[-1, 1])."""

    def __init__(self, ddconfig: dict, embed_dim: int, scale_factor: float = 1.0, **ignored):
        super().__init__()
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z = True")
        self.scale_factor = scale_factor
        self.embed_dim = embed_dim
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.downsample_factor = 2 ** (len(ddconfig["ch_mult"]) - 1)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the diagonal Gaussian posterior, unscaled."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """A posterior sample (noise from the CPU generator, as the original) times ``scale_factor``.

        The result is contiguous, as the original's: its layout decides which values a later
        ``randn_like(z)`` (inpainting's ``q_sample``, training noise) puts where.
        """
        mean, std = self.posterior(x)
        z = mean
        if sample:
            z = mean + std * torch.randn(mean.shape).to(device=mean.device, dtype=mean.dtype)
        return (z * self.scale_factor).contiguous()

    @torch.no_grad()
    def decode(self, z: torch.Tensor, slice_size: int | None = None) -> torch.Tensor:
        """Latents (B, embed_dim, r, r) -> images (B, 3, R, R).

        ``slice_size``: decode at most this many latents at a time (bounds peak memory for large
        batches; each image is decoded independently, so the result is the same up to float
        rounding). ``None`` (default) decodes the whole batch at once.
        """
        if slice_size is not None:
            if slice_size < 1:
                raise ValueError(f"slice_size must be a positive int or None, got {slice_size}")
            if z.shape[0] > slice_size:
                return torch.cat([self.decode(part) for part in z.split(slice_size)])
        return self.decoder(self.post_quant_conv(z / self.scale_factor))
