"""Shared pieces of the GLIGEN samplers (PLMS and DDIM differ only in their loop).

One place per idea:

* :func:`make_ddim_timesteps` / :func:`make_schedule` -- the "uniform" DDIM discretisation
  and its per-step tables (spec model.md §10.1);
* :func:`guided_eps` -- one classifier-free-guided noise prediction, both branches in ONE
  batched UNet call (§10.2);
* :func:`ddim_update` -- eps -> (x_prev, pred_x0) (§10.2, "get_x_prev_and_pred_x0");
* :func:`inpaint_replace` -- known-region replacement from the clean latent (§10.6);
* :func:`alpha_generator`, :func:`set_alpha_scale`, :func:`apply_gate_alpha` -- scheduled
  sampling of the gated self-attention layers (§10.5);
* :class:`BaseSampler` -- construction, schedule, set-up and progress bar shared by
  :class:`~ldm.models.diffusion.plms.PLMSSampler` and :class:`~ldm.models.diffusion.ddim.DDIMSampler`.

RNG: everything draws from the *global* torch generator in the original's order
(model.md §11.5): the initial latent if ``input["x"]`` is None, then per step the inpainting
``q_sample`` noise (``randn_like(x0)``) followed by one ``randn_like(x)`` per update, even
though ``sigma = 0``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

GATED_LAYER_NAMES = ("GatedSelfAttentionDense", "GatedCrossAttentionDense")


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
def inpaint_replace(diffusion, x: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor, ts: torch.Tensor):
    """Replace the known region of ``x`` by ``x0`` noised to ``ts``.

    Args:
        x: (B, C, H, W) current latent.
        x0: (1 or B, C, H, W) clean latent of the input image.
        mask: (B or 1, 1, H, W), 1 = keep (known), 0 = generate.
        ts: (B,) timesteps of the current step.

    ``diffusion.q_sample(x0, ts)`` draws ``randn_like(x0)`` (one draw per step, as the original).
    """
    x_known = diffusion.q_sample(x0, ts)
    return x_known * mask + (1.0 - mask) * x


# --------------------------------------------------------------------------------------
# classifier-free guidance
# --------------------------------------------------------------------------------------
def _param_dtype(model) -> torch.dtype | None:
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.dtype if p is not None else None


def _cat_pair(a: Any, b: Any) -> Any:
    """Concatenate two (nested dicts of) tensors along dim 0; non-tensors must agree."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.cat([a, b.to(device=a.device)], dim=0)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            raise ValueError(f"grounding inputs disagree on keys: {sorted(a)} vs {sorted(b)}")
        return {k: _cat_pair(a[k], b[k]) for k in a}
    if a is None and b is None:
        return None
    raise TypeError(f"cannot batch CFG branches: {type(a).__name__} / {type(b).__name__}")


def _null_grounding_fn(model) -> Callable[[], Mapping] | None:
    """``model.grounding_tokenizer_input.get_null_input`` if it can be called, else None."""
    gti = getattr(model, "grounding_tokenizer_input", None)
    if gti is None or not hasattr(gti, "get_null_input") or not getattr(gti, "set", True):
        return None
    return gti.get_null_input


def with_cached_tokens(model, model_input: dict, cache: dict | None, key: str) -> dict:
    """``model_input`` plus ``grounding_tokens`` computed once per sampling run.

    Grounding tokens depend only on the grounding input (not on x, t or the gate scale), so the
    ``position_net`` runs once per branch and run instead of once per step. ``cache`` is None, or
    the model in training mode (per-call grounding dropout), keeps the per-call computation.
    """
    if cache is None or getattr(model, "training", False) or not hasattr(model, "position_net"):
        return model_input
    if key not in cache:
        g = model_input.get("grounding_input")
        if g is None:
            null_fn = _null_grounding_fn(model)
            if null_fn is None:
                return model_input
            g = null_fn()
        cache[key] = model.grounding_tokens({"grounding_input": g}) if hasattr(model, "grounding_tokens") \
            else model.position_net(**g)
    return {**model_input, "grounding_tokens": cache[key]}


def guided_eps(model, input: dict, uc: torch.Tensor | None = None, guidance_scale: float = 1.0,
               batched: bool = True, token_cache: dict | None = None) -> torch.Tensor:
    """Classifier-free-guided noise prediction ``e_u + s * (e_c - e_u)``.

    Args:
        model: GLIGEN UNet, ``model(dict) -> eps``.
        input: dict with ``x`` (B,C,H,W), ``timesteps`` (B,), ``context`` (B,77,D),
            ``grounding_input`` (kwargs of the grounding tokenizer; absent = null grounding),
            ``inpainting_extra_input`` (B,5,H,W) or None, ``grounding_extra_input`` or None.
        uc: (B,77,D) unconditional (negative-prompt) context; None disables guidance.
        guidance_scale: CFG scale; exactly 1 disables guidance (single conditional pass).
        batched: run both branches as ONE UNet call of batch 2B (cond first, then uncond whose
            grounding tokens are ``model.grounding_tokenizer_input.get_null_input()``).
            Falls back to two passes when the null input is unavailable.
        token_cache: a dict kept for one sampling run; grounding tokens are computed once and
            reused (see :func:`with_cached_tokens`). None recomputes them every call.

    Returns:
        (B, C, H, W) guided eps in the dtype of ``input["x"]`` (the UNet runs in its parameter
        dtype; latents can stay float32 for a half-precision model).
    """
    x = input["x"]
    mdtype = _param_dtype(model)
    cast = (lambda t: t.to(mdtype)) if (mdtype is not None and mdtype != x.dtype) else (lambda t: t)
    cond = {k: v for k, v in input.items() if not (k == "grounding_input" and v is None)}
    cond["x"] = cast(x)
    if uc is None or guidance_scale == 1:
        return model(with_cached_tokens(model, cond, token_cache, "cond")).to(x.dtype)

    extras = ("inpainting_extra_input", "grounding_extra_input")
    null_fn = _null_grounding_fn(model) if batched else None
    if null_fn is not None:
        cond_g = cond["grounding_input"] if "grounding_input" in cond else null_fn()
        both = dict(
            x=torch.cat([cond["x"], cond["x"]]),
            timesteps=torch.cat([input["timesteps"], input["timesteps"]]),
            context=torch.cat([input["context"], uc.to(input["context"].device)]),
            grounding_input=_cat_pair(cond_g, null_fn()),
        )
        for k in extras:
            v = input.get(k)
            both[k] = None if v is None else torch.cat([v, v])
        e_c, e_u = model(with_cached_tokens(model, both, token_cache, "both")).to(x.dtype).chunk(2)
    else:
        e_c = model(with_cached_tokens(model, cond, token_cache, "cond")).to(x.dtype)
        unc = dict(x=cond["x"], timesteps=input["timesteps"], context=uc,
                   **{k: input.get(k) for k in extras})
        e_u = model(with_cached_tokens(model, unc, token_cache, "uncond")).to(x.dtype)
    return e_u + guidance_scale * (e_c - e_u)


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
    """Set ``.scale`` of every ``GatedSelfAttentionDense`` / ``GatedCrossAttentionDense``.

    Matches the exact class name (as the original matches the exact type): subclasses such as
    ``GatedSelfAttentionDense2`` are left alone.
    """
    for mod in model.modules():
        if type(mod).__name__ in GATED_LAYER_NAMES:
            mod.scale = alpha_scale


def apply_gate_alpha(model, alpha: float, set_alpha_scale_fn: Callable = set_alpha_scale) -> None:
    """Apply one step's gate scale; ``alpha == 0`` also swaps the SD first conv back in."""
    set_alpha_scale_fn(model, alpha)
    if alpha == 0:
        model.restore_first_conv_from_SD()


# --------------------------------------------------------------------------------------
# base sampler
# --------------------------------------------------------------------------------------
class BaseSampler:
    """Common part of the PLMS and DDIM samplers.

    Args:
        diffusion: ``LatentDiffusion`` (buffers ``betas``, ``alphas_cumprod`` (T,),
            ``num_timesteps``, method ``q_sample``).
        model: GLIGEN UNet.
        schedule: discretisation name, only ``"linear"`` (accepted for compatibility).
        alpha_generator_func: ``f(num_steps) -> list`` of per-step gate scales, or None (gates
            untouched).
        set_alpha_scale: ``f(model, alpha)``; defaults to :func:`set_alpha_scale`.
        progress: show a tqdm bar per sampling run.
        batched_cfg: evaluate both CFG branches in one UNet call (see :func:`guided_eps`).
    """

    name = "Sampler"
    eta = 0.0

    def __init__(self, diffusion, model, schedule: str = "linear", alpha_generator_func: Callable | None = None,
                 set_alpha_scale: Callable | None = None, progress: bool = True, batched_cfg: bool = True):
        self.diffusion = diffusion
        self.model = model
        self.device = diffusion.betas.device
        self.ddpm_num_timesteps = int(diffusion.num_timesteps)
        self.schedule_name = schedule
        self.alpha_generator_func = alpha_generator_func
        self.set_alpha_scale = set_alpha_scale or globals()["set_alpha_scale"]
        self.progress = progress
        self.batched_cfg = batched_cfg
        self.schedule: Schedule | None = None
        self._token_cache: dict | None = None  # grounding tokens of the current run

    def make_schedule(self, ddim_num_steps: int, ddim_eta: float = 0.0) -> Schedule:
        ac = self.diffusion.alphas_cumprod
        if ac.shape[0] != self.ddpm_num_timesteps:
            raise ValueError("alphas_cumprod has to be defined for each timestep")
        self.schedule = make_schedule(ac, ddim_num_steps, ddim_eta)
        return self.schedule

    # -- helpers used by the loops -------------------------------------------------------
    def eps(self, input: dict, uc, guidance_scale) -> torch.Tensor:
        """Guided eps of ``input`` (see :func:`guided_eps`)."""
        return guided_eps(self.model, input, uc, guidance_scale, batched=self.batched_cfg, token_cache=self._token_cache)

    def _alphas(self, n: int):
        if self.alpha_generator_func is None:
            return None
        alphas = list(self.alpha_generator_func(n))
        if len(alphas) != n:
            raise ValueError(f"alpha_generator_func returned {len(alphas)} values for {n} steps")
        return alphas

    def _iterate(self, time_range, desc: str):
        from tqdm.auto import tqdm

        return tqdm(time_range, desc=desc, total=len(time_range), disable=not self.progress, leave=False)

    @torch.no_grad()
    def sample(self, S: int, shape: Sequence[int], input: dict, uc: torch.Tensor | None = None,
               guidance_scale: float = 1, mask: torch.Tensor | None = None, x0: torch.Tensor | None = None):
        """Run the sampler and return the final latent (B, C, H, W).

        Args:
            S: number of steps (``make_ddim_timesteps``).
            shape: ``(B, C, H, W)`` of the initial noise (used when ``input["x"]`` is None).
            input: UNet input dict (``x``, ``timesteps``, ``context``, ``grounding_input``,
                ``inpainting_extra_input``, ``grounding_extra_input``); ``x`` and
                ``timesteps`` are updated in place, as in the original.
            uc: unconditional / negative-prompt context for CFG.
            guidance_scale: CFG scale (1 = no guidance).
            mask: (B, 1, H, W) inpainting mask (1 = keep) or None.
            x0: clean latent of the inpainting input (required with ``mask``).
        """
        if mask is not None and x0 is None:
            raise ValueError("inpainting needs x0 (the encoded input image) together with mask")
        schedule = self.make_schedule(S, self.eta)
        if input.get("x") is None:
            input["x"] = torch.randn(tuple(shape), device=self.device)
        time_range = schedule.time_range
        alphas = self._alphas(len(time_range))
        self._token_cache = {}
        try:
            return self._loop(input, schedule, time_range, alphas, uc, guidance_scale, mask, x0)
        finally:
            self._token_cache = None

    def _step_prologue(self, i: int, alphas, input: dict, step: int, mask, x0) -> torch.Tensor:
        """Gate handling, then (inpainting) known-region replacement. Returns ``ts`` (B,)."""
        if alphas is not None:
            apply_gate_alpha(self.model, alphas[i], self.set_alpha_scale)
        x = input["x"]
        ts = torch.full((x.shape[0],), int(step), device=self.device, dtype=torch.long)
        if mask is not None:
            input["x"] = inpaint_replace(self.diffusion, x, x0, mask, ts)
        return ts

    def _loop(self, input, schedule, time_range, alphas, uc, guidance_scale, mask, x0):  # pragma: no cover
        raise NotImplementedError
