"""Config helpers: build objects from ``{target: "pkg.mod.Class", params: {...}}`` nodes.

Targets resolve through :mod:`ldm.registry` first (the class paths of the released configs, built
without importing the named module); any other dotted path is imported, which is right for a
user's own YAML on disk. Configs embedded in checkpoints are checked against the registry by
``ldm.checkpoint`` before they get here.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping

from ldm import registry

_SENTINELS = ("__is_first_stage__", "__is_unconditional__")


class ConfigTargetError(ImportError, ValueError):
    """A config ``target`` that does not resolve, or ``params`` its callable does not take (one line;
    an ``ImportError`` for old handlers and a ``ValueError`` for usage-error handlers)."""


def get_obj_from_str(path: str) -> Any:
    """``"pkg.module.Name"`` -> the registered builder for that path, else ``Name`` of ``pkg.module``."""
    if not isinstance(path, str):
        raise ConfigTargetError(f"target must be a dotted path string 'module.Class', got {path!r}")
    if registry.is_registered(path):
        return registry.resolve(path)
    module, _, name = path.rpartition(".")
    if not module or not name:
        raise ConfigTargetError(f"target must be a dotted path 'module.Class', got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigTargetError(f"cannot resolve config target {path!r}: {e}") from e


def instantiate_from_config(config: Mapping | str | None) -> Any:
    """Instantiate ``config["target"](**config.get("params", {}))``.

    The sentinel strings ``__is_first_stage__`` / ``__is_unconditional__`` give ``None``;
    any other node without ``target`` raises ``KeyError``.
    """
    if isinstance(config, str) and config in _SENTINELS:
        return None
    if config is None or not hasattr(config, "keys") or "target" not in config:
        raise KeyError("Expected key `target` to instantiate.")
    params = config.get("params", None) or {}
    if not hasattr(params, "keys"):
        raise ConfigTargetError(f"'params' of {config['target']!r} must be a mapping, got {type(params).__name__}")
    params = to_plain(params)
    obj = get_obj_from_str(config["target"])
    try:
        inspect.signature(obj).bind(**params)
    except TypeError as e:
        raise ConfigTargetError(f"params of {config['target']!r} do not fit it: {e}") from None
    except ValueError:  # no signature available (some builtins): let the call decide
        pass
    return obj(**params)


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
