"""The original's sampler classes, as a thin layer over :mod:`ldm.models.diffusion.sampling`.

``PLMSSampler`` / ``DDIMSampler(diffusion, model, alpha_generator_func=, set_alpha_scale=)`` and
``.sample(S, shape, input, uc, guidance_scale, mask, x0)`` behave as in the original's
``ldm/models/diffusion/plms.py`` / ``ddim.py`` (same numbers, same RNG order) with two
differences: ``input`` is not modified, and the model is exactly as before when ``sample``
returns (every gate ``scale``, the first conv), although the gates are applied the original's
way during the run (``set_alpha_scale`` and ``model.restore_first_conv_from_SD()`` at zero-gate
steps, methods that old scripts may replace). New code should call :func:`sampling.plms` /
:func:`sampling.ddim` with a :class:`~ldm.models.diffusion.denoiser.GroundedDenoiser`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from . import sampling
from .denoiser import LegacyDenoiser, model_snapshot


class LegacySampler:
    """Common part of :class:`~ldm.models.diffusion.plms.PLMSSampler` and
    :class:`~ldm.models.diffusion.ddim.DDIMSampler`.

    Args:
        diffusion: ``LatentDiffusion`` (``alphas_cumprod`` (T,), ``num_timesteps``, ``q_sample``).
        model: GLIGEN UNet.
        schedule: discretisation name, only ``"linear"`` (accepted for compatibility).
        alpha_generator_func: ``f(num_steps) -> list`` of per-step gate scales, or None (gates untouched).
        set_alpha_scale: ``f(model, alpha)``; defaults to :func:`sampling.set_alpha_scale`.
        progress: show a tqdm bar per sampling run.
        batched_cfg: both guidance branches in one UNet call.
    """

    function: Callable = None
    eta = 0.0

    def __init__(self, diffusion, model, schedule: str = "linear", alpha_generator_func: Callable | None = None,
                 set_alpha_scale: Callable | None = None, progress: bool = True, batched_cfg: bool = True):
        self.diffusion = diffusion
        self.model = model
        self.device = diffusion.betas.device
        self.ddpm_num_timesteps = int(diffusion.num_timesteps)
        self.schedule_name = schedule
        self.alpha_generator_func = alpha_generator_func
        self.set_alpha_scale = set_alpha_scale or sampling.set_alpha_scale
        self.progress = progress
        self.batched_cfg = batched_cfg
        self.schedule: sampling.Schedule | None = None

    def make_schedule(self, ddim_num_steps: int, ddim_eta: float = 0.0) -> sampling.Schedule:
        ac = self.diffusion.alphas_cumprod
        if ac.shape[0] != self.ddpm_num_timesteps:
            raise ValueError("alphas_cumprod has to be defined for each timestep")
        self.schedule = sampling.make_schedule(ac, ddim_num_steps, ddim_eta)
        return self.schedule

    def _gates(self, n: int) -> list:
        if self.alpha_generator_func is None:
            return [None] * n
        alphas = list(self.alpha_generator_func(n))
        if len(alphas) != n:
            raise ValueError(f"alpha_generator_func returned {len(alphas)} values for {n} steps")
        return alphas

    @torch.no_grad()
    def sample(self, S: int, shape: Sequence[int], input: dict, uc: torch.Tensor | None = None,
               guidance_scale: float = 1, mask: torch.Tensor | None = None, x0: torch.Tensor | None = None):
        """Run the sampler and return the final latent (B, C, H, W).

        Args:
            S: number of steps (:func:`sampling.make_ddim_timesteps`).
            shape: ``(B, C, H, W)`` of the initial noise, drawn when ``input["x"]`` is None.
            input: UNet input dict (``x``, ``timesteps``, ``context``, ``grounding_input``,
                ``inpainting_extra_input``, ``grounding_extra_input``); not modified.
            uc: unconditional / negative-prompt context for classifier-free guidance.
            guidance_scale: guidance scale (1 = no guidance).
            mask: (B, 1, H, W) inpainting mask (1 = keep) or None.
            x0: clean latent of the inpainting input (required with ``mask``).
        """
        if mask is not None and x0 is None:
            raise ValueError("inpainting needs x0 (the encoded input image) together with mask")
        schedule = self.make_schedule(S, self.eta)
        x = input.get("x")
        if x is None:
            x = torch.randn(tuple(shape), device=self.device)
        gates = self._gates(len(schedule))
        denoise = LegacyDenoiser(self.model, input["context"], input.get("grounding_input"), uc, guidance_scale,
                                 inpainting_extra_input=input.get("inpainting_extra_input"),
                                 grounding_extra_input=input.get("grounding_extra_input"),
                                 batched=self.batched_cfg, set_alpha_scale=self.set_alpha_scale)
        known = sampling.KnownRegion(self.diffusion, x0, mask) if mask is not None else None
        restore = model_snapshot(self.model)
        try:
            return type(self).function(denoise, x, schedule, gates, known=known, progress=self.progress)
        finally:
            restore()
