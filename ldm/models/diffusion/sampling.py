"""GLIGEN's samplers as functions over a denoiser (in the style of k-diffusion's ``sampling.py``).

A *denoiser* is any callable ``denoise(x, t, gate) -> eps``: ``x`` (B, C, H, W) latent, ``t`` (B,)
long DDPM timesteps, ``gate`` the scale of the gated grounding layers for this step (a float;
scheduled sampling, Sec. 3.3 of the GLIGEN paper). Classifier-free guidance, grounding tokens and
model quirks live in the denoiser (:class:`ldm.models.diffusion.denoiser.GroundedDenoiser`), never
in a loop. A sampler function is a short loop that leaves everything it is given unchanged.

* :func:`make_ddim_timesteps` / :func:`make_schedule` -- the "uniform" discretisation of the
  original's ``ldm/models/diffusion/ddim.py`` and its per-step tables;
* :func:`ddim_update` -- eps -> (x_prev, pred_x0) (the original's ``get_x_prev_and_pred_x0``);
* :class:`KnownRegion` -- inpainting's known-region replacement;
* :func:`plms`, :func:`ddim` -- the two samplers;
* :func:`alpha_generator` -- the per-step gate schedule of ``gligen_inference.py``;
  :func:`set_alpha_scale` -- the original's way of applying it (module state), legacy API only.

RNG: everything draws from the *global* torch generator in the original's order: per step the
inpainting ``q_sample`` noise (``randn_like(x0)``) and then one ``randn_like(x)`` per update,
even though ``sigma = 0`` (PLMS's first step computes its update twice, so it draws twice).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

#: the gated layers whose ``scale`` the original's ``set_alpha_scale`` sets (exact class names)
GATED_LAYER_NAMES = ("GatedSelfAttentionDense", "GatedCrossAttentionDense")

#: ``denoise(x (B,C,H,W), t (B,) long, gate: float) -> eps (B,C,H,W)``
Denoiser = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


# --------------------------------------------------------------------------------------
# schedule
# --------------------------------------------------------------------------------------
def make_ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """"uniform" discretisation: ``arange(0, T, T // S) + 1``.

    S=50 -> ``[1, 21, ..., 981]``. When S does not divide T the result has
    ``ceil(T / (T // S))`` entries (possibly more than S), as in the original.
    """
    num_steps = int(num_steps)
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"number of sampling steps must be in [1, {num_train_timesteps}], got {num_steps}")
    c = num_train_timesteps // num_steps
    steps = np.asarray(list(range(0, num_train_timesteps, c)), dtype=np.int64) + 1
    if steps[-1] >= num_train_timesteps:  # the original fails with an IndexError here
        valid = [s for s in range(1, num_train_timesteps + 1)
                 if (num_train_timesteps - 1) % (num_train_timesteps // s)]
        near = sorted(valid, key=lambda s: (abs(s - num_steps), s))[:2]
        raise ValueError(f"{num_steps} sampling steps would use timestep {steps[-1]}, outside the "
                         f"{num_train_timesteps}-step schedule; use e.g. {' or '.join(map(str, sorted(near)))} steps")
    return steps


@dataclass(frozen=True)
class Schedule:
    """Per-step tables of a DDIM/PLMS run, indexed by ``index = len - 1 - i``.

    All tables hold float32 values (as python floats, exactly representable).

    Attributes:
        timesteps: (S,) int64 DDPM timesteps in increasing order.
        alphas: (S,) ``alphas_cumprod[timesteps]``.
        alphas_prev: (S,) ``[alphas_cumprod[0]] + alphas_cumprod[timesteps[:-1]]`` (the final
            step's previous alpha is ``alphas_cumprod[0]``, not 1).
        sigmas: (S,) ``eta * sqrt((1-a_prev)/(1-a) * (1-a/a_prev))`` (0 for eta = 0).
        sqrt_one_minus_alphas: (S,) ``sqrt(1 - alphas)`` computed in float32.
    """

    timesteps: np.ndarray
    alphas: list
    alphas_prev: list
    sigmas: list
    sqrt_one_minus_alphas: list

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def time_range(self) -> np.ndarray:
        """Timesteps in sampling order (high noise first): ``flip(timesteps)``."""
        return np.flip(self.timesteps)


def make_schedule(alphas_cumprod: torch.Tensor, num_steps: int, eta: float = 0.0) -> Schedule:
    """Build the :class:`Schedule` for ``num_steps`` from the DDPM ``alphas_cumprod`` buffer (T,)."""
    ac = alphas_cumprod.detach().to("cpu", torch.float32)
    ts = make_ddim_timesteps(num_steps, ac.shape[0])
    idx = torch.from_numpy(ts)
    alphas = ac[idx]
    alphas_prev = torch.cat([ac[:1], ac[idx[:-1]]])
    sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    return Schedule(
        timesteps=ts,
        alphas=alphas.tolist(),
        alphas_prev=alphas_prev.tolist(),
        sigmas=sigmas.tolist(),
        sqrt_one_minus_alphas=torch.sqrt(1.0 - alphas).tolist(),
    )


# --------------------------------------------------------------------------------------
# eps -> x_prev
# --------------------------------------------------------------------------------------
def ddim_update(x: torch.Tensor, eps: torch.Tensor, schedule: Schedule, index: int):
    """One deterministic-or-stochastic DDIM update.

    Args:
        x: (B, C, H, W) current latent x_t.
        eps: (B, C, H, W) (guided) noise prediction.
        index: position in the schedule tables.

    Returns:
        ``(x_prev, pred_x0)``, both (B, C, H, W). Always draws ``randn_like(x)`` from the
        global generator (times sigma, usually 0) so seeded runs match the original.
    """
    b, dev = x.shape[0], x.device

    def full(v):
        return torch.full((b, 1, 1, 1), v, device=dev)  # float32 per-step scalars

    a_t, a_prev = full(schedule.alphas[index]), full(schedule.alphas_prev[index])
    sigma_t, sqrt_one_minus_at = full(schedule.sigmas[index]), full(schedule.sqrt_one_minus_alphas[index])
    pred_x0 = (x - sqrt_one_minus_at * eps) / a_t.sqrt()
    dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * eps
    noise = sigma_t * torch.randn_like(x)
    x_prev = a_prev.sqrt() * pred_x0 + dir_xt + noise
    return x_prev, pred_x0


# --------------------------------------------------------------------------------------
# inpainting
# --------------------------------------------------------------------------------------
class KnownRegion:
    """Inpainting's known region: at the start of every step the latent outside the boxes is
    replaced by the clean latent noised to the current timestep (the original's samplers, the
    ``mask``/``x0`` arguments of ``sample``).

    Args:
        diffusion: ``LatentDiffusion`` (its ``q_sample`` draws ``randn_like(x0)`` per call).
        x0: (1 or B, C, H, W) clean latent of the input image.
        mask: (B or 1, 1, H, W), 1 = keep (known), 0 = generate.
    """

    def __init__(self, diffusion, x0: torch.Tensor, mask: torch.Tensor):
        self.diffusion, self.x0, self.mask = diffusion, x0, mask

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_known = self.diffusion.q_sample(self.x0, t)
        return x_known * self.mask + (1.0 - self.mask) * x


# --------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------
def _steps(n: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, total=n, disable=not progress, leave=False)


def _timesteps(step, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(step), device=x.device, dtype=torch.long)


def _gates(gates: Sequence | None, n: int) -> list:
    if gates is None:
        return [1.0] * n
    gates = list(gates)
    if len(gates) != n:
        raise ValueError(f"{len(gates)} gate values for {n} sampling steps")
    return gates


def plms_combine(e_t: torch.Tensor, old_eps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of ``e_t`` with up to three previous eps (newest last)."""
    n = len(old_eps)
    if n == 1:
        return (3 * e_t - old_eps[-1]) / 2
    if n == 2:
        return (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


@torch.no_grad()
def plms(denoise: Denoiser, x: torch.Tensor, schedule: "Schedule", gates: Sequence | None = None,
         known: KnownRegion | None = None, progress: bool = False) -> torch.Tensor:
    """Pseudo linear multi-step sampling (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion
    Models on Manifolds"), as the original's ``PLMSSampler``: fourth-order Adams-Bashforth on eps
    with a Heun-like start (the first step averages eps at t and at the DDIM-predicted next point).

    Args:
        denoise: ``denoise(x, t, gate) -> eps`` (see the module docstring).
        x: (B, C, H, W) initial latent x_T (not modified).
        schedule: :func:`make_schedule` tables.
        gates: per-step gate scale (``len(schedule)`` floats, e.g. :func:`alpha_generator`); None = 1.
        known: inpainting known region, applied at the start of every step.

    Returns:
        (B, C, H, W) final latent.
    """
    times, n = schedule.time_range, len(schedule)
    gates = _gates(gates, n)
    old_eps: list = []
    for i in _steps(n, progress, "PLMS Sampler"):
        index, t = n - 1 - i, _timesteps(times[i], x)
        if known is not None:
            x = known(x, t)
        e_t = denoise(x, t, gates[i])
        if not old_eps:
            x_mid, _ = ddim_update(x, e_t, schedule, index)
            e_prime = (e_t + denoise(x_mid, _timesteps(times[min(i + 1, n - 1)], x), gates[i])) / 2
        else:
            e_prime = plms_combine(e_t, old_eps)
        x, _ = ddim_update(x, e_prime, schedule, index)
        old_eps = (old_eps + [e_t])[-3:]
    return x


@torch.no_grad()
def ddim(denoise: Denoiser, x: torch.Tensor, schedule: "Schedule", gates: Sequence | None = None,
         known: KnownRegion | None = None, progress: bool = False) -> torch.Tensor:
    """Denoising diffusion implicit models (Song et al. 2021, "Denoising Diffusion Implicit Models"),
    as the original's ``DDIMSampler``: one eps evaluation and one :func:`ddim_update` per step
    (``eta`` is a property of ``schedule``; GLIGEN uses 0). Arguments as :func:`plms`."""
    times, n = schedule.time_range, len(schedule)
    gates = _gates(gates, n)
    for i in _steps(n, progress, "DDIM Sampler"):
        t = _timesteps(times[i], x)
        if known is not None:
            x = known(x, t)
        x, _ = ddim_update(x, denoise(x, t, gates[i]), schedule, n - 1 - i)
    return x


SAMPLERS = {"plms": plms, "ddim": ddim}


# --------------------------------------------------------------------------------------
# scheduled sampling of the gates
# --------------------------------------------------------------------------------------
def alpha_generator(length: int, type: Sequence[float] | None = None) -> list:
    """Per-step gate scale for ``length`` sampling steps.

    ``type = [a0, a1, a2]`` (default ``[1, 0, 0]``) are the fractions of steps spent at
    alpha = 1, in a linear decay ``(n1-1)/n1, ..., 1/n1, 0``, and at alpha = 0:
    ``n0 = int(a0*length)``, ``n1 = int(a1*length)``, ``n2 = length - n0 - n1``.
    Example: ``alpha_generator(10, [0.3, 0, 0.7]) == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]``.

    Same values as the original; the sum check is tolerant (``0.1+0.2+0.7`` is accepted) and
    the decay always has exactly ``n1`` entries (the original's ``np.arange`` could yield
    ``n1 + 1`` and trip its length assertion).
    """
    if type is None:
        type = [1, 0, 0]
    type = [float(v) for v in type]
    if len(type) != 3 or any(v < 0 for v in type) or not math.isclose(sum(type), 1.0, abs_tol=1e-6):
        raise ValueError(f"alpha_type must be three non-negative fractions summing to 1, got {type}")
    length = int(length)
    n0 = int(type[0] * length)
    n1 = int(type[1] * length)
    if n0 + n1 > length:  # only reachable through the tolerant sum check
        n1 = length - n0
    n2 = length - n0 - n1
    decay = [float(v) for v in (np.arange(n1) * (1 / n1))[::-1]] if n1 > 0 else []
    alphas = [1] * n0 + decay + [0] * n2
    assert len(alphas) == length
    return alphas


def set_alpha_scale(model, alpha_scale: float) -> None:
    """The original's ``set_alpha_scale``: set ``.scale`` of every ``GatedSelfAttentionDense`` /
    ``GatedCrossAttentionDense`` (exact class names, as the original matches exact types).

    Legacy API: this *changes the model* until set back. Our samplers pass the scale to each
    UNet call instead (``UNetModel.forward(..., gate_scale=)``); the legacy samplers that call
    this put every scale back when they finish.
    """
    for mod in model.modules():
        if type(mod).__name__ in GATED_LAYER_NAMES:
            mod.scale = alpha_scale
