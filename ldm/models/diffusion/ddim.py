"""DDIM sampler (eta = 0) as used by GLIGEN (model.md §10.4)."""
from __future__ import annotations

from .sampling import BaseSampler, ddim_update


class DDIMSampler(BaseSampler):
    """Deterministic DDIM (eta = 0; one ``randn_like`` per step is still drawn).

    ``DDIMSampler(diffusion, model, alpha_generator_func=..., set_alpha_scale=...)``;
    ``.sample(S, shape, input, uc, guidance_scale, mask, x0)`` -> latent (B, C, H, W).
    See :class:`~ldm.models.diffusion.sampling.BaseSampler`.
    """

    name = "DDIM Sampler"

    def _loop(self, input, schedule, time_range, alphas, uc, guidance_scale, mask, x0):
        total = len(time_range)
        for i, step in enumerate(self._iterate(time_range, self.name)):
            index = total - i - 1
            input["timesteps"] = self._step_prologue(i, alphas, input, step, mask, x0)
            e_t = self.eps(input, uc, guidance_scale)
            input["x"], _ = ddim_update(input["x"], e_t, schedule, index)
        return input["x"]
