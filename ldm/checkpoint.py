"""Checkpoint I/O: official GLIGEN files, SD v1.4 ``.ckpt`` files, safetensors, atomic writes.

Loading is safe by default: ``torch.load(weights_only=True)`` with an allow-list of the few
classes official files pickle (OmegaConf containers in ``config_dict``). A file that needs any
other class is refused with an error naming it; ``GLIGEN_TRUST_CHECKPOINTS=1`` (or
``trust=True``) lifts that for files you trust.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import tempfile
import typing
import zipfile
from dataclasses import dataclass
from typing import Any

import torch

from ldm.util import instantiate_from_config, to_plain

MODEL_SECTIONS = ("model", "autoencoder", "text_encoder", "diffusion")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated, tampered with or of the wrong layout."""


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

    Raises :class:`CheckpointError` (one clear line) for a missing, truncated or corrupted file, or one
    that pickles a class outside the allow-list (named in the message).
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
            raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupted?): {_first_line(e)}") from e
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "not an allowed global" in msg:
            name = _unsupported_global(msg)
            raise CheckpointError(
                f"refusing to load {path}: it pickles {name}, which is not on the allow-list of safe classes. "
                "If you trust this file, set GLIGEN_TRUST_CHECKPOINTS=1.") from e
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupted?): {_first_line(e)}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupted?): {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _unsupported_global(msg: str) -> str:
    for marker in ("Unsupported global: GLOBAL ", "Unsupported global: "):
        if marker in msg:
            return msg.split(marker, 1)[1].split()[0]
    return "an unknown class"


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


def _load_safetensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("gligen", "{}"))
        flat = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read safetensors file {path} (truncated or corrupted?): {_first_line(e)}") from e
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
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint not found: {path}")
        return _load_safetensors(path)
    obj = safe_torch_load(path, trust=trust)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
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


def config_from_checkpoint(ckpt: dict) -> dict:
    """The embedded training config as plain nested dicts (``config_dict["_content"]``)."""
    if "config_dict" not in ckpt:
        raise CheckpointError("checkpoint has no 'config_dict'; pass the model config explicitly")
    content = _config_dict_content(ckpt["config_dict"])
    return {k: _plain_node(v) for k, v in to_plain(content).items()} if isinstance(content, dict) else \
        to_plain(content)


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


def load_strict(module: torch.nn.Module, state_dict: dict, what: str):
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{what}: state dict does not match the configured architecture: {e}") from e


def build_from_checkpoint(ckpt: dict | str | os.PathLike, device="cpu", config: dict | None = None,
                          trust: bool | None = None) -> GLIGENModels:
    """Instantiate model/autoencoder/text_encoder/diffusion from the embedded config and load them strictly."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint_file(ckpt, trust=trust)
    config = to_plain(config) if config is not None else config_from_checkpoint(ckpt)
    missing = [s for s in MODEL_SECTIONS if s not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint lacks sections {missing} (has {sorted(ckpt)})")
    parts = {}
    for section in MODEL_SECTIONS:
        if section not in config:
            raise CheckpointError(f"config lacks the '{section}' section")
        parts[section] = instantiate_from_config(config[section])
        load_strict(parts[section], ckpt[section], section)
        parts[section].eval()
    gti = instantiate_from_config(config["grounding_tokenizer_input"])
    gdi = instantiate_from_config(config["grounding_downsampler_input"]) if "grounding_downsampler_input" in config else None
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
        from safetensors.torch import load_file

        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint not found: {path}")
        state = load_file(path)
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
    if source is None and os.path.isfile("SD_input_conv_weight_bias.pth"):
        source = "SD_input_conv_weight_bias.pth"
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

    cached = os.path.join(constants.HF_HUB_CACHE, "gligen", "SD_input_conv_weight_bias.pth")
    if os.path.isfile(cached):
        return load_sd_first_conv(cached)
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError("SD v1.4 first conv not cached and HF_HUB_OFFLINE is set; pass "
                              "--sd_first_conv SD_input_conv_weight_bias.pth (or an SD v1.4 checkpoint)")
    from huggingface_hub import HfFileSystem

    with HfFileSystem().open(f"{SD_REPO_ID}/{SD_UNET_FILE}", "rb", block_size=1 << 16) as f:
        t = read_safetensors_tensors(f, list(SD_FIRST_CONV_KEYS.values()))
    conv = {k: t[v] for k, v in SD_FIRST_CONV_KEYS.items()}
    save_checkpoint(conv, cached)
    return conv
