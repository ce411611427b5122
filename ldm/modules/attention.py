"""Attention blocks of the SD v1 UNet plus GLIGEN's gated fusers.

One attention module (:class:`Attention`, backed by ``scaled_dot_product_attention``) serves
self-, cross- and gated attention; ``CrossAttention`` / ``SelfAttention`` keep the original
constructors and state-dict names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).

Inference fast path: when autograd is off (``torch.no_grad`` / ``torch.inference_mode``) residual
additions, the GEGLU product and the gates are done in place on freshly computed branch outputs.
The arithmetic is the same (same operands, same order, elementwise), so the numbers are equal;
it only saves allocations (fewer page faults on CPU, lower peak memory). With autograd on, the
plain out-of-place expressions are used.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .diffusionmodules.util import checkpoint, zero_module


def _inplace_ok() -> bool:
    """True when no autograd graph is recorded, so fresh intermediates may be overwritten."""
    return not torch.is_grad_enabled()


def residual_add(branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``branch + x``; in place into ``branch`` (a fresh tensor owned by the caller) without autograd."""
    if _inplace_ok() and branch.shape == x.shape and branch.dtype == x.dtype:
        return branch.add_(x)
    return branch + x


def gated_add(x: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """``x + gate * branch`` (gate: 0-dim tensor or number); in place into ``branch`` without autograd."""
    if _inplace_ok() and branch.shape == x.shape and branch.dtype == x.dtype:
        return branch.mul_(gate).add_(x)
    return x + gate * branch


class Attention(nn.Module):
    """Multi-head attention. x: (B, N, query_dim), key: (B, M, key_dim), value: (B, M, value_dim) -> (B, N, query_dim)."""

    def __init__(self, query_dim: int, key_dim: int | None = None, value_dim: int | None = None,
                 heads: int = 8, dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(key_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(value_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None):
        key = x if key is None else key
        value = key if value is None else value
        B, N, _ = x.shape

        def heads(t):  # (B, L, H*C) -> (B, H, L, C)
            return t.view(B, -1, self.heads, self.dim_head).transpose(1, 2)

        q, k, v = heads(self.to_q(x)), heads(self.to_k(key)), heads(self.to_v(value))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(B, N, self.heads * self.dim_head))


class CrossAttention(Attention):
    def __init__(self, query_dim, key_dim, value_dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__(query_dim, key_dim, value_dim, heads, dim_head, dropout)


class SelfAttention(Attention):
    def __init__(self, query_dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__(query_dim, query_dim, query_dim, heads, dim_head, dropout)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)
        if _inplace_ok():
            # in place in the projection's own buffer: no (B, N, 2*dim_out) temporaries; the
            # result is a strided view that the next Linear reads directly
            torch.ops.aten.gelu_(gate)
            return a.mul_(gate)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, glu: bool = False, dropout: float = 0.0):
        super().__init__()
        inner = int(dim * mult)
        project_in = GEGLU(dim, inner) if glu else nn.Sequential(nn.Linear(dim, inner), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner, dim_out or dim))

    def forward(self, x):
        return self.net(x)


def gate_is_off(gate) -> bool:
    """True when ``gate`` is the Python number 0: the gated layer is then the identity and skipped.

    A tensor gate never skips (no device sync to read it); ``x + 0 * branch == x`` exactly anyway.
    """
    return not isinstance(gate, torch.Tensor) and gate == 0


class _GatedFuser(nn.Module):
    """Shared gate logic: ``x + gate * tanh(alpha) * branch`` (GLIGEN Eq. 3, with the per-step
    scale ``gate`` of scheduled sampling, Sec. 3.3 of the paper).

    ``gate`` is an argument of each call, never module state: a Python number or a 0-dim tensor
    (a tensor lets a ``torch.compile``-d UNet change the value without recompiling). With the
    Python number 0 the layer is skipped (exactly the identity, no work). ``gate=None`` uses the
    attribute ``scale`` (1.0), kept only so scripts written for the original, which set
    ``module.scale`` through ``set_alpha_scale``, keep working. (That function matched exact class
    names, so the original never scheduled ``gatedSA2`` layers; the per-call gate reaches every
    fuser. No released checkpoint uses ``gatedSA2``.)
    """

    def __init__(self, query_dim: int):
        super().__init__()
        self.ff = FeedForward(query_dim, glu=True)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.register_parameter("alpha_attn", nn.Parameter(torch.tensor(0.0)))
        self.register_parameter("alpha_dense", nn.Parameter(torch.tensor(0.0)))
        self.scale = 1.0

    def resolve_gate(self, gate):
        """The gate of this call: ``gate``, or the legacy ``scale`` attribute when None."""
        return self.scale if gate is None else gate

    def gated_ff(self, x, gate):
        return gated_add(x, gate * torch.tanh(self.alpha_dense), self.ff(self.norm2(x)))


class GatedSelfAttentionDense(_GatedFuser):
    """GLIGEN's gated self-attention. x: (B, N_v, C), objs: (B, N_g, context_dim) -> (B, N_v, C).

    Self-attention runs over ``[x; linear(objs)]``; only the visual tokens' outputs are kept,
    so queries are computed for them alone (same result, less work).
    """

    def __init__(self, query_dim: int, context_dim: int, n_heads: int, d_head: int):
        super().__init__(query_dim)
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = SelfAttention(query_dim, heads=n_heads, dim_head=d_head)

    def forward(self, x, objs, gate=None):
        gate = self.resolve_gate(gate)
        if gate_is_off(gate):
            return x
        # LayerNorm is per token, so norm1(cat([x, g])) == cat([norm1(x), norm1(g)]) exactly;
        # normalising the parts keeps the visual queries contiguous.
        hx = self.norm1(x)
        h = torch.cat([hx, self.norm1(self.linear(objs))], dim=1)
        x = gated_add(x, gate * torch.tanh(self.alpha_attn), self.attn(hx, h))
        return self.gated_ff(x, gate)


class GatedSelfAttentionDense2(GatedSelfAttentionDense):
    """Variant (fuser ``gatedSA2``): the grounding tokens' outputs, laid on a square grid and
    bicubically resized to the visual grid, form the residual. Needs square N_v and N_g."""

    def forward(self, x, objs, gate=None):
        gate = self.resolve_gate(gate)
        if gate_is_off(gate):
            return x
        B, n_visual, C = x.shape
        n_ground = objs.shape[1]
        size_v, size_g = math.isqrt(n_visual), math.isqrt(n_ground)
        if size_v ** 2 != n_visual or size_g ** 2 != n_ground:
            raise ValueError(f"gatedSA2 needs square token counts, got N_v={n_visual}, N_g={n_ground}")
        h = self.norm1(torch.cat([x, self.linear(objs)], dim=1))
        g = self.attn(h[:, n_visual:], h)  # (B, N_g, C)
        g = g.transpose(1, 2).reshape(B, C, size_g, size_g)
        g = F.interpolate(g, size=(size_v, size_v), mode="bicubic").reshape(B, C, n_visual).transpose(1, 2)
        x = gated_add(x, gate * torch.tanh(self.alpha_attn), g)
        return self.gated_ff(x, gate)


class GatedCrossAttentionDense(_GatedFuser):
    """Gated cross-attention (fuser ``gatedCA``): visual tokens attend to the grounding tokens."""

    def __init__(self, query_dim: int, key_dim: int, value_dim: int, n_heads: int, d_head: int):
        super().__init__(query_dim)
        self.attn = CrossAttention(query_dim, key_dim, value_dim, heads=n_heads, dim_head=d_head)

    def forward(self, x, objs, gate=None):
        gate = self.resolve_gate(gate)
        if gate_is_off(gate):
            return x
        x = gated_add(x, gate * torch.tanh(self.alpha_attn), self.attn(self.norm1(x), objs, objs))
        return self.gated_ff(x, gate)


FUSERS = {"gatedSA": GatedSelfAttentionDense, "gatedSA2": GatedSelfAttentionDense2, "gatedCA": GatedCrossAttentionDense}


class BasicTransformerBlock(nn.Module):
    """self-attn -> gated fuser -> cross-attn (text) -> FF, each pre-norm with residual. x: (B, N, C)."""

    def __init__(self, query_dim, key_dim, value_dim, n_heads, d_head, fuser_type, use_checkpoint=True):
        super().__init__()
        self.attn1 = SelfAttention(query_dim, heads=n_heads, dim_head=d_head)
        self.ff = FeedForward(query_dim, glu=True)
        self.attn2 = CrossAttention(query_dim, key_dim, value_dim, heads=n_heads, dim_head=d_head)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.norm3 = nn.LayerNorm(query_dim)
        self.use_checkpoint = use_checkpoint
        if fuser_type not in FUSERS:
            raise ValueError(f"fuser_type must be one of {sorted(FUSERS)}, got {fuser_type!r}")
        if fuser_type == "gatedCA":
            self.fuser = GatedCrossAttentionDense(query_dim, key_dim, value_dim, n_heads, d_head)
        else:
            self.fuser = FUSERS[fuser_type](query_dim, key_dim, n_heads, d_head)

    def forward(self, x, context, objs, gate=None):
        return checkpoint(self._forward, x, context, objs, gate, enabled=self.use_checkpoint and self.training)

    def _forward(self, x, context, objs, gate=None):
        x = residual_add(self.attn1(self.norm1(x)), x)
        x = self.fuser(x, objs, gate)
        x = residual_add(self.attn2(self.norm2(x), context, context), x)
        return residual_add(self.ff(self.norm3(x)), x)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` if the 4-D tensor ``x`` is laid out channels-last, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class SpatialTransformer(nn.Module):
    """SD v1 transformer over a feature map. x: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, in_channels, key_dim, value_dim, n_heads, d_head, depth=1, fuser_type=None, use_checkpoint=True):
        super().__init__()
        query_dim = n_heads * d_head
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(in_channels, query_dim, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(query_dim, key_dim, value_dim, n_heads, d_head, fuser_type, use_checkpoint)
            for _ in range(depth))
        self.proj_out = zero_module(nn.Conv2d(query_dim, in_channels, 1))

    def forward(self, x, context, objs, gate=None):
        """``gate``: scale of the gated fusers for this call (see :class:`_GatedFuser`)."""
        B, C, H, W = x.shape
        x_in = x
        x = self.proj_in(self.norm(x))
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C), row-major
        for block in self.transformer_blocks:
            x = block(x, context, objs, gate)
        # (B, H*W, C) -> (B, C, H, W): the plain reshape is a channels-last *view*; keep the layout
        # of the block's input (a stray channels-last activation makes every later conv of a
        # contiguous model re-order its weights on each call, and vice versa).
        x = x.transpose(1, 2).reshape(B, -1, H, W).contiguous(memory_format=_memory_format(x_in))
        return residual_add(self.proj_out(x), x_in)
