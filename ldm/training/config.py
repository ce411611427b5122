"""Every training default in one place: :class:`TrainConfig`, filled from the YAML file and the CLI.

Precedence: an explicit ``--flag`` > a top-level key of ``--yaml_file`` with the same name > the
default below. The defaults reproduce the original GLIGEN ``main.py``; the flags after
``disable_inference_in_training`` are ours and default to the original's behaviour.

:func:`merged_config` gives the OmegaConf tree the rest of training reads (the YAML sections
``model``, ``autoencoder``, ... plus every field as a top-level key, as the original stored it in
``config_dict``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field

__all__ = ["TrainConfig", "build_parser", "parse_args", "merged_config", "str2bool", "str_or_none",
           "REQUIRED_SECTIONS", "PRECISIONS"]

REQUIRED_SECTIONS = ("model", "autoencoder", "text_encoder", "diffusion", "grounding_tokenizer_input",
                     "train_dataset_names")
# ``--precision`` spellings -> Lightning Fabric precision
PRECISIONS = {"fp32": "32-true", "32": "32-true", "32-true": "32-true",
              "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
              "fp16": "16-mixed", "16": "16-mixed", "16-mixed": "16-mixed", "fp16-mixed": "16-mixed"}


def str2bool(value) -> bool:
    """The original's converter: True only for a string that lower-cases to ``"true"``."""
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"


def str2bool_or_none(value):
    return None if value is None or str(value).lower() == "none" else str2bool(value)


def str_or_none(value):
    """``--ckpt none`` -> None."""
    return None if value is None or str(value).lower() == "none" else str(value)


def int_or_auto(value):
    return "auto" if str(value).lower() == "auto" else int(value)


def _f(default, help: str, type=None, **extra):
    return field(default=default, metadata={"help": help, "type": type, **extra})


@dataclass
class TrainConfig:
    # -- the original's flags
    DATA_ROOT: str = _f("DATA", "root of the catalog paths and of the SD checkpoint")
    OUTPUT_ROOT: str = _f("OUTPUT", "runs go to OUTPUT_ROOT/name/tagNN")
    name: str = _f("test", "experiment name")
    seed: int = _f(123, "seeds the data order, python, numpy and torch")
    local_rank: int = _f(0, "legacy launcher flag (accepted, unused: Fabric reads the launcher's environment)",
                         aliases=("--local-rank",))
    yaml_file: str = _f("configs/flickr_text.yaml", "training config (model sections and datasets)")
    base_learning_rate: float = _f(5e-5, "AdamW learning rate after warm-up (not scaled by batch size)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_steps: int = _f(10000, "linear warm-up from lr 0, in optimizer steps")
    scheduler_type: str = _f("constant", "constant | cosine")
    batch_size: int = _f(2, "per process (per micro-step), as the original")
    workers: int = _f(1, "DataLoader worker processes")
    official_ckpt_name: str = _f("sd-v1-4.ckpt", "Stable Diffusion v1.4 file under DATA_ROOT")
    base_model: str | None = _f(None, "any SD-1.x model instead of DATA_ROOT/official_ckpt_name: an original "
                                      ".ckpt, a single-file .safetensors, a diffusers folder or Hub repo id "
                                      "(also a YAML key)", type=str_or_none)
    ckpt: str | None = _f(None, "GLIGEN checkpoint whose 'model' is loaded (strict) after SD", type=str_or_none)
    inpaint_mode: bool = _f(False, "train the inpainting variant (+5 input channels)", type=str2bool)
    randomize_fg_mask: bool = _f(False, "inpainting: random stroke masks inside boxes", type=str2bool)
    random_add_bg_mask: bool = _f(False, "inpainting: extra random stroke mask over the image", type=str2bool)
    enable_ema: bool = _f(False, "keep an exponential moving average of the UNet", type=str2bool)
    ema_rate: float = _f(0.9999, "EMA decay")
    total_iters: int = _f(500000, "optimizer steps, counting resumed ones")
    save_every_iters: int = _f(5000, "checkpoint / preview period")
    disable_inference_in_training: bool = _f(False, "skip the preview samples", type=str2bool)
    # -- ours
    device: str = _f("auto", "accelerator", choices=("auto", "cpu", "cuda", "mps"))
    devices: int | str = _f("auto", "processes per node (auto: from torchrun / SLURM, else 1)", type=int_or_auto)
    num_nodes: int | str = _f("auto", "nodes (auto: from torchrun / SLURM, else 1)", type=int_or_auto)
    strategy: str = _f("auto", "Fabric strategy (auto: ddp when there are several processes)")
    precision: str = _f("fp32", "fp32 | bf16 (bf16-mixed) | fp16 (16-mixed, gradient scaling)",
                        choices=tuple(PRECISIONS))
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    gradient_checkpointing: bool | None = _f(None, "override model.params.use_checkpoint (default: keep it)",
                                             type=str2bool_or_none)
    preview_steps: int = _f(50, "PLMS steps of the preview samples")

    def validate(self) -> "TrainConfig":
        for name in ("batch_size", "total_iters", "save_every_iters", "gradient_accumulation_steps", "preview_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if self.scheduler_type not in ("cosine", "constant"):
            raise ValueError(f"--scheduler_type must be 'cosine' or 'constant', got {self.scheduler_type!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        return self

    @property
    def fabric_precision(self) -> str:
        return PRECISIONS[self.precision]


def _fields():
    return dataclasses.fields(TrainConfig)


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`TrainConfig` field. Flags not given are absent from the namespace
    (``argparse.SUPPRESS``), so that the YAML can fill them."""
    p = argparse.ArgumentParser(description="Train GLIGEN grounding layers on a frozen Stable Diffusion v1 UNet.",
                                argument_default=argparse.SUPPRESS)
    for f in _fields():
        meta = f.metadata
        kind = meta["type"] or type(f.default)
        kwargs = {"type": kind, "help": f"{meta['help']} (default: {f.default})"}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        p.add_argument(f"--{f.name}", *meta.get("aliases", ()), dest=f.name, **kwargs)
    return p


def _coerce(name: str, value):
    f = next(f for f in _fields() if f.name == name)
    kind = f.metadata["type"] or type(f.default)
    if value is None or isinstance(value, bool) and kind is str2bool:
        return value
    try:
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"YAML key {name!r}: cannot read {value!r} as {getattr(kind, '__name__', kind)}") from e


def load_yaml(path: str):
    """``OmegaConf.load`` with one-line errors (missing file, YAML syntax error, not a mapping)."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        config = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}: YAML syntax error{where}: {problem}") from e
    if not isinstance(config, DictConfig):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(config).__name__}")
    return config


def parse_args(argv=None) -> TrainConfig:
    """CLI (+ top-level YAML keys named like a flag) -> a validated :class:`TrainConfig`."""
    explicit = vars(build_parser().parse_args(argv))
    yaml_file = explicit.get("yaml_file", TrainConfig.yaml_file)
    names = {f.name for f in _fields()}
    from_yaml = {}
    if os.path.isfile(yaml_file):
        yaml_cfg = load_yaml(yaml_file)
        from_yaml = {k: _coerce(k, yaml_cfg[k]) for k in yaml_cfg if k in names and k not in explicit}
    return TrainConfig(**{**from_yaml, **explicit}).validate()


def merged_config(cfg: TrainConfig, world_size: int = 1):
    """The YAML with every :class:`TrainConfig` field as a top-level key, plus ``distributed`` and
    ``total_batch_size`` (what the original stored in ``config_dict``). Injects ``inpaint_mode`` and
    ``--gradient_checkpointing`` into ``model.params``."""
    config = load_yaml(cfg.yaml_file)
    missing = [k for k in REQUIRED_SECTIONS if k not in config]
    if missing:
        raise KeyError(f"{cfg.yaml_file}: missing top-level section(s) {missing}")
    for key, value in dataclasses.asdict(cfg).items():
        config[key] = value
    config.distributed = world_size > 1
    config.total_batch_size = cfg.batch_size * world_size * cfg.gradient_accumulation_steps
    if config.model.get("params") is None:
        config.model.params = {}
    config.model.params.inpaint_mode = bool(cfg.inpaint_mode)
    if cfg.gradient_checkpointing is not None:
        config.model.params.use_checkpoint = bool(cfg.gradient_checkpointing)
    return config
