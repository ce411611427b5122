"""The SD v1 UNet with GLIGEN's grounding inputs (``UNetModel``)."""
from __future__ import annotations

import random
import warnings
from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

from grounding_input.base import null_grounding
from ldm.devices import cast_float as _cast
from ldm.devices import param_dtype
from ldm.modules.attention import SpatialTransformer
from ldm.util import instantiate_from_config

from .util import checkpoint, normalization, timestep_embedding, zero_module

_COORDINATE_KEYS = ("boxes", "points")


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""


def _route(layer, x, emb, context, objs, gate):
    """Call one child of a :class:`TimestepEmbedSequential` with the arguments its kind takes."""
    if isinstance(layer, TimestepBlock):
        return layer(x, emb)
    if isinstance(layer, SpatialTransformer):
        return layer(x, context, objs, gate)
    return layer(x)


class TimestepEmbedSequential(nn.Sequential):
    """A container of UNet layers (kept for the original's state-dict names ``input_blocks.N.M``);
    :meth:`UNetModel.forward` walks its children itself (see :func:`_route`)."""


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv. (B, C, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, channels, use_conv=True, out_channels=None, padding=1):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=padding)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Strided 3x3 conv. (B, C, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, channels, use_conv=True, out_channels=None, padding=1):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding) if use_conv \
            else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class ResBlock(TimestepBlock):
    """GroupNorm-SiLU-conv twice, timestep embedding added in between. x: (B, C_in, H, W), emb: (B, E)."""

    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_conv=False,
                 use_scale_shift_norm=False, dims=2, use_checkpoint=False, up=False, down=False):
        super().__init__()
        out_channels = out_channels or channels
        if up or down or use_scale_shift_norm or dims != 2:
            raise NotImplementedError("only the SD v1 ResBlock (no up/down, no scale-shift, 2-D) is supported")
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 3 if use_conv else 1, padding=1 if use_conv else 0)

    def forward(self, x, emb):
        return checkpoint(self._forward, x, emb, enabled=self.use_checkpoint and self.training)

    def _forward(self, x, emb):
        if torch.is_grad_enabled():
            h = self.in_layers(x)
            h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
            return self.skip_connection(x) + self.out_layers(h)
        # no autograd: same operations, SiLU and the additions in place (fewer allocations)
        norm, _, conv = self.in_layers
        h = conv(F.silu(norm(x), inplace=True))
        h += self.emb_layers(emb).type(h.dtype)[..., None, None]
        norm, _, drop, conv = self.out_layers
        h = conv(drop(F.silu(norm(h), inplace=True)))
        h += self.skip_connection(x)
        return h


class UNetModel(nn.Module):
    """SD v1 UNet + GLIGEN grounding (the original's ``ldm/modules/diffusionmodules/openaimodel.py``).

    ``forward(input, gate_scale=None, sd_first_conv=None)`` takes a dict: ``x`` (B, in_channels, H, W)
    noisy latent, ``timesteps`` (B,), ``context`` (B, 77, context_dim), ``grounding_input`` (kwargs
    of ``position_net``; absent -> the null grounding, see :meth:`grounding_tokens`),
    ``inpainting_extra_input`` (B, in_channels + 1, H, W) when ``inpaint_mode``,
    ``grounding_extra_input`` (the raw spatial map) when there is a ``downsample_net``, optional
    ``grounding_tokens`` (B, N, context_dim) that replace ``position_net``. Returns the predicted
    noise (B, out_channels, H, W). H and W are any multiple of ``2 ** (len(channel_mult) - 1)``.

    The two per-call switches of scheduled sampling are arguments, never module state:
    ``gate_scale`` multiplies every gated fuser (see :class:`ldm.modules.attention._GatedFuser`),
    and ``sd_first_conv`` (``{"weight": (C, 4, 3, 3), "bias": (C,)}``) replaces the first conv
    by Stable Diffusion's, dropping the spatial map's channels (what the original did by swapping
    the module in ``restore_first_conv_from_SD``). The defaults (scale 1, the checkpoint's conv)
    are what training uses.
    """

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0, channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2,
                 use_checkpoint=False, num_heads=8, use_scale_shift_norm=False, transformer_depth=1,
                 context_dim=None, fuser_type=None, inpaint_mode=False, grounding_downsampler=None,
                 grounding_tokenizer=None):
        super().__init__()
        if fuser_type not in ("gatedSA", "gatedSA2", "gatedCA"):
            raise ValueError(f"fuser_type must be gatedSA, gatedSA2 or gatedCA, got {fuser_type!r}")
        if grounding_tokenizer is None:
            raise ValueError("UNetModel needs a grounding_tokenizer config (target + params)")
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.use_checkpoint = use_checkpoint
        self.num_heads = num_heads
        self.context_dim = context_dim
        self.fuser_type = fuser_type
        self.inpaint_mode = inpaint_mode
        self.grounding_tokenizer_input = None  # adapter object, attached from outside
        self.sd_first_conv = None  # optional {"weight", "bias"} of SD's 4-channel first conv

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))

        self.downsample_net = None
        self.additional_channel_from_downsampler = 0
        self.first_conv_type = "SD"
        self.first_conv_restorable = True
        if grounding_downsampler is not None:
            self.downsample_net = instantiate_from_config(grounding_downsampler)
            self.additional_channel_from_downsampler = self.downsample_net.out_dim
            self.first_conv_type = "GLIGEN"
        in_c = in_channels + self.additional_channel_from_downsampler
        if inpaint_mode:
            in_c += in_channels + 1  # masked latent + mask
            self.first_conv_restorable = False

        def transformer(ch):
            return SpatialTransformer(ch, key_dim=context_dim, value_dim=context_dim, n_heads=num_heads,
                                      d_head=ch // num_heads, depth=transformer_depth, fuser_type=fuser_type,
                                      use_checkpoint=use_checkpoint)

        def resblock(ch_in, ch_out):
            return ResBlock(ch_in, time_embed_dim, dropout, out_channels=ch_out, use_checkpoint=use_checkpoint)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_c, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, conv_resample)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(resblock(ch, ch), transformer(ch), resblock(ch, ch))

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)))
        self.position_net = instantiate_from_config(grounding_tokenizer)

    # -- grounding -------------------------------------------------------------------------
    def grounding_tokens(self, input: dict) -> torch.Tensor:
        """The grounding tokens (B, N, context_dim) for one forward call.

        ``input["grounding_tokens"]`` if given; else ``position_net(**input["grounding_input"])``.
        In training mode the whole batch's grounding is replaced by its null grounding with
        probability 0.1, drawn from Python's ``random`` on every call (as the original's
        ``UNetModel.forward``), for classifier-free guidance. Without ``grounding_input`` the
        attached adapter's ``get_null_input()`` is used (the original's API; our samplers always
        pass the grounding explicitly, built by :func:`grounding_input.base.null_grounding`).
        """
        if input.get("grounding_tokens") is not None:
            return input["grounding_tokens"]
        if "grounding_input" in input and input["grounding_input"] is not None:
            kwargs = input["grounding_input"]
        else:
            adapter = self.grounding_tokenizer_input
            if adapter is None:
                raise RuntimeError("no grounding_input given and no grounding_tokenizer_input attached for null input")
            kwargs = adapter.get_null_input()
        if self.training and random.random() < 0.1:
            kwargs = null_grounding(kwargs)
        dtype = param_dtype(self.position_net)
        if dtype is not None:
            # float inputs follow the tokenizer's dtype; box / point coordinates stay as given
            # (their Fourier features are computed in float32, then cast by the tokenizer)
            kwargs = {k: v if k in _COORDINATE_KEYS else _cast(v, dtype) for k, v in kwargs.items()}
        return self.position_net(**kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the UNet computes in (that of its parameters)."""
        return self.time_embed[0].weight.dtype

    @property
    def uses_spatial_first_conv(self) -> bool:
        """True for spatial-map models, whose first conv also reads the downsampled map; at steps
        with gate scale 0 they run with SD's own first conv instead (``sd_first_conv``)."""
        return self.downsample_net is not None and self.first_conv_restorable

    def checkpoint_first_conv_as_sd(self) -> dict:
        """The checkpoint's first conv restricted to the latent channels, ``{"weight", "bias"}``.

        Exactly SD's conv for box/keypoint models (never trained there); for spatial-map models
        an approximation used only when SD's own conv is not available.
        """
        conv = self.input_blocks[0][0]
        return {"weight": conv.weight[:, :self.in_channels], "bias": conv.bias}

    def forward(self, input: dict, gate_scale=None, sd_first_conv: dict | None = None) -> torch.Tensor:
        """See the class docstring. Inputs are cast to the parameters' dtype (fp16/bf16 models
        accept float32 latents, contexts and grounding inputs); the result has that dtype.

        Args:
            gate_scale: scale of every gated fuser for this call: a number (0 skips them exactly)
                or a 0-dim tensor (no recompilation under ``torch.compile`` when it changes).
                None: each fuser's legacy ``scale`` attribute (1.0 unless an old script set it).
            sd_first_conv: SD's first conv ``{"weight", "bias"}`` to use instead of the model's
                (spatial-map models at zero-gate steps); the map is then not used.
        """
        dtype = self.dtype
        objs = _cast(self.grounding_tokens(input), dtype)
        emb = self.time_embed(timestep_embedding(input["timesteps"], self.model_channels).to(dtype))
        context = _cast(input["context"], dtype)

        h = _cast(input["x"], dtype)
        if self.downsample_net is not None and sd_first_conv is None and self.first_conv_type == "GLIGEN":
            h = torch.cat([h, _cast(self.downsample_net(_cast(input["grounding_extra_input"], dtype)), dtype)], dim=1)
        if self.inpaint_mode:
            if self.downsample_net is not None:
                raise NotImplementedError("inpainting with a spatial-map downsampler is not supported (as in the original)")
            h = torch.cat([h, _cast(input["inpainting_extra_input"], dtype)], dim=1)

        # Blocks are unrolled here so that each intermediate, e.g. an output block's concatenated
        # input, is released as soon as the next layer has consumed it: lower peak memory.
        skips = []
        for n, block in enumerate(self.input_blocks):
            for m, layer in enumerate(block):
                if n == 0 and m == 0 and sd_first_conv is not None:
                    h = F.conv2d(h, _cast(sd_first_conv["weight"], dtype).to(h.device),
                                 _cast(sd_first_conv["bias"], dtype).to(h.device), padding=1)
                else:
                    h = _route(layer, h, emb, context, objs, gate_scale)
            skips.append(h)
        for layer in self.middle_block:
            h = _route(layer, h, emb, context, objs, gate_scale)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in block:
                h = _route(layer, h, emb, context, objs, gate_scale)
        return self.out(h)

    # -- the original's first-conv swap (legacy samplers only) ------------------------------
    def restore_first_conv_from_SD(self):
        """Swap in Stable Diffusion's 4-channel first conv module (the original's method, kept for
        its sampler API; our samplers pass ``sd_first_conv`` to :meth:`forward` instead and the
        legacy samplers undo this swap when they finish).

        Source of SD's conv: ``self.sd_first_conv`` (``{"weight", "bias"}``, set by the caller),
        else the checkpoint's own conv restricted to the latent channels (with a warning for
        spatial-map models). Nothing is read from the working directory.
        """
        if not self.first_conv_restorable:
            return  # inpainting models keep their 9-channel conv
        if self.first_conv_type == "SD" and self.input_blocks[0][0].in_channels == self.in_channels:
            return
        old = self.input_blocks[0][0]
        sd = self.sd_first_conv
        if sd is None:
            if self.downsample_net is not None:
                warnings.warn("SD first-conv weights not provided (set model.sd_first_conv, see "
                              "ldm.checkpoint.load_sd_first_conv); using the checkpoint's first conv "
                              "restricted to the latent channels", stacklevel=2)
            sd = self.checkpoint_first_conv_as_sd()
        self.GLIGEN_first_conv_state_dict = deepcopy(old.state_dict())
        conv = nn.Conv2d(self.in_channels, old.out_channels, 3, padding=1).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(sd["weight"])
            conv.bias.copy_(sd["bias"])
        self.input_blocks[0][0] = conv
        self.first_conv_type = "SD"
