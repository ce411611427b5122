"""The registry of config targets: the class paths a GLIGEN config may name, and what builds each.

A config node is ``{target: "pkg.module.Class", params: {...}}``. The released configs (and the
checkpoints we write) name a fixed set of class paths, many of them the original's per-modality
modules (``ldm.modules.diffusionmodules.canny_grounding_net.PositionNet``,
``grounding_input.sem_grounding_downsampler_input.GroundingDSInput``, ...). Here each of those
paths maps to the callable that builds it, so:

* the original paths resolve without one alias module per path;
* a config embedded in a checkpoint (untrusted data) can be checked *before anything is
  imported*: :func:`find_untrusted` names the first target outside this table or the first
  parameter that is not plain data (``ldm.checkpoint`` turns that into a refusal).

A user's own YAML on disk may still name any importable class (see ``ldm.util``).
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Mapping

_DM = "ldm.modules.diffusionmodules."
_GN = _DM + "grounding_net"

#: spatial modality -> batch key of its map
SPATIAL_MAP_KEYS = {"hed": "hed_edge", "canny": "canny_edge", "depth": "depth", "normal": "normal", "sem": "sem"}


def _attr(module: str, name: str, **defaults: Any) -> Callable[[], Callable]:
    """Entry: ``module.name``, with ``defaults`` as keyword arguments a config's params may override."""
    def load():
        obj = getattr(importlib.import_module(module), name)
        return functools.partial(obj, **defaults) if defaults else obj
    return load


@functools.lru_cache(maxsize=None)
def _spatial_adapter(map_key: str, downsampler: bool) -> type:
    from grounding_input.base import spatial_adapters

    return spatial_adapters(map_key)[1 if downsampler else 0]


def _adapter(map_key: str, downsampler: bool) -> Callable[[], Callable]:
    return lambda: _spatial_adapter(map_key, downsampler)


def _sem_downsampler(resize_input: int = 256, in_dim: int = 152, out_dim: int = 8):
    """Original ``sem_grounding_downsampler.GroundingDownsampler``: one-hot map, nearest resize, two convs."""
    from ldm.modules.diffusionmodules.grounding_net import SpatialDownsampler

    return SpatialDownsampler(in_channels=in_dim, out_dim=out_dim, resize_input=resize_input, hidden=16,
                              interpolation="nearest")


def _hed_downsampler(out_dim: int = 1, out_size: int = 64):
    """Original ``hed_grounding_downsampler.GroundingDownsampler``: channel 0, bicubic resize to the latent."""
    from ldm.modules.diffusionmodules.grounding_net import SpatialDownsampler

    return SpatialDownsampler(in_channels=1, out_dim=out_dim, resize_input=None, out_size=out_size)


def _entries() -> dict[str, Callable[[], Callable]]:
    e = {
        "ldm.models.diffusion.ldm.LatentDiffusion": _attr("ldm.models.diffusion.ldm", "LatentDiffusion"),
        "ldm.models.autoencoder.AutoencoderKL": _attr("ldm.models.autoencoder", "AutoencoderKL"),
        "ldm.modules.encoders.modules.FrozenCLIPEmbedder": _attr("ldm.modules.encoders.modules", "FrozenCLIPEmbedder"),
        _DM + "openaimodel.UNetModel": _attr(_DM + "openaimodel", "UNetModel"),
        # grounding tokenizers (model.params.grounding_tokenizer)
        _DM + "text_grounding_net.PositionNet": _attr(_GN, "BoxTextPositionNet"),
        _DM + "text_image_grounding_net.PositionNet": _attr(_GN, "BoxTextImagePositionNet"),
        _DM + "keypoint_grounding_net.PositionNet": _attr(_GN, "KeypointPositionNet"),
        # grounding inputs (batch -> tokenizer kwargs)
        "grounding_input.text_grounding_tokinzer_input.GroundingNetInput": _attr("grounding_input.base", "BoxTextInput"),
        "grounding_input.text_image_grounding_tokinzer_input.GroundingNetInput":
            _attr("grounding_input.base", "BoxTextImageInput"),
        "grounding_input.keypoint_grounding_tokinzer_input.GroundingNetInput":
            _attr("grounding_input.base", "KeypointInput"),
    }
    for family, key in SPATIAL_MAP_KEYS.items():
        extra = {"in_dim": 152} if family == "sem" else {}
        e[f"{_DM}{family}_grounding_net.PositionNet"] = _attr(_GN, "SpatialPositionNet", map_key=key, **extra)
        e[f"grounding_input.{family}_grounding_tokinzer_input.GroundingNetInput"] = _adapter(key, False)
        e[f"grounding_input.{family}_grounding_downsampler_input.GroundingDSInput"] = _adapter(key, True)
    for family, channels in (("canny", 1), ("depth", 1), ("normal", 3)):
        e[f"{_DM}{family}_grounding_downsampler.GroundingDownsampler"] = _attr(
            _GN, "SpatialDownsampler", in_channels=channels, out_dim=8, resize_input=256, hidden=4)
    e[_DM + "hed_grounding_downsampler.GroundingDownsampler"] = lambda: _hed_downsampler
    e[_DM + "sem_grounding_downsampler.GroundingDownsampler"] = lambda: _sem_downsampler
    # training datasets: our checkpoints embed the training config, dataset catalog targets included
    for module, name in (("tsv_dataset", "TSVDataset"), ("dataset_kp", "KeypointDataset"),
                         ("dataset_hed", "HedDataset"), ("dataset_canny", "CannyDataset"),
                         ("dataset_depth", "DepthDataset"), ("dataset_normal", "NormalDataset"),
                         ("dataset_sem", "SemanticDataset")):
        e[f"dataset.{module}.{name}"] = _attr(f"dataset.{module}", name)
    return e


#: original class path -> loader of the callable that builds it (nothing is imported until resolved)
REGISTRY: Mapping[str, Callable[[], Callable]] = _entries()


def is_registered(target: Any) -> bool:
    return isinstance(target, str) and target in REGISTRY


def resolve(target: str) -> Callable:
    """The callable registered under ``target`` (``KeyError`` if none)."""
    return REGISTRY[target]()


PLAIN_TYPES = (str, int, float, bool, type(None))


def find_untrusted(config: Any, where: str = "config") -> tuple[str, str] | None:
    """First reason an embedded config cannot be built from data alone, or None.

    Returns ``(kind, detail)``: ``("target", "os.system")`` for a ``target`` outside the registry,
    ``("value", "<where>: <type>")`` for anything that is not plain data (dicts with string keys,
    lists, strings, numbers, booleans, None). Nothing is imported.
    """
    if isinstance(config, Mapping):
        if "target" in config:
            target = config["target"]
            if not is_registered(target):
                return "target", str(target) if isinstance(target, str) else repr(target)
        for k, v in config.items():
            if not isinstance(k, str):
                return "value", f"{where}: key {k!r}"
            found = find_untrusted(v, f"{where}.{k}")
            if found:
                return found
        return None
    if isinstance(config, (list, tuple)):
        for i, v in enumerate(config):
            found = find_untrusted(v, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(config, PLAIN_TYPES):
        return None
    return "value", f"{where}: {type(config).__module__}.{type(config).__qualname__}"
