"""The original's ``DDIMSampler`` API over :func:`ldm.models.diffusion.sampling.ddim`."""
from __future__ import annotations

from .legacy import LegacySampler
from .sampling import ddim


class DDIMSampler(LegacySampler):
    """``DDIMSampler(diffusion, model, alpha_generator_func=..., set_alpha_scale=...)``;
    ``.sample(S, shape, input, uc, guidance_scale, mask, x0)`` -> latent (B, C, H, W).
    Deterministic DDIM (Song et al. 2021; eta = 0, one ``randn_like`` per step is still drawn);
    see :class:`~.legacy.LegacySampler`."""

    name = "DDIM Sampler"
    function = staticmethod(ddim)
