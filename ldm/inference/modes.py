"""What a checkpoint can do: its grounding family and whether it inpaints.

The original picks preprocessing by substrings of the checkpoint *path*; here the mode comes
from the checkpoint's architecture, so Hub files named ``diffusion_pytorch_model.bin`` work:

1. the embedded config's ``grounding_tokenizer_input`` target
   (``grounding_input.<family>_grounding_tokinzer_input.GroundingNetInput``), else its
   ``model.params.grounding_tokenizer`` target (``...<family>_grounding_net.PositionNet``);
2. otherwise the ``position_net.*`` / ``downsample_net.*`` keys of the UNet state dict (each
   family's tokenizer has its own parameter names, e.g. ``position_net.keypoint_embeddings``);
3. inpainting from ``model.params.inpaint_mode`` or, without a config, the first-conv width.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from .errors import LayoutError

FAMILIES = ("text", "text_image", "keypoint", "hed", "canny", "depth", "normal", "sem")
SPATIAL_FAMILIES = ("hed", "canny", "depth", "normal", "sem")

#: layout key naming the condition image of each spatial family (as the original meta)
SPATIAL_LAYOUT_KEYS = {"hed": "hed_image", "canny": "canny_image", "depth": "depth", "normal": "normal", "sem": "sem"}
#: batch key of each spatial family's map (grounding_input adapters)
SPATIAL_BATCH_KEYS = {"hed": "hed_edge", "canny": "canny_edge", "depth": "depth", "normal": "normal", "sem": "sem"}

_ADAPTER_RE = re.compile(r"grounding_input\.(\w+?)_grounding_tokinzer_input\b")
_TOKENIZER_RE = re.compile(r"diffusionmodules\.(\w+?)_grounding_net\.PositionNet\b")


@dataclass(frozen=True)
class Mode:
    """``family`` (one of :data:`FAMILIES`) and ``inpaint``."""

    family: str
    inpaint: bool = False

    @property
    def is_box(self) -> bool:
        return self.family in ("text", "text_image")

    @property
    def is_spatial(self) -> bool:
        return self.family in SPATIAL_FAMILIES

    @property
    def name(self) -> str:
        """Human-readable name, e.g. ``inpainting box+text`` or ``generation hed``."""
        kind = {"text": "box+text", "text_image": "box+text+image"}.get(self.family, self.family)
        return f"{'inpainting' if self.inpaint else 'generation'} {kind}"


def _family_from_target(target: str | None, pattern: re.Pattern) -> str | None:
    if not target:
        return None
    m = pattern.search(str(target))
    return m.group(1) if m and m.group(1) in FAMILIES else None


def family_from_state_dict(state: Mapping) -> str | None:
    """Family from UNet state-dict keys, or None when they do not decide it (canny vs depth)."""
    keys = set(state)
    if "position_net.person_embeddings" in keys:
        return "keypoint"
    if any(k.startswith("position_net.linears_text.") for k in keys):
        return "text_image"
    if any(k.startswith("position_net.convnext_tiny_backbone.") for k in keys):
        if "position_net.in_conv.weight" in keys:
            return "sem"
        w = state.get("downsample_net.layers.0.weight")
        if w is None:
            return "hed"
        return "normal" if w.shape[1] == 3 else None  # 1 input channel: canny or depth
    if "position_net.null_positive_feature" in keys:
        return "text"
    return None


def detect_mode(config: Mapping | None = None, model_state: Mapping | None = None) -> Mode:
    """:class:`Mode` of a checkpoint from its (plain) embedded config and/or UNet state dict."""
    config = config or {}
    family = _family_from_target((config.get("grounding_tokenizer_input") or {}).get("target"), _ADAPTER_RE)
    mparams = ((config.get("model") or {}).get("params") or {})
    if family is None:
        family = _family_from_target((mparams.get("grounding_tokenizer") or {}).get("target"), _TOKENIZER_RE)
    if family is None and model_state is not None:
        family = family_from_state_dict(model_state)
    if family is None:
        raise LayoutError("cannot tell the checkpoint's grounding modality from its config or weights")
    if "inpaint_mode" in mparams:
        inpaint = bool(mparams["inpaint_mode"])
    elif model_state is not None and "input_blocks.0.0.weight" in model_state:
        in_c = int(mparams.get("in_channels", 4))
        inpaint = family in ("text", "text_image") and model_state["input_blocks.0.0.weight"].shape[1] == 2 * in_c + 1
    else:
        inpaint = bool(config.get("inpaint_mode", False))
    return Mode(family, inpaint)


def mode_of_models(models) -> Mode:
    """:class:`Mode` of built ``GLIGENModels`` (config + the UNet's ``inpaint_mode``)."""
    mode = detect_mode(models.config, models.model.state_dict())
    return Mode(mode.family, bool(getattr(models.model, "inpaint_mode", mode.inpaint)))
