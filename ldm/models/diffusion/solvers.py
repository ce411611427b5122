"""Few-step ODE samplers over a denoiser: DPM-Solver++(2M), UniPC (bh2) and Euler.

Each sampler is a short function ``sampler(denoise, x, grid, gates=None, known=None, progress=False)``
in the style of k-diffusion, with the call signature of the PLMS / DDIM functions: classifier-free
guidance, grounding tokens, the gate scale and the spatial models' first-conv swap are the
denoiser's business, not the loop's.

Contract of ``denoise`` (the same callable the PLMS / DDIM loops use)::

    denoise(x, t, gate) -> eps
        x:    (B, C, H, W) latent x_t = alpha_t * x_0 + sigma_t * noise (the UNet's input scale)
        t:    (B,) long DDPM timesteps
        gate: float, the scheduled-sampling scale of the gated self-attention layers for this
              call (GLIGEN Sec. 3.3; 0 = grounding off, which also selects SD's first conv)
        eps:  (B, C, H, W) guided noise prediction

Time grid (:class:`Grid`, built by :func:`make_grid`): ``N + 1`` points from the noisiest
(``t = T - 1``) to the cleanest (``t = 0``, ``sigma_min``: the same final noise level as the
original's PLMS / DDIM, whose last step ends at ``alphas_cumprod[0]``); ``N`` denoiser calls,
one at each of the first ``N`` points. ``gates[i]`` is used for call ``i`` (``alpha_generator(N,
alpha_type)`` maps scheduled sampling to the fraction of steps, as for PLMS).

Inpainting: ``known(x, t) -> x`` (the samplers' known-region hook: the region outside the boxes
replaced by the clean latent noised to ``t`` with a fresh ``randn_like(x0)`` draw) is applied before
every denoiser call, as the original does before each PLMS / DDIM step.

All arithmetic on latents is in the latent's dtype (float32 in the pipeline); coefficients are
Python floats computed in double precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class Grid:
    """A sampling time grid, noisiest first.

    Attributes:
        t: (N + 1,) integer DDPM timesteps (as floats) at which the denoiser is called (the last
            point is never called).
        sigmas: (N + 1,) noise-to-signal ratios ``sqrt((1 - a) / a)`` ("VE" sigmas of Karras et al.);
            the last may be 0 (denoise to x_0 in the final step).
    """

    t: tuple
    sigmas: tuple

    def __len__(self) -> int:
        return len(self.t) - 1  # number of steps

    def alpha(self, i: int) -> float:
        """sqrt(alphas_cumprod) at point i."""
        return 1.0 / math.sqrt(1.0 + self.sigmas[i] ** 2)

    def sigma(self, i: int) -> float:
        """sqrt(1 - alphas_cumprod) at point i (the VP noise level)."""
        return self.sigmas[i] * self.alpha(i)

    def lam(self, i: int) -> float:
        """log(alpha / sigma) = -log(sigmas[i]) (half log-SNR); +inf at sigma 0."""
        return -math.log(self.sigmas[i]) if self.sigmas[i] > 0 else math.inf


def make_grid(alphas_cumprod: torch.Tensor, steps: int, spacing: str = "linspace", rho: float = 7.0) -> Grid:
    """The ``steps``-step grid for a DDPM schedule ``alphas_cumprod`` (T,).

    ``spacing``:
      * ``"linspace"``: timesteps ``round(linspace(T - 1, 0, steps + 1))``;
      * ``"karras"``: sigmas ``(s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho`` (Karras et al.
        2022, Eq. 5) between the schedule's extreme sigmas; the model's timestep is the
        ``log sigma`` interpolation in the discrete table, rounded (as diffusers' Karras grids).
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"number of sampling steps must be >= 1, got {steps}")
    ac = alphas_cumprod.detach().to("cpu", torch.float64).numpy()
    table = np.sqrt((1 - ac) / ac)  # increasing in t
    T = len(ac)
    if spacing == "linspace":
        t = np.linspace(0, T - 1, steps + 1).round()[::-1]  # ascending then flipped: ties round as diffusers' grid
        sig = table[t.astype(np.int64)]
    elif spacing == "karras":
        lo, hi = table[0] ** (1 / rho), table[-1] ** (1 / rho)
        sig = (hi + np.linspace(0, 1, steps + 1) * (lo - hi)) ** rho
        t = np.interp(np.log(sig), np.log(table), np.arange(T, dtype=np.float64)).round()
    else:
        raise ValueError(f"spacing must be 'linspace' or 'karras', got {spacing!r}")
    return Grid(t=tuple(float(v) for v in t), sigmas=tuple(float(v) for v in sig))


# --------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------
def _gate_list(gates: Sequence[float] | None, n: int) -> list:
    if gates is None:
        return [1.0] * n
    gates = [float(g) for g in gates]
    if len(gates) != n:
        raise ValueError(f"{len(gates)} gate scales for {n} steps")
    return gates


def _data_pred(denoise: Denoiser, x, grid: Grid, i: int, gate: float, known):
    """(x, x_0 prediction) at point i: known-region replacement (inpainting), one denoiser call."""
    ti = grid.t[i]
    integral = float(ti).is_integer()  # the DDPM grids; a hand-made grid may hold fractional times
    t = torch.full((x.shape[0],), int(ti) if integral else ti, device=x.device,
                   dtype=torch.long if integral else torch.float32)
    if known is not None:
        x = known(x, t)
    eps = denoise(x, t, gate).to(x.dtype)
    return x, (x - grid.sigma(i) * eps) / grid.alpha(i)


def _steps(n: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, total=n, disable=not progress, leave=False)


# --------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------
@torch.no_grad()
def euler(denoise: Denoiser, x: torch.Tensor, grid: Grid, gates: Sequence[float] | None = None,
          known: Callable | None = None, progress: bool = False, callback=None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE ``dx/dsigma = eps`` (Karras et al. 2022, "Elucidating
    the Design Space of Diffusion-Based Generative Models", Algorithm 2 without churn), in the
    variance-exploding variable ``x / alpha``. x: (B, C, H, W) noise at ``grid.t[0]`` -> latent at the last point."""
    gates = _gate_list(gates, len(grid))
    for i in _steps(len(grid), progress, "Euler"):
        x, d = _data_pred(denoise, x, grid, i, gates[i], known)
        x_ve = x / grid.alpha(i)
        eps = (x_ve - d) / grid.sigmas[i]
        x = (x_ve + (grid.sigmas[i + 1] - grid.sigmas[i]) * eps) * grid.alpha(i + 1)
        if callback is not None:
            callback(i, x, d)
    return x


@torch.no_grad()
def dpmpp_2m(denoise: Denoiser, x: torch.Tensor, grid: Grid, gates: Sequence[float] | None = None,
             known: Callable | None = None, progress: bool = False, callback=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", Algorithm 2): second-order multistep in log-SNR, data prediction.
    First step (and a step to sigma 0) first order. x: (B, C, H, W) -> latent at the last point."""
    gates = _gate_list(gates, len(grid))
    prev = h_prev = None
    for i in _steps(len(grid), progress, "DPM-Solver++(2M)"):
        x, d = _data_pred(denoise, x, grid, i, gates[i], known)
        if grid.sigmas[i + 1] == 0:
            x = d  # first order with h = inf
        elif grid.sigmas[i + 1] != grid.sigmas[i]:  # (a zero-length step leaves x as it is)
            h = grid.lam(i + 1) - grid.lam(i)
            if prev is not None:  # linear extrapolation of x_0(lambda) to the interval's midpoint
                r = h_prev / h
                d_use = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * prev
            else:
                d_use = d
            x = (grid.sigma(i + 1) / grid.sigma(i)) * x - grid.alpha(i + 1) * math.expm1(-h) * d_use
            h_prev = h
        prev = d
        if callback is not None:
            callback(i, x, d)
    return x


def _unipc_b(h: float, r: float | None) -> list:
    """UniC coefficients (bh2 variant, B(h) = e^h - 1) for history ratios ``[r, 1]`` (or ``[1]``):
    solves ``sum_k c_k r_k^(j-1) = j! phi_{j+1}(h) h / B(h)`` for j = 1..p (Zhao et al. 2023, Eq. 9/Alg. 1),
    written with the data-prediction phi functions of -h."""
    hh = -h
    bh = math.expm1(hh)
    phi = math.expm1(hh) / hh - 1.0  # h * phi_2 with the sign convention of the data-prediction form
    b = [phi / bh]
    if r is None:
        return [0.5]  # order 1: UniC-1 with the bh2 choice uses 1/2 (as the paper's B(h) analysis)
    phi2 = phi / hh - 0.5
    b.append(phi2 * 2.0 / bh)
    # R = [[1, 1], [r, 1]] c = b
    c0 = (b[0] - b[1]) / (1.0 - r)
    return [c0, b[0] - c0]


@torch.no_grad()
def unipc(denoise: Denoiser, x: torch.Tensor, grid: Grid, gates: Sequence[float] | None = None,
          known: Callable | None = None, progress: bool = False, callback=None) -> torch.Tensor:
    """UniPC-2 with B(h) = e^h - 1 (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework
    for Fast Sampling of Diffusion Models", data prediction): the UniP-2 predictor, and after each
    step the UniC corrector that reuses the next denoiser call (no extra evaluation). No corrector
    after the last step. x: (B, C, H, W) -> latent at the last point."""
    gates = _gate_list(gates, len(grid))
    hist: list = []  # (lambda, x_0 prediction) at the last two points, oldest first
    x_prev = order_prev = None
    for i in _steps(len(grid), progress, "UniPC"):
        x, d = _data_pred(denoise, x, grid, i, gates[i], known)
        if x_prev is not None:  # UniC: correct the point just reached with the new prediction
            lam_s, m_s = hist[-1]
            h = grid.lam(i) - lam_s
            r = (hist[-2][0] - lam_s) / h if order_prev == 2 else None
            c = _unipc_b(h, r)
            corr = c[-1] * (d - m_s)
            if r is not None:
                corr = corr + c[0] * (hist[-2][1] - m_s) / r
            x_c = (grid.sigma(i) / grid.sigma(i - 1)) * x_prev - grid.alpha(i) * math.expm1(-h) * (m_s + corr)
            x = x_c  # (inpainting: the next call's known() replaces the known region again)
        hist = (hist + [(grid.lam(i), d)])[-2:]
        if grid.sigmas[i + 1] == 0:
            x_next, order = d, 1
        elif grid.sigmas[i + 1] == grid.sigmas[i]:
            x_next, order = x, order_prev or 1
        else:  # UniP: predictor of order 1 (first step) or 2
            h = grid.lam(i + 1) - grid.lam(i)
            x_next = (grid.sigma(i + 1) / grid.sigma(i)) * x - grid.alpha(i + 1) * math.expm1(-h) * d
            order = 1
            if len(hist) == 2:
                r = (hist[0][0] - grid.lam(i)) / h
                x_next = x_next - grid.alpha(i + 1) * math.expm1(-h) * 0.5 * (hist[0][1] - d) / r
                order = 2
        x_prev, order_prev = x, order
        x = x_next
        if callback is not None:
            callback(i, x, d)
    return x


# name -> (sampler, grid spacing)
SOLVERS = {"dpmpp_2m": (dpmpp_2m, "linspace"), "dpmpp_2m_karras": (dpmpp_2m, "karras"),
           "unipc": (unipc, "linspace"), "euler": (euler, "linspace")}


def solve(name: str, denoise: Denoiser, x: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int,
          gates: Sequence[float] | None = None, known: Callable | None = None, progress: bool = False,
          callback=None) -> torch.Tensor:
    """Run the sampler ``name`` of :data:`SOLVERS` for ``steps`` denoiser calls on the schedule ``alphas_cumprod``."""
    if name not in SOLVERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SOLVERS)}")
    fn, spacing = SOLVERS[name]
    return fn(denoise, x, make_grid(alphas_cumprod, steps, spacing), gates, known=known, progress=progress,
              callback=callback)
