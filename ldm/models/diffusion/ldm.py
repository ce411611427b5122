"""The diffusion schedule of SD v1 (``LatentDiffusion``): buffers, forward noising, loss."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def make_beta_schedule(schedule: str, n: int, linear_start: float, linear_end: float, cosine_s: float = 8e-3) -> np.ndarray:
    """float64 betas (n,). ``linear`` is SD's "scaled linear": linspace of square roots, squared."""
    if schedule == "linear":
        return np.linspace(linear_start ** 0.5, linear_end ** 0.5, n, dtype=np.float64) ** 2
    if schedule == "cosine":
        t = np.arange(n + 1, dtype=np.float64) / n + cosine_s
        a = np.cos(t / (1 + cosine_s) * np.pi / 2) ** 2
        return np.clip(1 - a[1:] / a[:-1], 0, 0.999)
    if schedule == "sqrt_linear":
        return np.linspace(linear_start, linear_end, n, dtype=np.float64)
    if schedule == "sqrt":
        return np.linspace(linear_start, linear_end, n, dtype=np.float64) ** 0.5
    raise ValueError(f"unknown beta schedule {schedule!r}")


class LatentDiffusion(nn.Module):
    """Holds the 12 schedule buffers (float32, each (timesteps,)) that form the ``diffusion`` state dict."""

    def __init__(self, beta_schedule: str = "linear", timesteps: int = 1000, linear_start: float = 1e-4,
                 linear_end: float = 2e-2, cosine_s: float = 8e-3, **ignored):
        super().__init__()
        self.num_timesteps = int(timesteps)
        self.linear_start, self.linear_end = linear_start, linear_end
        self.clip_denoised = False
        self.v_posterior = 0.0
        betas = make_beta_schedule(beta_schedule, self.num_timesteps, linear_start, linear_end, cosine_s)
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        var = (1 - self.v_posterior) * betas * (1.0 - ac_prev) / (1.0 - ac) + self.v_posterior * betas
        values = dict(
            betas=betas, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev, sqrt_alphas_cumprod=np.sqrt(ac),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac), log_one_minus_alphas_cumprod=np.log(1.0 - ac),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac), sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
            posterior_variance=var, posterior_log_variance_clipped=np.log(np.maximum(var, 1e-20)),
            posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        )
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, torch.tensor(values[name], dtype=torch.float32))

    @staticmethod
    def _gather(coef: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return coef.gather(-1, t.to(coef.device)).reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise.  x_start (B or 1, C, H, W), t (B,) long."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (self._gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def sample_timesteps(self, batch: int, device=None) -> torch.Tensor:
        """Uniform integer timesteps in [0, T), as the trainer draws them: floor(U * T), T -> T-1."""
        t = (torch.rand(batch, device=device) * self.num_timesteps).long()
        return t.clamp_(max=self.num_timesteps - 1)

    @staticmethod
    def loss(model_output: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """epsilon-prediction MSE (mean over all elements), weight 1."""
        return F.mse_loss(model_output, noise)
