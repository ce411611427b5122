"""GLIGEN training, top to bottom: :func:`train` builds a run from a
:class:`~ldm.training.config.TrainConfig` and runs the loop.

A frozen Stable Diffusion v1 UNet learns nothing; GLIGEN's gated self-attention layers, the
grounding tokenizer (``position_net``) and, for spatial conditions, the downsampler and the widened
first conv do (Li et al., "GLIGEN: Open-Set Grounded Text-to-Image Generation", CVPR 2023).

Pieces, in the order :func:`train` uses them (all in :mod:`ldm.training`):
``config`` (every default), ``launch`` (Lightning Fabric: devices, precision, DDP, torchrun / SLURM),
``data`` (seeded, exactly resumable data stream), ``build`` (models, optimizer, schedule, EMA,
resume), ``loss`` (the objective), ``preview`` (sample grids), ``state`` (RNG, run folders,
strict loads).

Differences from the original ``trainer.py``, all keeping its training semantics with the default
flags: the frozen UNet parameters have ``requires_grad=False`` (same updates, less memory);
seeded, exactly resumable runs (RNG states of every rank, data position, per-sample augmentation
seeds); ``DistributedSampler.set_epoch`` is called every epoch; previews sample a fixed batch
without touching the training RNG; optional mixed precision, gradient accumulation, device choice;
EMA averages the trainable parameters only and starts from the resumed weights.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import warnings

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from ldm.checkpoint import make_config_dict, official_text_encoder_state, read_official_ckpt, save_checkpoint
from ldm.training.build import (Models, TrainState, build_models, build_train_state, count_params, make_ema,
                                make_scheduler, update_ema)
from ldm.training.config import TrainConfig, merged_config
from ldm.training.data import (InfiniteLoader, ResumableDistributedSampler, SeededSamples, batch_to_device,
                               build_train_dataset, build_train_loader, sub_batch, wrap_loader)
from ldm.training.launch import grad_scaler, make_fabric
from ldm.training.loss import get_input, loss
from ldm.training.preview import ImageCaptionSaver, check_preview_steps, fixed_preview_batch, save_preview
from ldm.training.state import (ConfigMismatchError, atomic_link_or_copy, capture_rng_state, check_resume_config,
                                config_differences, create_expt_folder_with_auto_resuming, disable_grads,
                                is_trainable_name, load_resume_checkpoint, preserved_rng, resolve_device,
                                restore_rng_state, resume_position, seed_everything, select_trainable_parameters)

__all__ = [
    "train", "TrainConfig", "Models", "TrainState", "loss", "get_input", "ConfigMismatchError",
    # the original trainer.py's helper names
    "read_official_ckpt", "batch_to_device", "sub_batch", "wrap_loader", "disable_grads", "count_params",
    "update_ema", "ImageCaptionSaver", "create_expt_folder_with_auto_resuming",
    # building blocks
    "make_ema", "make_scheduler", "is_trainable_name", "select_trainable_parameters", "config_differences",
    "resolve_device", "seed_everything", "capture_rng_state", "restore_rng_state", "SeededSamples",
    "ResumableDistributedSampler", "InfiniteLoader",
]


def train(cfg: TrainConfig) -> None:
    """Train GLIGEN as ``cfg`` says; on every process of the job (Fabric starts them if needed)."""
    fabric = make_fabric(cfg)
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    config = merged_config(cfg, world)
    if not cfg.disable_inference_in_training:  # fail now, not at the first preview
        check_preview_steps(cfg.preview_steps, int((config.diffusion.get("params") or {}).get("timesteps", 1000)))

    # -- run folder and resume checkpoint, decided on rank 0; nothing is written before the loop
    run_folder, resume_path = fabric.broadcast(create_expt_folder_with_auto_resuming(cfg.OUTPUT_ROOT, cfg.name))
    resume = load_resume_checkpoint(resume_path) if resume_path else None
    if resume is not None:
        check_resume_config(resume, resume_path, OmegaConf.to_container(config.model, resolve=True))
        fabric.print(f"auto-resuming from {resume_path}")

    # -- data first: a missing TSV, an unknown dataset or unreadable rows fail before the models are built
    dataset = build_train_dataset(config.train_dataset_names, cfg.DATA_ROOT, config.get("train_dataset_repeats"),
                                  verbose=rank == 0)
    loader = build_train_loader(dataset, cfg.batch_size, cfg.seed, rank, world, workers=cfg.workers,
                                pin_memory=fabric.device.type == "cuda")
    preview_batch = probe_batch(loader.dataset, cfg.seed, cfg.batch_size)

    # -- models (same seed on every rank: identical initial GLIGEN weights), optimizer, EMA, resume
    seed_everything(cfg.seed)
    models = build_models(config, frozen_fallback=resume, log=fabric.print)
    for module in (models.unet, models.autoencoder, models.text_encoder, models.diffusion):
        fabric.to_device(module)
    state = build_train_state(models, cfg, resume, verbose=rank == 0)
    unet, opt = fabric.setup(models.unet, state.opt)  # DDP wrapper and precision
    scaler = grad_scaler(fabric)
    if resume is not None and scaler is not None and "scaler" in resume:
        scaler.load_state_dict(resume["scaler"])
    loader_state, rng_state = resume_position(resume, rank, world, cfg.batch_size, cfg.seed) if resume else (None, None)
    data = InfiniteLoader(loader, loader.sampler, **(loader_state or {}))
    if state.iters >= cfg.total_iters:
        fabric.barrier()
        fabric.print(f"Training finished: checkpoint is at iteration {state.iters} >= total_iters {cfg.total_iters}")
        return
    run = open_run_folder(fabric, run_folder, config, models, preview_batch, dataset, cfg)
    if rng_state is not None:  # last: nothing may draw random numbers between this and the first step
        restore_rng_state(rng_state, fabric.device)
    else:
        seed_everything(cfg.seed + rank)
    fabric.barrier()

    # -- the loop: one optimizer step per iteration, ``gradient_accumulation_steps`` micro-batches each
    from tqdm.auto import tqdm

    accum = cfg.gradient_accumulation_steps
    unet.train()
    for it in tqdm(range(state.iters, cfg.total_iters), initial=state.iters, total=cfg.total_iters,
                   desc="Training progress", disable=rank != 0, dynamic_ncols=True):
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for micro in range(accum):
            batch = fabric.to_device(next(data))
            with fabric.no_backward_sync(unet, enabled=world > 1 and micro < accum - 1):
                with fabric.autocast():
                    losses = loss(models, batch, unet=unet)
                fabric.backward(losses["loss"] / accum)
            loss_sum += losses["loss"].item()
        lr = opt.param_groups[0]["lr"]  # the lr of this update
        opt.step()
        state.scheduler.step()
        if state.ema is not None:
            update_ema(state.ema_params, state.params, rate=cfg.ema_rate)
        state.iters = it + 1

        if it % 10 == 0:
            log_scalars(fabric, run["logger"], models.unet, {"loss": loss_sum / accum}, lr, step=it + 1)
        if it == 0 or it % cfg.save_every_iters == 0 or it == cfg.total_iters - 1:
            save_checkpoint_and_preview(fabric, run, models, state, data, cfg)

    fabric.barrier()
    hashes = all_gather_objects(fabric, trainable_state_hash(models.unet, state.trainable_names))
    fabric.print(f"trainable parameter sha256 per rank: {hashes}")
    if len(set(hashes)) != 1:
        warnings.warn(f"ranks hold different trainable weights: {hashes}")
    fabric.print("Training finished")
    if run["logger"] is not None:
        run["logger"].finalize("success")


# ------------------------------------------------------------------------------------ helpers
def probe_batch(samples: SeededSamples, seed: int, batch_size: int) -> dict:
    """The preview batch (first ``batch_size`` samples, fixed augmentation seeds), read before
    anything is written: unreadable data fails here with one line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            batch = fixed_preview_batch(samples, seed, batch_size)
        except RuntimeError as e:
            raise ValueError(f"cannot read the training data: {str(e).splitlines()[0]}") from e
    for w in caught:  # the data could be read: show what was skipped
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return batch


def open_run_folder(fabric, run_folder: str, config, models: Models, preview_batch: dict, dataset, cfg) -> dict:
    """Rank 0 creates ``run_folder`` (config copies, ``Log/`` for TensorBoard, preview writer)."""
    run = {"folder": run_folder, "config_dict": make_config_dict(config), "logger": None, "saver": None,
           "preview": None}
    if fabric.global_rank == 0:
        from lightning.fabric.loggers import TensorBoardLogger

        os.makedirs(os.path.join(run_folder, "Log"), exist_ok=True)
        if os.path.isfile(cfg.yaml_file):
            shutil.copyfile(cfg.yaml_file, os.path.join(run_folder, "train_config_file.yaml"))
        OmegaConf.save(config, os.path.join(run_folder, "merged_config.yaml"))
        save_checkpoint(run["config_dict"], os.path.join(run_folder, "config_dict.pth"))
        run["logger"] = TensorBoardLogger(root_dir=run_folder, name="Log", version="", default_hp_metric=False)
        if not cfg.disable_inference_in_training:
            saver = ImageCaptionSaver(run_folder)
            vis = dataset.datasets[0] if hasattr(dataset, "datasets") else None
            run["preview"] = lambda iter_name: save_preview(models, preview_batch, saver, iter_name, cfg.preview_steps,
                                                            fabric.device, vis, fabric.autocast)
    return run


def log_scalars(fabric, logger, unet, losses: dict, lr: float, step: int) -> None:
    """Loss (mean over ranks), learning rate and every gate's tanh(alpha); collective, rank 0 writes."""
    names = sorted(losses)
    values = fabric.all_reduce(torch.tensor([losses[k] for k in names], dtype=torch.float64, device=fabric.device),
                               reduce_op="mean")
    if logger is None:
        return
    scalars = {k: float(v) for k, v in zip(names, values.cpu())} | {"lr": lr}
    scalars |= {"gates/" + n: float(torch.tanh(p.detach().float())) for n, p in unet.named_parameters()
                if n.endswith(("alpha_attn", "alpha_dense"))}
    logger.log_metrics(scalars, step=step)


def checkpoint_dict(models: Models, state: TrainState, data: InfiniteLoader, rng_states: list, config_dict: dict,
                    scaler, cfg, world: int) -> dict:
    """The original's keys (``model, text_encoder, autoencoder, diffusion, opt, scheduler, iters,
    config_dict[, ema]``) plus ``rng`` (every rank's), ``loader`` (data position) and ``scaler``."""
    ckpt = {
        "model": models.unet.state_dict(),
        "text_encoder": official_text_encoder_state(models.text_encoder.state_dict()),
        "autoencoder": models.autoencoder.state_dict(),
        "diffusion": models.diffusion.state_dict(),
        "opt": state.opt.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "iters": state.iters,
        "config_dict": config_dict,
        "rng": rng_states,
        "loader": {**data.state(), "world_size": world, "batch_size": cfg.batch_size, "seed": cfg.seed},
    }
    if state.ema is not None:
        ckpt["ema"] = state.ema.state_dict()
    if scaler is not None:
        ckpt["scaler"] = scaler.state_dict()
    return ckpt


def save_checkpoint_and_preview(fabric, run: dict, models: Models, state: TrainState, data: InfiniteLoader,
                                cfg) -> None:
    """Collective: gathers every rank's RNG state; rank 0 writes the preview, ``checkpoint_<iters>.pth``
    (atomically) and links ``checkpoint_latest.pth`` to it."""
    rng_states = all_gather_objects(fabric, capture_rng_state(fabric.device))
    if fabric.global_rank == 0:
        if run["preview"] is not None:
            with preserved_rng(fabric.device):
                run["preview"](state.iters)
        path = os.path.join(run["folder"], f"checkpoint_{state.iters:08d}.pth")
        save_checkpoint(checkpoint_dict(models, state, data, rng_states, run["config_dict"], grad_scaler(fabric), cfg,
                                        fabric.world_size), path)
        atomic_link_or_copy(path, os.path.join(run["folder"], "checkpoint_latest.pth"))
    fabric.barrier()


def all_gather_objects(fabric, obj) -> list:
    """Any picklable object from every rank, ordered by rank (Fabric gathers tensors only)."""
    if fabric.world_size == 1:
        return [obj]
    out = [None] * fabric.world_size
    dist.all_gather_object(out, obj)
    return out


def trainable_state_hash(unet: torch.nn.Module, names: list[str]) -> str:
    """sha256 over the trainable parameters (names and bytes), to compare ranks and runs."""
    h = hashlib.sha256()
    params = dict(unet.named_parameters())
    for name in names:
        h.update(name.encode())
        h.update(params[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
