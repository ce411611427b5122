"""The original's ``PLMSSampler`` API over :func:`ldm.models.diffusion.sampling.plms`."""
from __future__ import annotations

from .legacy import LegacySampler
from .sampling import plms, plms_combine


class PLMSSampler(LegacySampler):
    """``PLMSSampler(diffusion, model, alpha_generator_func=..., set_alpha_scale=...)``;
    ``.sample(S, shape, input, uc, guidance_scale, mask, x0)`` -> latent (B, C, H, W).
    Pseudo linear multi-step sampling (Liu et al. 2022); see :class:`~.legacy.LegacySampler`."""

    name = "PLMS Sampler"
    function = staticmethod(plms)
    combine = staticmethod(plms_combine)

    def make_schedule(self, ddim_num_steps: int, ddim_eta: float = 0.0):
        if ddim_eta != 0:
            raise ValueError("ddim_eta must be 0 for PLMS")
        return super().make_schedule(ddim_num_steps, ddim_eta)
