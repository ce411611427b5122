"""The denoiser the samplers call: GLIGEN's UNet with classifier-free guidance and grounding.

``GroundedDenoiser(model, context, grounding_input, uc, guidance_scale, ...)`` is built once per
sampling run and called as ``denoise(x, t, gate) -> eps`` by every sampler in
:mod:`ldm.models.diffusion.sampling`. Everything that is not the sampling loop lives here:

* classifier-free guidance ``e_u + s * (e_c - e_u)`` (Ho & Salimans 2022), both branches in ONE
  UNet call of batch 2B (cond first); the unconditional branch gets the negative-prompt context
  ``uc`` and the null grounding :func:`grounding_input.base.null_grounding` of the same input
  (the original ran the branches as two calls; the numbers agree to float rounding);
* the grounding tokens, computed once per run (they depend only on the grounding input);
* scheduled sampling: ``gate`` goes to the UNet call as ``gate_scale`` (0 skips the gated
  layers exactly), and spatial-map models use Stable Diffusion's first conv at ``gate == 0``
  (the original's ``restore_first_conv_from_SD``), passed in as ``sd_first_conv``;
* dtypes: the UNet runs in its parameter dtype, latents and eps stay in the caller's dtype.

The model is never modified. :class:`LegacyDenoiser` is the same thing applying the gates the
original's way (``set_alpha_scale`` + ``restore_first_conv_from_SD``) for the legacy sampler API.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import torch

from grounding_input.base import null_grounding
from ldm.devices import param_dtype


def _cat_pair(a: Any, b: Any) -> Any:
    """Concatenate two (nested dicts of) tensors along dim 0; ``None`` pairs stay None."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.cat([a, b.to(device=a.device)], dim=0)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            raise ValueError(f"grounding inputs disagree on keys: {sorted(a)} vs {sorted(b)}")
        return {k: _cat_pair(a[k], b[k]) for k in a}
    if a is None and b is None:
        return None
    raise TypeError(f"cannot batch CFG branches: {type(a).__name__} / {type(b).__name__}")


class GroundedDenoiser:
    """``denoise(x, t, gate) -> eps`` for one sampling run of a GLIGEN UNet.

    Args:
        model: ``UNetModel`` (anything with ``model(input_dict, gate_scale=, sd_first_conv=)``).
        context: (B, 77, D) prompt embedding.
        grounding_input: the tokenizer kwargs from the adapter's ``prepare(batch)``.
        uc: (B, 77, D) negative-prompt embedding; None (or ``guidance_scale == 1``) disables guidance.
        guidance_scale: classifier-free guidance scale.
        inpainting_extra_input: (B, C + 1, H, W) masked clean latent + mask (inpainting models).
        grounding_extra_input: raw spatial map for the ``downsample_net`` (spatial-map models).
        sd_first_conv: ``{"weight", "bias"}`` of SD v1.4's first conv (see
            ``ldm.checkpoint.load_sd_first_conv``); used by spatial-map models at ``gate == 0``.
            None: the checkpoint's conv restricted to the latent channels, with a warning.
        batched: both guidance branches in one UNet call (False: two calls, as the original).
        cache_tokens: compute the grounding tokens once (ignored while the model is training,
            where every call draws its own grounding dropout).
    """

    def __init__(self, model, context: torch.Tensor, grounding_input: dict | None, uc: torch.Tensor | None = None,
                 guidance_scale: float = 1.0, *, inpainting_extra_input: torch.Tensor | None = None,
                 grounding_extra_input: Any = None, sd_first_conv: dict | None = None, batched: bool = True,
                 cache_tokens: bool = True):
        self.model = model
        self.dtype = param_dtype(model)
        self.guided = uc is not None and guidance_scale != 1
        self.guidance_scale = guidance_scale
        self.batched = batched
        self.cache_tokens = cache_tokens and not getattr(model, "training", False) and hasattr(model, "grounding_tokens")
        # SD's first conv on the model's device and dtype once (not at every zero-gate call)
        self.sd_first_conv = None if sd_first_conv is None else \
            {k: v.to(context.device, self.dtype or v.dtype) for k, v in sd_first_conv.items()}
        if grounding_input is None:
            grounding_input = self._adapter_null_input()
        extras = dict(inpainting_extra_input=inpainting_extra_input, grounding_extra_input=grounding_extra_input)
        self.cond = dict(context=context, grounding_input=grounding_input, **extras)
        self.uncond = None
        if self.guided:
            self.uncond = dict(context=uc.to(context.device), grounding_input=null_grounding(grounding_input), **extras)
        self.both = None
        if self.guided and batched:
            self.both = {k: _cat_pair(self.cond[k], self.uncond[k]) for k in self.cond}
        self._tokens: dict = {}
        self._gates: dict = {}

    def _adapter_null_input(self) -> dict:
        """Grounding for a call without any (legacy callers only): the attached adapter's null input."""
        gti = getattr(self.model, "grounding_tokenizer_input", None)
        if gti is None or not getattr(gti, "set", False):
            raise ValueError("grounding_input is required (no prepared grounding_tokenizer_input to take a null input from)")
        return gti.get_null_input()

    # -- the UNet call ---------------------------------------------------------------------
    def model_kwargs(self, gate) -> dict:
        """``gate_scale`` / ``sd_first_conv`` of one UNet call for this step's ``gate``."""
        if gate == 0:
            conv = None
            if getattr(self.model, "uses_spatial_first_conv", False):
                if self.sd_first_conv is None:
                    warnings.warn("SD v1.4 first conv not provided; using the checkpoint's first conv restricted to "
                                  "the latent channels at zero-gate steps", stacklevel=3)
                    self.sd_first_conv = self.model.checkpoint_first_conv_as_sd()
                conv = self.sd_first_conv
            return dict(gate_scale=0.0, sd_first_conv=conv)
        if gate not in self._gates:  # one 0-dim tensor per distinct gate value, not one per step
            self._gates[gate] = torch.tensor(float(gate), dtype=self.dtype, device=self.cond["context"].device)
        return dict(gate_scale=self._gates[gate])

    def _run(self, inputs: dict, key: str, x: torch.Tensor, t: torch.Tensor, gate) -> torch.Tensor:
        inp = dict(inputs, x=x, timesteps=t)
        if self.cache_tokens:
            if key not in self._tokens:
                self._tokens[key] = self.model.grounding_tokens({"grounding_input": inputs["grounding_input"]})
            inp["grounding_tokens"] = self._tokens[key]
        return self.model(inp, **self.model_kwargs(gate))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, gate: float = 1.0) -> torch.Tensor:
        """eps (B, C, H, W) in ``x``'s dtype for latent ``x`` (B, C, H, W) at DDPM timesteps ``t`` (B,)
        (long), with the gated layers scaled by ``gate`` (0: off, and SD's first conv for spatial models)."""
        xm = x.to(self.dtype) if self.dtype is not None else x
        if not self.guided:
            return self._run(self.cond, "cond", xm, t, gate).to(x.dtype)
        if self.both is not None:
            e_c, e_u = self._run(self.both, "both", torch.cat([xm, xm]), torch.cat([t, t]), gate).to(x.dtype).chunk(2)
        else:
            e_c = self._run(self.cond, "cond", xm, t, gate).to(x.dtype)
            e_u = self._run(self.uncond, "uncond", xm, t, gate).to(x.dtype)
        return e_u + self.guidance_scale * (e_c - e_u)


class LegacyDenoiser(GroundedDenoiser):
    """:class:`GroundedDenoiser` applying each step's gate the original's way, for the legacy
    ``PLMSSampler`` / ``DDIMSampler``: ``set_alpha_scale(model, gate)`` and, at ``gate == 0``,
    ``model.restore_first_conv_from_SD()`` (a method old scripts and our parity check replace).
    ``gate=None`` leaves the model's gates as they are (no ``alpha_generator_func``). The legacy
    samplers snapshot the model before and restore it after (:func:`model_snapshot`).
    """

    def __init__(self, *args, set_alpha_scale: Callable, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_alpha_scale = set_alpha_scale

    def model_kwargs(self, gate) -> dict:
        if gate is not None:
            self.set_alpha_scale(self.model, gate)
            if gate == 0:
                self.model.restore_first_conv_from_SD()
        return {}


# --------------------------------------------------------------------------------------------
# model snapshot (legacy API only)
# --------------------------------------------------------------------------------------------
_MISSING = object()


def model_snapshot(model) -> Callable[[], None]:
    """Record what the original's gate handling changes on ``model`` (every module's ``scale``,
    the first conv module, ``first_conv_type``) and return a function that puts it back."""
    scales = [(m, m.__dict__.get("scale", _MISSING)) for m in model.modules() if "scale" in m.__dict__]
    blocks = getattr(model, "input_blocks", None)
    first = blocks[0][0] if blocks is not None else None
    attrs = {k: model.__dict__.get(k, _MISSING) for k in ("first_conv_type", "GLIGEN_first_conv_state_dict")}

    def restore() -> None:
        for m, v in scales:
            m.scale = v
        for m in model.modules():  # scales a custom set_alpha_scale added
            if "scale" in m.__dict__ and all(m is not n for n, _ in scales):
                del m.__dict__["scale"]
        if first is not None and blocks[0][0] is not first:
            blocks[0][0] = first
        for k, v in attrs.items():
            if v is _MISSING:
                model.__dict__.pop(k, None)
            else:
                model.__dict__[k] = v

    return restore
