"""Config helpers: build objects from ``{target: "pkg.mod.Class", params: {...}}`` nodes."""
from __future__ import annotations

import importlib
from typing import Any, Mapping

_SENTINELS = ("__is_first_stage__", "__is_unconditional__")


def get_obj_from_str(path: str) -> Any:
    """``"pkg.module.Name"`` -> the object ``Name`` of ``pkg.module``."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"target must be a dotted path 'module.Class', got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot resolve config target {path!r}: {e}") from e


def instantiate_from_config(config: Mapping | str | None) -> Any:
    """Instantiate ``config["target"](**config.get("params", {}))``.

    The sentinel strings ``__is_first_stage__`` / ``__is_unconditional__`` give ``None``;
    any other node without ``target`` raises ``KeyError``.
    """
    if isinstance(config, str) and config in _SENTINELS:
        return None
    if config is None or "target" not in config:
        raise KeyError("Expected key `target` to instantiate.")
    params = config.get("params", None) or {}
    return get_obj_from_str(config["target"])(**to_plain(params))


def to_plain(obj: Any) -> Any:
    """OmegaConf containers (or nested mappings/lists of them) -> plain dicts/lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj
