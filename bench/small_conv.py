"""Opt-in CPU trick for the benchmark: small-output, large-weight convs as im2col + GEMM.

Why: on CPU, oneDNN copies a conv's weight into its blocked layout on every call; with glibc's
default malloc a copy above 32 MiB is a fresh ``mmap``, page-faulted anew each time. For the
1280-channel 3x3 convs of SD's UNet at 4x4 (a 256x256 image, CFG batch 2) that makes oneDNN about
2x slower than a plain GEMM, at 8x8 (512x512) about 10 % slower. With a tuned allocator
(``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, jemalloc, tcmalloc) oneDNN is the faster
one again, so this is a switch of the benchmark (``bench_unet.py --small-conv-max-pixels N``),
never a default of the model: :func:`enable` wraps the chosen ``nn.Conv2d`` instances of one model
and :func:`disable` undoes it. Same mathematical result (float32 rounding may differ in the last bits).
"""
from __future__ import annotations

import torch
from torch import nn

MIN_WEIGHT_BYTES = 32 * 2 ** 20


def eligible(conv: nn.Module, min_weight_bytes: int = MIN_WEIGHT_BYTES) -> bool:
    """A plain float32 3x3/1x1 ``nn.Conv2d`` whose weight is at least ``min_weight_bytes``."""
    return (isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and tuple(conv.dilation) == (1, 1)
            and conv.weight.dtype == torch.float32 and conv.weight.numel() * 4 >= min_weight_bytes)


def gemm_conv(conv: nn.Conv2d, x: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """``conv(x)``; on CPU without autograd, outputs of at most ``max_pixels`` (batch x H x W) use
    ``aten._slow_conv2d_forward`` (im2col + GEMM) instead of oneDNN."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.is_contiguous()
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling()):
        kh, kw = conv.kernel_size
        (sh, sw), (ph, pw) = conv.stride, conv.padding
        ho = (x.shape[2] + 2 * ph - kh) // sh + 1
        wo = (x.shape[3] + 2 * pw - kw) // sw + 1
        if x.shape[0] * ho * wo <= max_pixels:
            return torch.ops.aten._slow_conv2d_forward(x, conv.weight, (kh, kw), conv.bias, (sh, sw), (ph, pw))
    return nn.Conv2d.forward(conv, x)


def enable(model: nn.Module, max_pixels: int = 128, min_weight_bytes: int = MIN_WEIGHT_BYTES) -> int:
    """Route the eligible convs of ``model`` through :func:`gemm_conv`; returns how many. 0 pixels: no-op."""
    n = 0
    if max_pixels <= 0:
        return n
    for m in model.modules():
        if eligible(m, min_weight_bytes):
            m.forward = lambda x, _m=m: gemm_conv(_m, x, max_pixels)
            n += 1
    return n


def disable(model: nn.Module) -> None:
    """Undo :func:`enable`."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.__dict__.pop("forward", None)
