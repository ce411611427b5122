"""PLMS sampler (pseudo linear multi-step, Liu et al. 2022) as used by GLIGEN (model.md §10.3)."""
from __future__ import annotations

import torch

from .sampling import BaseSampler, ddim_update


class PLMSSampler(BaseSampler):
    """Fourth-order linear multi-step sampler with a Heun-like first step.

    ``PLMSSampler(diffusion, model, alpha_generator_func=..., set_alpha_scale=...)``;
    ``.sample(S, shape, input, uc, guidance_scale, mask, x0)`` -> latent (B, C, H, W).
    See :class:`~ldm.models.diffusion.sampling.BaseSampler`.
    """

    name = "PLMS Sampler"

    def make_schedule(self, ddim_num_steps: int, ddim_eta: float = 0.0):
        if ddim_eta != 0:
            raise ValueError("ddim_eta must be 0 for PLMS")
        return super().make_schedule(ddim_num_steps, ddim_eta)

    @staticmethod
    def combine(e_t: torch.Tensor, old_eps: list) -> torch.Tensor:
        """Adams-Bashforth combination of ``e_t`` with up to three previous eps (newest last)."""
        n = len(old_eps)
        if n == 1:
            return (3 * e_t - old_eps[-1]) / 2
        if n == 2:
            return (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        return (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24

    def _loop(self, input, schedule, time_range, alphas, uc, guidance_scale, mask, x0):
        total = len(time_range)
        old_eps: list = []
        x_prev = input["x"]
        for i, step in enumerate(self._iterate(time_range, self.name)):
            index = total - i - 1
            ts = self._step_prologue(i, alphas, input, step, mask, x0)
            ts_next = torch.full_like(ts, int(time_range[min(i + 1, total - 1)]))

            x = input["x"].clone()
            input["timesteps"] = ts
            e_t = self.eps(input, uc, guidance_scale)
            if not old_eps:
                # second-order start: average eps at t and at the DDIM-predicted next point
                x_tmp, _ = ddim_update(x, e_t, schedule, index)
                input["x"], input["timesteps"] = x_tmp, ts_next
                e_prime = (e_t + self.eps(input, uc, guidance_scale)) / 2
            else:
                e_prime = self.combine(e_t, old_eps)
            x_prev, _ = ddim_update(x, e_prime, schedule, index)
            input["x"] = x_prev
            old_eps.append(e_t)
            if len(old_eps) > 3:
                old_eps.pop(0)
        return x_prev
