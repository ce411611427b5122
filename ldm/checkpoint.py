"""Checkpoint I/O: official GLIGEN files, SD v1.4 ``.ckpt`` files, safetensors, atomic writes.

A downloaded file is data. Loading is safe by default:

* ``torch.load(weights_only=True)`` with an allow-list of the few classes official files pickle
  (OmegaConf containers in ``config_dict``); a file that needs any other Python object is refused
  (:class:`UntrustedCheckpointError`) naming it, read from the pickle opcodes;
* the embedded config (``config_dict``, safetensors metadata) may only name targets of
  :mod:`ldm.registry` with plain-data params; anything else is refused when the file is read,
  before anything is imported (:func:`check_config_trusted`).

``GLIGEN_TRUST_CHECKPOINTS=1`` (or ``trust=True``) lifts both for files you trust. Every error is
a one-line :class:`CheckpointError`.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import tempfile
import typing
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any

import torch

from ldm.cli import one_line
from ldm.constants import SD_FIRST_CONV_FILE
from ldm.util import instantiate_from_config, to_plain

MODEL_SECTIONS = ("model", "autoencoder", "text_encoder", "diffusion")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated, tampered with or of the wrong layout."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that needs code to load: a pickled Python object outside the allow-list, or an
    embedded config naming a class outside :mod:`ldm.registry` (``GLIGEN_TRUST_CHECKPOINTS=1`` lifts it)."""


TRUST_HINT = "set GLIGEN_TRUST_CHECKPOINTS=1 only for files you trust"


def _allowed_globals() -> list:
    from omegaconf import DictConfig, ListConfig
    from omegaconf import nodes
    from omegaconf.base import ContainerMetadata, Metadata

    node_types = [getattr(nodes, n) for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                               "BytesNode", "PathNode") if hasattr(nodes, n)]
    return [DictConfig, ListConfig, ContainerMetadata, Metadata, *node_types, typing.Any,
            collections.defaultdict, collections.OrderedDict, dict, list, int, float, str, bool, tuple, set]


def _trusted(trust: bool | None) -> bool:
    if trust is not None:
        return trust
    return os.environ.get("GLIGEN_TRUST_CHECKPOINTS", "").lower() in ("1", "true", "yes")


def safe_torch_load(path: str | os.PathLike, map_location="cpu", trust: bool | None = None) -> Any:
    """``torch.load`` restricted to tensors, containers and OmegaConf config nodes.

    Raises :class:`CheckpointError` (one clear line) for a missing, truncated or corrupted file, and
    :class:`UntrustedCheckpointError` naming the Python object for one that pickles anything outside
    the allow-list (found by reading the pickle opcodes, not by parsing torch's message).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty: {path}")
    if _trusted(trust):
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupted?): {one_line(e)}") from e
    try:
        with torch.serialization.safe_globals(_allowed_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
            AttributeError, TypeError, IndexError, KeyError) as e:
        name = _disallowed_global(path)
        if name is not None:
            raise UntrustedCheckpointError(f"refused: {path} needs the Python object {name}, which is not on the "
                                           f"allow-list ({TRUST_HINT})") from None
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupted?): {one_line(e)}") from None


_STRING_OPS = frozenset(("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                         "BINSTRING", "STRING"))


def _pickle_globals(stream) -> list[str]:
    """``module.name`` of every GLOBAL / INST / STACK_GLOBAL in one pickle (read with pickletools:
    nothing is imported or executed). STACK_GLOBAL takes its two names from the values pushed
    before it, following the memo."""
    import pickletools

    names, pushed, memo = [], [], {}
    for op, arg, _ in pickletools.genops(stream):
        kind = op.name
        if kind in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else None)
        elif kind == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif kind in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif kind in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif kind in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            names.append(_python3_name(module, name))
            pushed.append(None)
        elif kind == "STACK_GLOBAL":
            module, name = (pushed[-2:] if len(pushed) >= 2 else [None, None])
            names.append(f"{module}.{name}" if module and name else "an object named at run time (STACK_GLOBAL)")
            pushed.append(None)
        else:
            pushed.append(None)
    return names


def _python3_name(module: str, name: str) -> str:
    """What the unpickler imports for a protocol-2 GLOBAL (Python 2 names such as ``commands.call``
    are mapped back, as ``pickle`` does with ``fix_imports``)."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _disallowed_global(path: str) -> str | None:
    """The first Python object a torch checkpoint's pickle(s) would import that loading refuses, or None."""
    import io

    allowed = {f"{c.__module__}.{getattr(c, '__qualname__', getattr(c, '_name', ''))}" for c in _allowed_globals()}
    try:  # torch's own allow-list (tensor rebuild functions, storages, dtypes ...)
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed |= set(_get_allowed_globals())
        known_torch = False
    except Exception:  # pragma: no cover - private API moved: accept every torch.* name
        known_torch = True
    blobs = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
        else:
            with open(path, "rb") as f:
                blobs = [f.read()]
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    for blob in blobs:
        stream = io.BytesIO(blob)
        for _ in range(5):  # the legacy format is several pickles back to back
            if stream.tell() >= len(blob):
                break
            try:
                names = _pickle_globals(stream)
            except Exception:  # truncated / not a pickle: what was read so far still counts
                break
            for name in names:
                torch_internal = name.startswith("torch.") and (
                    known_torch or name.startswith("torch._utils._rebuild") or name.endswith("Storage"))
                if name not in allowed and not torch_internal:
                    return name
    return None


# -- safetensors ---------------------------------------------------------------------------
def _save_safetensors(obj: dict, path: str):
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for section, value in obj.items():
        if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            for k, t in value.items():
                tensors[f"{section}.{k}"] = t.detach().contiguous().cpu()
        elif isinstance(value, torch.Tensor):
            tensors[section] = value.detach().contiguous().cpu()
        else:
            meta[section] = to_plain(_config_dict_content(value) if section == "config_dict" else value)
    save_file(tensors, path, metadata={"gligen": json.dumps(meta)})


def _read_safetensors(path: str) -> tuple[dict, dict]:
    """``(flat tensors, our 'gligen' JSON metadata)`` with one-line errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("gligen", "{}"))
        flat = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read safetensors file {path} (truncated or corrupted?): {one_line(e)}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'gligen' metadata is not a JSON object")
    return flat, meta


def _load_safetensors(path: str) -> dict:
    flat, meta = _read_safetensors(path)
    out: dict = {}
    for key, t in flat.items():
        section, _, rest = key.partition(".")
        if rest and section in MODEL_SECTIONS + ("ema",):
            out.setdefault(section, {})[rest] = t
        else:
            out[key] = t
    for k, v in meta.items():
        out[k] = {"_content": v} if k == "config_dict" else v
    return out


def load_checkpoint_file(path: str | os.PathLike, trust: bool | None = None) -> dict:
    """Read a checkpoint dict from ``.pth``/``.bin``/``.ckpt`` (torch pickle) or ``.safetensors``."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        obj = _load_safetensors(path)
    else:
        obj = safe_torch_load(path, trust=trust)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if "config_dict" in obj:
        config_from_checkpoint(obj, source=path, trust=trust)  # refuse an untrusted config before any use
    return obj


def save_checkpoint(obj: dict, path: str | os.PathLike):
    """Write atomically (temporary file in the same folder, fsync, rename): a crash never leaves a partial file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        if path.endswith(".safetensors"):
            _save_safetensors(obj, tmp)
        else:
            torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def official_text_encoder_state(state_dict: dict, max_length: int = 77) -> dict:
    """``FrozenCLIPEmbedder.state_dict()`` under the names official files use (transformers 4:
    ``transformer.text_model.*`` plus the ``position_ids`` buffer), so checkpoints we write also load
    into the original code. Our loader accepts both layouts."""
    out = {}
    for k, v in state_dict.items():
        out[k.replace("transformer.", "transformer.text_model.", 1) if k.startswith("transformer.") and
            not k.startswith("transformer.text_model.") else k] = v
    out.setdefault("transformer.text_model.embeddings.position_ids", torch.arange(max_length)[None])
    return out


# -- configs -------------------------------------------------------------------------------
def _config_dict_content(config_dict: Any) -> Any:
    if isinstance(config_dict, dict) and "_content" in config_dict:
        return config_dict["_content"]
    return config_dict


def config_from_checkpoint(ckpt: dict, source: str = "checkpoint", trust: bool | None = None) -> dict:
    """The embedded training config as plain nested dicts (``config_dict["_content"]``).

    The config is untrusted data: unless ``trust`` (or ``GLIGEN_TRUST_CHECKPOINTS=1``), every
    ``target`` in it must be in :mod:`ldm.registry` and every value plain data, else
    :class:`UntrustedCheckpointError` names the target (nothing is imported). ``source`` names the
    file in messages.
    """
    if "config_dict" not in ckpt:
        raise CheckpointError(f"{source} has no 'config_dict'; pass the model config explicitly")
    try:
        content = to_plain(_config_dict_content(ckpt["config_dict"]))
        config = {k: _plain_node(v) for k, v in content.items()} if isinstance(content, dict) else content
    except Exception as e:  # OmegaConf interpolation / resolver errors
        raise CheckpointError(f"{source}: its embedded config cannot be read: {one_line(e)}") from None
    if not _trusted(trust):
        check_config_trusted(config, source)
    return config


def check_config_trusted(config: Any, source: str = "checkpoint") -> None:
    """Refuse a config that came with a downloaded file (checkpoint, Hub repo) unless it only names
    registered targets with plain-data params. Raises :class:`UntrustedCheckpointError`."""
    from ldm.registry import find_untrusted

    found = find_untrusted(config)
    if found is None:
        return
    kind, detail = found
    if kind == "target":
        raise UntrustedCheckpointError(
            f"refused: {source} has an embedded config naming the target {detail}, which is not in the registry "
            f"of GLIGEN classes ({TRUST_HINT})")
    raise UntrustedCheckpointError(f"refused: {source} has an embedded config holding a non-data value at "
                                   f"{detail} ({TRUST_HINT})")


def _plain_node(v: Any) -> Any:
    try:
        from omegaconf.nodes import ValueNode

        if isinstance(v, ValueNode):
            return v._value()
    except ImportError:  # pragma: no cover
        pass
    return v


def make_config_dict(config: Any) -> dict:
    """What we store under ``config_dict``: ``{"_content": plain config}`` (the inference reader's layout)."""
    return {"_content": to_plain(config)}


# -- building models -----------------------------------------------------------------------
@dataclass
class GLIGENModels:
    """The four parts of a GLIGEN checkpoint plus its grounding adapters."""

    model: torch.nn.Module
    autoencoder: torch.nn.Module
    text_encoder: torch.nn.Module
    diffusion: torch.nn.Module
    config: dict
    grounding_tokenizer_input: Any
    grounding_downsampler_input: Any = None

    @property
    def image_resolution(self) -> int:
        """Pixel size of generated images (512 for the released models)."""
        return self.model.image_size * self.autoencoder.downsample_factor

    def to(self, device=None, dtype=None) -> "GLIGENModels":
        for m in (self.model, self.autoencoder, self.text_encoder, self.diffusion):
            m.to(device)
        if dtype is not None:
            for m in (self.model, self.autoencoder, self.text_encoder):
                m.to(dtype)
        return self


def describe_load_error(message: str, show: int = 3) -> str:
    """torch's multi-line ``load_state_dict`` error -> one line with the counts and first few keys
    that are missing, unexpected, or of another shape."""
    import re

    found = {"missing": [], "unexpected": [], "with another shape": []}
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Missing key(s)"):
            found["missing"] += re.findall(r'"([^"]+)"', line)
        elif line.startswith("Unexpected key(s)"):
            found["unexpected"] += re.findall(r'"([^"]+)"', line)
        elif line.startswith("size mismatch for "):
            m = re.match(r"size mismatch for ([^:]+): .*?torch\.Size\(\[([^\]]*)\]\).*?torch\.Size\(\[([^\]]*)\]\)", line)
            found["with another shape"].append(f"{m.group(1)} (file [{m.group(2)}], model [{m.group(3)}])" if m
                                               else line[len("size mismatch for "):].split(":")[0])
    parts = []
    for what, keys in found.items():
        if keys:
            more = f", ... ({len(keys) - show} more)" if len(keys) > show else ""
            parts.append(f"{len(keys)} {what} key(s): {', '.join(keys[:show])}{more}")
    return "; ".join(parts) or " ".join(line.strip() for line in message.splitlines()[:3])[:600]


def load_strict(module: torch.nn.Module, state_dict: dict, what: str, hint: str = ""):
    """``load_state_dict(strict=True)``; a mismatch is a one-line :class:`CheckpointError` naming the
    counts and first few missing / unexpected / reshaped keys."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{what}: expected a state dict, got {type(state_dict).__name__}")
    try:
        module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{what}: state dict does not match the configured architecture{hint}: "
                              f"{describe_load_error(str(e))}") from None


def _build(config: dict, section: str, source: str):
    if not isinstance(config.get(section), dict):
        raise CheckpointError(f"{source}: config lacks the '{section}' section")
    try:
        return instantiate_from_config(config[section])
    except (TypeError, ValueError, KeyError, ImportError, AttributeError, AssertionError) as e:
        target = config[section].get("target")
        raise CheckpointError(f"{source}: cannot build '{section}' ({target}) from its config: "
                              f"{one_line(e)}") from None


def build_from_checkpoint(ckpt: dict | str | os.PathLike, device="cpu", config: dict | None = None,
                          trust: bool | None = None, source: str | None = None) -> GLIGENModels:
    """Instantiate model/autoencoder/text_encoder/diffusion from the embedded config and load them strictly.

    The embedded config is checked against :mod:`ldm.registry` first (see :func:`config_from_checkpoint`);
    a ``config`` passed here is the caller's own and is trusted.
    """
    source = source or (os.fspath(ckpt) if not isinstance(ckpt, dict) else "checkpoint")
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint_file(ckpt, trust=trust)
    config = to_plain(config) if config is not None else config_from_checkpoint(ckpt, source, trust)
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: its config is not a mapping")
    missing = [s for s in MODEL_SECTIONS if s not in ckpt]
    if missing:
        raise CheckpointError(f"{source} lacks sections {missing} (has {sorted(map(str, ckpt))})")
    parts = {}
    for section in MODEL_SECTIONS:
        parts[section] = _build(config, section, source)
        load_strict(parts[section], ckpt[section], section)
        parts[section].eval()
    gti = _build(config, "grounding_tokenizer_input", source)
    gdi = _build(config, "grounding_downsampler_input", source) if "grounding_downsampler_input" in config else None
    parts["model"].grounding_tokenizer_input = gti
    models = GLIGENModels(**parts, config=config, grounding_tokenizer_input=gti, grounding_downsampler_input=gdi)
    return models.to(device)


# -- Stable Diffusion v1.4 -----------------------------------------------------------------
def split_sd_checkpoint(state_dict: dict) -> dict:
    """Route an SD v1 ``state_dict`` into ``model`` / ``text_encoder`` / ``autoencoder`` / ``diffusion`` (+ ``unexpected``)."""
    out = {k: {} for k in ("model", "text_encoder", "autoencoder", "diffusion", "unexpected")}
    routes = (("model.diffusion_model.", "model"), ("cond_stage_model.", "text_encoder"), ("first_stage_model.", "autoencoder"))
    for key, value in state_dict.items():
        for prefix, section in routes:
            if key.startswith(prefix):
                out[section][key[len(prefix):]] = value
                break
        else:
            section = "unexpected" if key in ("model_ema.decay", "model_ema.num_updates") else "diffusion"
            out[section][key] = value
    return out


def read_official_ckpt(path: str | os.PathLike, trust: bool | None = None) -> dict:
    """Read an original SD v1.4 ``.ckpt`` (or ``.safetensors``) and split it (see :func:`split_sd_checkpoint`)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)[0]
    else:
        obj = safe_torch_load(path, trust=trust)
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a Stable Diffusion checkpoint (no 'state_dict')")
    if not any(k.startswith("model.diffusion_model.") for k in state):
        raise CheckpointError(f"{path}: no 'model.diffusion_model.*' keys; is this an SD v1 checkpoint?")
    return split_sd_checkpoint(state)


# -- Stable Diffusion's first conv (used by scheduled sampling of spatial-map models) --------
SD_REPO_ID = "CompVis/stable-diffusion-v1-4"
SD_UNET_FILE = "unet/diffusion_pytorch_model.safetensors"
SD_FIRST_CONV_KEYS = {"weight": "conv_in.weight", "bias": "conv_in.bias"}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_safetensors_tensors(fileobj, names: list[str]) -> dict[str, torch.Tensor]:
    """Read only ``names`` from a safetensors stream (header + byte ranges), e.g. a remote file."""
    import struct

    fileobj.seek(0)
    (header_len,) = struct.unpack("<Q", fileobj.read(8))
    header = json.loads(fileobj.read(header_len))
    out = {}
    for name in names:
        if name not in header:
            raise CheckpointError(f"tensor {name!r} not in safetensors header")
        info = header[name]
        start, end = info["data_offsets"]
        fileobj.seek(8 + header_len + start)
        data = bytearray(fileobj.read(end - start))
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        out[name] = torch.frombuffer(data, dtype=dtype).reshape(info["shape"]).float()
    return out


def _first_conv_from_state(obj: dict) -> dict[str, torch.Tensor] | None:
    """Find a 4-channel SD first conv in a loaded file: ``{"weight","bias"}``, an SD or GLIGEN box/keypoint
    state dict (``[model.diffusion_model.]input_blocks.0.0.*``) or a diffusers UNet (``conv_in.*``)."""
    for sd in (obj, obj.get("model"), obj.get("state_dict")):
        if not isinstance(sd, dict):
            continue
        for w_key, b_key in (("weight", "bias"), ("input_blocks.0.0.weight", "input_blocks.0.0.bias"),
                             ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.0.0.bias"),
                             ("conv_in.weight", "conv_in.bias")):
            w, b = sd.get(w_key), sd.get(b_key)
            if isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and w.dim() == 4 and w.shape[1] == 4:
                return {"weight": w.float(), "bias": b.float()}
    return None


def load_sd_first_conv(source: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Stable Diffusion v1.4's first UNet conv, ``{"weight": (320, 4, 3, 3), "bias": (320,)}`` float32.

    ``source``: the original ``SD_input_conv_weight_bias.pth``, an SD ``.ckpt``, a diffusers UNet file
    (``.safetensors``/``.bin``) or a GLIGEN box/keypoint checkpoint (their first conv is SD's). With None:
    ``./SD_input_conv_weight_bias.pth`` if present, else a cached copy, else the two tensors read by byte
    range from ``CompVis/stable-diffusion-v1-4`` on the Hub (about 46 KB; honours ``HF_HUB_OFFLINE``).
    """
    if source is None and os.path.isfile(SD_FIRST_CONV_FILE):
        source = SD_FIRST_CONV_FILE
    if source is not None:
        source = os.fspath(source)
        if source.endswith(".safetensors"):
            if not os.path.isfile(source):
                raise CheckpointError(f"checkpoint not found: {source}")
            with open(source, "rb") as f:
                t = read_safetensors_tensors(f, list(SD_FIRST_CONV_KEYS.values()))
            return {k: t[v] for k, v in SD_FIRST_CONV_KEYS.items()}
        conv = _first_conv_from_state(safe_torch_load(source))
        if conv is None:
            raise CheckpointError(f"{source}: no 4-channel SD first conv found (expected weight/bias, "
                                  "input_blocks.0.0.* or conv_in.*)")
        return conv

    from huggingface_hub import constants

    cached = os.path.join(constants.HF_HUB_CACHE, "gligen", SD_FIRST_CONV_FILE)
    if os.path.isfile(cached):
        return load_sd_first_conv(cached)
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError("SD v1.4 first conv not cached and HF_HUB_OFFLINE is set; pass "
                              f"--sd_first_conv {SD_FIRST_CONV_FILE} (or an SD v1.4 checkpoint)")
    from huggingface_hub import HfFileSystem

    with HfFileSystem().open(f"{SD_REPO_ID}/{SD_UNET_FILE}", "rb", block_size=1 << 16) as f:
        t = read_safetensors_tensors(f, list(SD_FIRST_CONV_KEYS.values()))
    conv = {k: t[v] for k, v in SD_FIRST_CONV_KEYS.items()}
    save_checkpoint(conv, cached)
    return conv
