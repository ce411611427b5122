"""Grounding tokenizers (``position_net``) and spatial downsamplers (``downsample_net``).

Every released configuration names a class path such as
``ldm.modules.diffusionmodules.text_grounding_net.PositionNet``; ``ldm.registry`` maps those
paths to the classes here.

Masking convention (all tokenizers): a slot with mask 0 gets the learned null feature(s) in
place of its inputs, so an all-zero mask gives the "null grounding" used for CFG.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm.constants import NUM_KEYPOINTS

from .convnext import ConvNeXt
from .util import FourierEmbedder


def mlp(in_dim: int, out_dim: int, hidden: int = 512) -> nn.Sequential:
    """Linear-SiLU-Linear-SiLU-Linear (state-dict keys ``.0``, ``.2``, ``.4``)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, out_dim))


def masked(features: torch.Tensor, mask: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """features (B, N, D), mask (B, N), null (D,) -> features where mask=1, null where mask=0."""
    m = mask.unsqueeze(-1).to(features.dtype)
    return features * m + (1 - m) * null.view(1, 1, -1)


class BoxTextPositionNet(nn.Module):
    """Boxes + phrase features -> tokens.

    boxes (B, N, 4) normalised xyxy, masks (B, N), positive_embeddings (B, N, in_dim) -> (B, N, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, fourier_freqs: int = 8):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.fourier_embedder = FourierEmbedder(num_freqs=fourier_freqs)
        self.position_dim = self.fourier_embedder.out_dim(4)
        self.linears = mlp(in_dim + self.position_dim, out_dim)
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(self.position_dim))

    def forward(self, boxes, masks, positive_embeddings):
        pos = masked(self.fourier_embedder(boxes).to(positive_embeddings.dtype), masks, self.null_position_feature)
        emb = masked(positive_embeddings, masks, self.null_positive_feature)
        return self.linears(torch.cat([emb, pos], dim=-1))


class BoxTextImagePositionNet(nn.Module):
    """Boxes + phrase features + reference-image features -> 2N tokens (N text tokens, then N image tokens).

    boxes (B, N, 4), masks / text_masks / image_masks (B, N), text_embeddings / image_embeddings
    (B, N, in_dim) -> (B, 2N, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, fourier_freqs: int = 8):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.fourier_embedder = FourierEmbedder(num_freqs=fourier_freqs)
        self.position_dim = self.fourier_embedder.out_dim(4)
        self.linears_text = mlp(in_dim + self.position_dim, out_dim)
        self.linears_image = mlp(in_dim + self.position_dim, out_dim)
        self.null_text_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_image_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(self.position_dim))

    def forward(self, boxes, masks, text_masks, image_masks, text_embeddings, image_embeddings):
        pos = masked(self.fourier_embedder(boxes).to(text_embeddings.dtype), masks, self.null_position_feature)
        text = masked(text_embeddings, text_masks, self.null_text_feature)
        image = masked(image_embeddings, image_masks, self.null_image_feature)
        return torch.cat([self.linears_text(torch.cat([text, pos], -1)),
                          self.linears_image(torch.cat([image, pos], -1))], dim=1)


class KeypointPositionNet(nn.Module):
    """Person keypoints -> one token per (person, keypoint), person-major.

    points (B, P*17, 2) normalised xy, masks (B, P*17) -> (B, P*17, out_dim).
    """

    def __init__(self, max_persons_per_image: int, out_dim: int, fourier_freqs: int = 8):
        super().__init__()
        self.max_persons_per_image, self.out_dim = max_persons_per_image, out_dim
        self.person_embeddings = nn.Parameter(torch.zeros(max_persons_per_image, out_dim))
        self.keypoint_embeddings = nn.Parameter(torch.zeros(NUM_KEYPOINTS, out_dim))
        self.fourier_embedder = FourierEmbedder(num_freqs=fourier_freqs)
        self.position_dim = self.fourier_embedder.out_dim(2)
        self.linears = mlp(out_dim + self.position_dim, out_dim)
        self.null_person_feature = nn.Parameter(torch.zeros(out_dim))
        self.null_xy_feature = nn.Parameter(torch.zeros(self.position_dim))

    def forward(self, points, masks):
        B, N, _ = points.shape
        if N != self.max_persons_per_image * NUM_KEYPOINTS:
            raise ValueError(f"expected {self.max_persons_per_image}x{NUM_KEYPOINTS} keypoints, got {N}")
        identity = (self.person_embeddings[:, None] + self.keypoint_embeddings[None]).reshape(1, N, self.out_dim)
        identity = masked(identity.expand(B, -1, -1), masks, self.null_person_feature)
        xy = masked(self.fourier_embedder(points).to(identity.dtype), masks, self.null_xy_feature)
        return self.linears(torch.cat([identity, xy], dim=-1))


class SpatialPositionNet(nn.Module):
    """A spatial condition map -> (resize_input/32)^2 tokens via a ConvNeXt backbone.

    Called as ``net(mask=(B,) or (B,1), **{map_key: (B, C, H, W)})`` -> (B, num_tokens, out_dim).
    ``in_dim`` (semantic maps) adds a 3x3 conv from ``in_dim`` one-hot channels to RGB.
    ``backbone_depths`` / ``backbone_dims`` default to ConvNeXt-T (tiny test models shrink them).
    """

    map_key = "map"

    def __init__(self, resize_input: int = 448, out_dim: int = 768, in_dim: int | None = None,
                 backbone_depths=(3, 3, 9, 3), backbone_dims=(96, 192, 384, 768), map_key: str | None = None):
        super().__init__()
        if map_key is not None:
            self.map_key = map_key
        self.resize_input, self.out_dim = resize_input, out_dim
        self.down_factor = 32
        self.num_tokens = (resize_input // self.down_factor) ** 2
        if in_dim is not None:
            self.in_conv = nn.Conv2d(in_dim, 3, 3, 1, 1)
        self.convnext_tiny_backbone = ConvNeXt(depths=tuple(backbone_depths), dims=tuple(backbone_dims))
        feat_dim = self.convnext_tiny_backbone.out_dim
        self.pos_embedding = nn.Parameter(torch.empty(1, self.num_tokens, feat_dim).normal_(std=0.02))
        self.linears = mlp(feat_dim, out_dim)
        self.null_feature = nn.Parameter(torch.zeros(feat_dim))

    def forward(self, mask=None, **maps):
        if self.map_key not in maps or mask is None:
            raise TypeError(f"{type(self).__name__} expects keyword arguments {self.map_key!r} and 'mask', got {sorted(maps)}")
        x = F.interpolate(maps[self.map_key], size=self.resize_input, mode="nearest")
        if hasattr(self, "in_conv"):
            x = self.in_conv(x)
        feat = self.convnext_tiny_backbone(x)  # (B, C, r/32, r/32)
        tokens = feat.flatten(2).transpose(1, 2)  # (B, num_tokens, C), row-major
        m = mask.reshape(-1, 1, 1).to(tokens.dtype)
        tokens = tokens * m + self.null_feature * (1 - m)
        return self.linears(tokens + self.pos_embedding)


class SpatialDownsampler(nn.Module):
    """A spatial condition map -> ``out_dim`` channels at latent resolution, concatenated to the UNet input.

    x (B, C_map, H, W) -> (B, out_dim, out_size, out_size). Uses the first ``in_channels`` map channels.
    Without ``resize_input`` (HED) the map is just resized bicubically to ``out_size``; otherwise it is
    resized to ``resize_input`` and reduced by two stride-2 convs (so out_size = resize_input / 4).
    """

    def __init__(self, in_channels: int, out_dim: int, resize_input: int | None = None, hidden: int = 4,
                 interpolation: str = "bicubic", out_size: int = 64):
        super().__init__()
        self.in_channels, self.out_dim = in_channels, out_dim
        self.resize_input, self.interpolation, self.out_size = resize_input, interpolation, out_size
        if resize_input is None:
            if out_dim != in_channels:
                raise ValueError("a resize-only downsampler keeps its channels: out_dim must equal in_channels")
        else:
            self.layers = nn.Sequential(nn.Conv2d(in_channels, hidden, 4, 2, 1), nn.SiLU(),
                                        nn.Conv2d(hidden, out_dim, 4, 2, 1))

    def forward(self, grounding_extra_input):
        x = grounding_extra_input[:, :self.in_channels]
        if self.resize_input is None:
            return F.interpolate(x, size=(self.out_size, self.out_size), mode=self.interpolation)
        x = F.interpolate(x, size=(self.resize_input, self.resize_input), mode=self.interpolation)
        out = self.layers(x)
        assert out.shape[1] == self.out_dim
        return out
