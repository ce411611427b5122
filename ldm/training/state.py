"""Training state outside the models: seeding and RNG streams, which parameters train, run
folders, strict state-dict loads, and what a resumed run takes from its checkpoint."""
from __future__ import annotations

import contextlib
import copy
import re
import os
import random
import shutil
import warnings
from typing import Any

import numpy as np
import torch

from ldm.checkpoint import CheckpointError, config_from_checkpoint, load_strict  # noqa: F401  (re-exported)
from ldm.devices import resolve_device  # noqa: F401  (re-exported for trainer)
from ldm.util import to_plain

__all__ = [
    "ConfigMismatchError", "resolve_device", "seed_everything", "capture_rng_state", "restore_rng_state",
    "preserved_rng", "disable_grads", "is_trainable_name",
    "select_trainable_parameters", "config_differences", "check_resume_config",
    "create_expt_folder_with_auto_resuming", "load_resume_checkpoint", "resume_position", "load_strict",
    "atomic_link_or_copy",
]

# model-config keys that may change between a run and its resumption
RESUME_IGNORED_MODEL_KEYS = ("params.use_checkpoint",)


class ConfigMismatchError(CheckpointError):
    """Auto-resume found a checkpoint whose model config differs from the current one."""


# ------------------------------------------------------------------------------ device / RNG
def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def capture_rng_state(device: torch.device) -> dict:
    """Python / NumPy / torch CPU (+ the training device's) RNG states, in a weights-only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng_state(state: dict, device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"].cpu())


@contextlib.contextmanager
def preserved_rng(device: torch.device):
    """Run a block (e.g. preview sampling) without disturbing any training RNG stream."""
    state = capture_rng_state(device)
    try:
        yield
    finally:
        restore_rng_state(state, device)


# ---------------------------------------------------------------------- parameters / EMA
def disable_grads(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad = False


def is_trainable_name(name: str, input_conv_train: bool) -> bool:
    """The original's rules (substring tests on the UNet parameter name, ``trainer.py``)."""
    if "transformer_blocks" in name and "fuser" in name:
        return True  # gated self-attention layers (incl. alpha_attn / alpha_dense)
    if "position_net" in name or "downsample_net" in name:
        return True  # grounding tokenizer / spatial downsampler
    return bool(input_conv_train) and "input_blocks.0.0.weight" in name  # widened first conv, weight only


def select_trainable_parameters(model: torch.nn.Module, input_conv_train: bool, original_params_names=None):
    """Split ``model.named_parameters()`` into ``(trainable, frozen)`` lists of ``(name, param)``.

    Every frozen name must be an original SD parameter when ``original_params_names`` is given
    (catches a new GLIGEN parameter that no rule covers).
    """
    original = set(original_params_names) if original_params_names is not None else None
    trainable, frozen = [], []
    for name, p in model.named_parameters():
        if is_trainable_name(name, input_conv_train):
            trainable.append((name, p))
        else:
            if original is not None and name not in original:
                raise RuntimeError(f"parameter {name!r} is neither trainable (gated fuser, position_net, downsample_net, widened first conv) nor in the SD checkpoint")
            frozen.append((name, p))
    return trainable, frozen


# ---------------------------------------------------------------------- run folders / resume
def _flatten(d: Any, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_differences(stored: dict, current: dict, ignore=RESUME_IGNORED_MODEL_KEYS) -> list[str]:
    """Dotted keys whose values differ between two (model) config sections, with both values."""
    a, b = _flatten(to_plain(stored)), _flatten(to_plain(current))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        va, vb = (list(v) if isinstance(v, tuple) else v for v in (va, vb))
        if va != vb:
            diffs.append(f"{key}: checkpoint {va!r} != current {vb!r}")
    return diffs


def check_resume_config(ckpt: dict, path: str, model_config: dict) -> None:
    """Raise :class:`ConfigMismatchError` if ``ckpt``'s model config differs from ``model_config``
    (plain dict of the current YAML ``model`` section); warn if the checkpoint has none."""
    if "config_dict" not in ckpt:
        warnings.warn(f"{path} has no config_dict; cannot verify it matches the current model config")
        return
    stored = copy.deepcopy(config_from_checkpoint(ckpt).get("model", {}))
    current = copy.deepcopy(model_config)
    for section in (stored, current):  # an absent inpaint_mode means False (the UNet default)
        if isinstance(section, dict) and isinstance(section.get("params"), dict):
            section["params"].setdefault("inpaint_mode", False)
    diffs = config_differences(stored, current)
    if diffs:
        raise ConfigMismatchError(f"refusing to resume from {path}: its model config differs from "
                                  f"--yaml_file ({'; '.join(diffs)}). Use another --name or OUTPUT_ROOT.")


def _tag_number(entry: str) -> int:
    m = re.fullmatch(r"tag(\d+)", entry)
    return int(m.group(1)) if m else -1


def create_expt_folder_with_auto_resuming(OUTPUT_ROOT: str, name: str):
    """``(run_folder, resume_checkpoint_or_None)`` without creating anything (the original's helper).

    The newest ``tagNN`` holding ``checkpoint_latest.pth`` is resumed, newest by number (``tag100``
    after ``tag99``); every launch gets a new ``tagNN`` folder (``NN`` = number of existing tag
    entries, bumped past any existing name).
    """
    base = os.path.join(OUTPUT_ROOT, name)
    if not os.path.isdir(base):
        return os.path.join(base, "tag00"), None
    tags = sorted((e for e in os.listdir(base) if e.startswith("tag")), key=lambda e: (_tag_number(e), e))[::-1]
    resume = next((c for c in (os.path.join(base, t, "checkpoint_latest.pth") for t in tags) if os.path.isfile(c)),
                  None)
    n = len(tags)
    while os.path.exists(os.path.join(base, "tag" + str(n).zfill(2))):
        n += 1
    return os.path.join(base, "tag" + str(n).zfill(2)), resume


def load_resume_checkpoint(path: str) -> dict:
    """Read ``checkpoint_latest.pth``; if it is unreadable, the error names the newest intact
    ``checkpoint_<iters>.pth`` beside it and how to resume from it."""
    from ldm.checkpoint import load_checkpoint_file

    try:
        return load_checkpoint_file(path)
    except CheckpointError as e:
        folder = os.path.dirname(path)
        numbered = sorted((f for f in os.listdir(folder) if re.fullmatch(r"checkpoint_\d+\.pth", f)),
                          key=lambda f: int(f[len("checkpoint_"):-len(".pth")]), reverse=True)
        for f in numbered:
            candidate = os.path.join(folder, f)
            try:
                load_checkpoint_file(candidate)
            except CheckpointError:
                continue
            raise CheckpointError(f"{e}. The newest intact checkpoint beside it is {candidate}: to resume from it, "
                                  f"copy it over the broken one (cp {candidate} {path}) and relaunch") from e
        raise CheckpointError(f"{e}. No intact checkpoint_<iters>.pth beside it: delete {path} to start over, "
                              "or use another --name") from e


def resume_position(ckpt: dict, rank: int, world_size: int, batch_size: int, seed: int):
    """``(loader_state | None, this rank's RNG state | None)`` from a checkpoint.

    The data position is kept only if world size, batch size and seed are unchanged (else the
    saved epoch restarts); RNG states only if the checkpoint holds one per current rank."""
    loader_state, rng = None, None
    data = ckpt.get("loader")
    if data is not None:
        same = (data.get("world_size") == world_size and data.get("batch_size") == batch_size
                and data.get("seed") == seed)
        loader_state = {"epoch": data["epoch"], "batches": data["batches"] if same else 0}
        if not same:
            warnings.warn("world size, batch size or seed changed since the checkpoint: the data order "
                          "restarts at the beginning of the saved epoch")
    rngs = ckpt.get("rng")
    if isinstance(rngs, list) and len(rngs) == world_size:
        rng = rngs[rank]
    elif rngs is not None:
        warnings.warn(f"checkpoint holds RNG states for {len(rngs)} ranks, this run has {world_size}; reseeding")
    return loader_state, rng


# ---------------------------------------------------------------------- files
def atomic_link_or_copy(src: str, dst: str) -> None:
    """``dst`` becomes the same file as ``src`` atomically (hard link, else copy) + rename."""
    tmp = dst + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
