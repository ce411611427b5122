"""Small building blocks shared by the UNet and the grounding tokenizers."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint


def checkpoint(fn, *args, enabled: bool = True):
    """Gradient checkpointing (non-reentrant) when ``enabled`` and autograd is recording.

    Skipped when nothing in the call needs a gradient (no tensor argument requires grad and ``fn``,
    a bound method, belongs to a module without trainable parameters: a frozen block ahead of the
    first trainable layer records no graph, so checkpointing it would only add overhead)."""
    if enabled and torch.is_grad_enabled() and _needs_grad(fn, args):
        return _torch_checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _needs_grad(fn, args) -> bool:
    if any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return True
    owner = getattr(fn, "__self__", None)
    return not isinstance(owner, nn.Module) or any(p.requires_grad for p in owner.parameters())


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back (as the original UNet ResBlocks).

    Half-precision weights are upcast too (CPU kernels reject a float32 input with bf16/fp16
    affine parameters); in float32 this is exactly ``nn.GroupNorm``.
    """

    def forward(self, x):
        if x.dtype == torch.float32 and (self.weight is None or self.weight.dtype == torch.float32):
            return super().forward(x)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding, cos first: timesteps (B,) -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class FourierEmbedder:
    """Parameter-free Fourier features: x (..., D) -> (..., 2 * num_freqs * D).

    Layout: ``[sin(f0 x), cos(f0 x), sin(f1 x), cos(f1 x), ...]`` with ``f_k = temperature ** (k / num_freqs)``.
    Shared by the box (D=4 -> 64) and keypoint (D=2 -> 32) grounding tokenizers.
    """

    def __init__(self, num_freqs: int = 64, temperature: float = 100):
        self.num_freqs = num_freqs
        self.temperature = temperature
        # on the CPU even under a meta/other default device: the values are needed as Python floats
        self.freq_bands = temperature ** (torch.arange(num_freqs, dtype=torch.float32, device="cpu") / num_freqs)
        self._freqs = self.freq_bands.tolist()  # float32 values as Python floats: no tolist() per call

    def out_dim(self, in_dim: int) -> int:
        return 2 * self.num_freqs * in_dim

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, cat_dim: int = -1) -> torch.Tensor:
        """Half-precision input is computed in float32 (phases reach ~56x the input), then cast back."""
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        out = []
        for freq in self._freqs:
            out.append(torch.sin(freq * xf))
            out.append(torch.cos(freq * xf))
        return torch.cat(out, dim=cat_dim).to(x.dtype)
