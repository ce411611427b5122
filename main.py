"""Train GLIGEN (training.md §1).

One device::

    python main.py --yaml_file configs/flickr_text.yaml --DATA_ROOT DATA --name flickr_text

Several processes (one per GPU; CPU processes use gloo)::

    torchrun --nproc_per_node=8 main.py --yaml_file configs/flickr_text.yaml --DATA_ROOT DATA --batch_size 4
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 main.py ...

Rank and world size come from the environment torchrun sets (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``); ``--local_rank`` / ``--local-rank`` are still accepted (legacy launcher).
Every CLI argument becomes a top-level key of the config, overriding the YAML. Relaunching with
the same ``--OUTPUT_ROOT/--name`` resumes from the newest ``checkpoint_latest.pth``.

Inpainting: convert a generation checkpoint with ``convert_ckpt.py``, then add
``--inpaint_mode True --ckpt <converted>``.
"""
from __future__ import annotations

import argparse
import os
import sys


def str2bool(value) -> bool:
    """The original's converter: True only for a string that lower-cases to ``"true"``."""
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"


def str2bool_or_none(value):
    if value is None or str(value).lower() == "none":
        return None
    return str2bool(value)


def str_or_none(value):
    """``--ckpt none`` -> None."""
    return None if value is None or str(value).lower() == "none" else str(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train GLIGEN grounding layers on a frozen Stable Diffusion v1 UNet.")
    # -- the original's arguments (training.md §1.2)
    p.add_argument("--DATA_ROOT", type=str, default="DATA", help="root of the catalog paths and the SD checkpoint")
    p.add_argument("--OUTPUT_ROOT", type=str, default="OUTPUT", help="experiments go to OUTPUT_ROOT/name/tagNN")
    p.add_argument("--name", type=str, default="test", help="experiment name")
    p.add_argument("--seed", type=int, default=123, help="seeds the sampler, python, numpy and torch")
    p.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=0,
                   help="legacy launcher flag; torchrun's LOCAL_RANK takes precedence")
    p.add_argument("--yaml_file", type=str, default="configs/flickr_text.yaml", help="training config")
    p.add_argument("--base_learning_rate", type=float, default=5e-5, help="AdamW lr after warm-up")
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--warmup_steps", type=int, default=10000)
    p.add_argument("--scheduler_type", type=str, default="constant", help="constant | cosine")
    p.add_argument("--batch_size", type=int, default=2, help="per process (per micro-step)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--official_ckpt_name", type=str, default="sd-v1-4.ckpt", help="SD v1.4 file under DATA_ROOT")
    p.add_argument("--ckpt", type=str_or_none, default=None, help="GLIGEN checkpoint loaded (strict) after SD")
    p.add_argument("--inpaint_mode", type=str2bool, default=False)
    p.add_argument("--randomize_fg_mask", type=str2bool, default=False)
    p.add_argument("--random_add_bg_mask", type=str2bool, default=False)
    p.add_argument("--enable_ema", type=str2bool, default=False)
    p.add_argument("--ema_rate", type=float, default=0.9999)
    p.add_argument("--total_iters", type=int, default=500000, help="optimizer steps, counting resumed ones")
    p.add_argument("--save_every_iters", type=int, default=5000)
    p.add_argument("--disable_inference_in_training", type=str2bool, default=False)
    # -- our additions (defaults reproduce the original)
    p.add_argument("--device", type=str, default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", type=str, default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="autocast precision of the UNet/encoders (fp16 adds a GradScaler)")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="micro-batches per optimizer step (total_iters counts optimizer steps)")
    p.add_argument("--gradient_checkpointing", type=str2bool_or_none, default=None,
                   help="override the config's model.params.use_checkpoint (default: keep it)")
    p.add_argument("--preview_steps", type=int, default=50, help="PLMS steps of the preview samples")
    return p


def build_config(args: argparse.Namespace, world_size: int = 1):
    """YAML + every CLI argument as a top-level key (+ ``distributed``, ``total_batch_size``)."""
    from omegaconf import OmegaConf

    if not os.path.isfile(args.yaml_file):
        raise FileNotFoundError(f"config file not found: {args.yaml_file}")
    config = OmegaConf.load(args.yaml_file)
    for key, value in vars(args).items():
        config[key] = value
    config.distributed = world_size > 1
    config.total_batch_size = args.batch_size * world_size * args.gradient_accumulation_steps
    for key in ("model", "autoencoder", "text_encoder", "diffusion", "grounding_tokenizer_input", "train_dataset_names"):
        if key not in config:
            raise KeyError(f"{args.yaml_file}: missing top-level section '{key}'")
    if config.model.get("params") is None:
        config.model.params = {}
    config.model.params.inpaint_mode = bool(args.inpaint_mode)
    if args.gradient_checkpointing is not None:
        config.model.params.use_checkpoint = bool(args.gradient_checkpointing)
    return config


def validate_args(args) -> None:
    if args.scheduler_type not in ("cosine", "constant"):
        raise ValueError(f"--scheduler_type must be 'cosine' or 'constant', got {args.scheduler_type!r}")
    for name in ("batch_size", "total_iters", "save_every_iters", "gradient_accumulation_steps", "preview_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        raise ValueError("--workers must be >= 0")


def run(args) -> None:
    import torch

    from distributed import cleanup_distributed, env_local_rank, setup_distributed
    from trainer import Trainer, resolve_device

    validate_args(args)
    args.local_rank = env_local_rank(args.local_rank)
    device = resolve_device(args.device, args.local_rank)
    info = setup_distributed(device, args.local_rank)
    try:
        config = build_config(args, info.world_size)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        trainer = Trainer(config, device=device, local_rank=args.local_rank)
        trainer.start_training()
    finally:
        cleanup_distributed()


def main(argv=None) -> int:
    import torch.multiprocessing as mp

    try:  # DataLoader workers are spawned (datasets must be picklable), as in the original
        mp.set_start_method("spawn")
    except RuntimeError:
        pass
    args = build_parser().parse_args(argv)
    from ldm.checkpoint import CheckpointError

    usage_errors = (FileNotFoundError, NotADirectoryError, PermissionError, KeyError, ValueError, CheckpointError)
    try:
        run(args)
    except usage_errors as e:  # expected user errors: one line (GLIGEN_DEBUG=1 shows the traceback)
        if os.environ.get("GLIGEN_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
