"""GLIGEN training loop (training.md §2): a frozen Stable Diffusion v1 UNet plus trainable
gated self-attention layers, grounding tokenizer and (spatial models) downsampler.

Reading order: :class:`Trainer` (``__init__`` builds everything, ``run_one_step`` is the loss of
spec §2.6, ``start_training`` the loop, ``save_ckpt_and_result`` checkpoints and previews).
The pieces live in :mod:`ldm.training`: ``data`` (seeded, resumable data stream), ``state``
(seeding / RNG, trainable parameters, EMA, run folders, resume checks) and ``preview``.
The helpers the spec places here (``batch_to_device``, ``sub_batch``, ``wrap_loader``,
``disable_grads``, ``count_params``, ``update_ema``, ``read_official_ckpt``) are re-exported.

Differences from the original, all with defaults that keep its training semantics:

* ``requires_grad=False`` on the frozen UNet parameters (same updates, less memory / traffic);
* seeded, exactly resumable runs: python/numpy/torch RNG states of every rank, the data
  position and every sample's augmentation randomness are restored from the checkpoint;
* ``DistributedSampler`` with ``set_epoch`` (the original never called it), also in the
  single-process case (one replica), so both cases shuffle the same way;
* previews sample a fixed batch in eval mode without touching the training RNG or data stream;
* optional autocast (fp16 + GradScaler / bf16), gradient accumulation, device choice;
* EMA (off by default) averages the trainable parameters only (the frozen ones are constant).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import warnings

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from distributed import all_gather, broadcast_object, get_rank, get_world_size, reduce_loss_dict, synchronize
from ldm.checkpoint import (CheckpointError, load_checkpoint_file, make_config_dict, official_text_encoder_state,
                            read_official_ckpt, save_checkpoint)
from ldm.training.data import (InfiniteLoader, ResumableDistributedSampler, SeededSamples, batch_to_device,
                               build_train_dataset, build_train_loader, sub_batch, wrap_loader)
from ldm.training.preview import ImageCaptionSaver, check_preview_steps, fixed_preview_batch, save_preview
from ldm.training.state import (ConfigMismatchError, atomic_link_or_copy, capture_rng_state, check_resume_config,
                                config_differences, count_params, create_expt_folder_with_auto_resuming,
                                disable_grads, is_trainable_name, load_strict, make_ema, preserved_rng, resolve_device,
                                restore_rng_state, resume_position, seed_everything, select_trainable_parameters,
                                update_ema)
from ldm.devices import DTYPES
from ldm.util import instantiate_from_config, to_plain

__all__ = [
    "Trainer", "ConfigMismatchError", "read_official_ckpt", "batch_to_device", "sub_batch", "wrap_loader",
    "disable_grads", "count_params", "update_ema", "ImageCaptionSaver", "create_expt_folder_with_auto_resuming",
    "is_trainable_name", "select_trainable_parameters", "config_differences", "resolve_device", "seed_everything",
    "capture_rng_state", "restore_rng_state", "SeededSamples", "ResumableDistributedSampler", "InfiniteLoader",
]

PRECISIONS = DTYPES


# ================================================================================= trainer
def _get(config, key: str, default=None):
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else value


class Trainer:
    """Builds models, data, optimizer from the merged config (YAML + ``main.py`` arguments) and trains.

    Attributes after construction: ``model`` (possibly DDP-wrapped UNet), ``unet`` (unwrapped),
    ``autoencoder``, ``text_encoder``, ``diffusion``, ``grounding_tokenizer_input``,
    ``grounding_downsampler_input``, ``opt``, ``scheduler``, ``ema``, ``loader_train``,
    ``starting_iter``, ``run_folder``, ``trainable_names``.
    """

    # ------------------------------------------------------------------ construction
    def __init__(self, config, device: torch.device | None = None, local_rank: int = 0):
        if not isinstance(config, DictConfig):
            config = OmegaConf.create(to_plain(config))
        self.config = config
        self.rank, self.world_size = get_rank(), get_world_size()
        self.distributed = self.world_size > 1
        self.local_rank = int(_get(config, "local_rank", local_rank))
        self.device = device if device is not None else resolve_device(_get(config, "device", "auto"), self.local_rank)
        self.l_simple_weight = 1
        self.seed = int(_get(config, "seed", 123))
        self.total_iters = int(config.total_iters)
        self.save_every_iters = int(config.save_every_iters)
        self.batch_size = int(config.batch_size)
        self.grad_accum = int(_get(config, "gradient_accumulation_steps", 1))
        if self.grad_accum < 1:
            raise ValueError("--gradient_accumulation_steps must be >= 1")
        precision = _get(config, "precision", "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.inpaint_mode = bool(_get(config, "inpaint_mode", False))
        self.randomize_fg_mask = bool(_get(config, "randomize_fg_mask", False))
        self.random_add_bg_mask = bool(_get(config, "random_add_bg_mask", False))
        self.enable_ema = bool(_get(config, "enable_ema", False))
        self.ema_rate = float(_get(config, "ema_rate", 0.9999))
        self.preview_steps = int(_get(config, "preview_steps", 50))
        if not bool(_get(config, "disable_inference_in_training", False)):  # fail now, not at the first preview
            check_preview_steps(self.preview_steps, int((config.diffusion.get("params") or {}).get("timesteps", 1000)))
        self.writer = None

        # -- output folder / auto-resume (decided on rank 0, shared with the others)
        run_folder, resume_path = create_expt_folder_with_auto_resuming(config.OUTPUT_ROOT, config.name)
        self.run_folder, resume_path = broadcast_object((run_folder, resume_path))
        resume_ckpt = load_checkpoint_file(resume_path) if resume_path else None
        if resume_ckpt is not None:
            check_resume_config(resume_ckpt, resume_path, OmegaConf.to_container(config.model, resolve=True))
            self.print(f"auto-resuming from {resume_path}")

        # -- data first: a missing TSV or an unknown dataset fails before anything is built
        self.dataset_train = build_train_dataset(config.train_dataset_names, config.DATA_ROOT,
                                                 _get(config, "train_dataset_repeats", None), verbose=self.rank == 0)
        self._loader = build_train_loader(self.dataset_train, self.batch_size, self.seed, self.rank, self.world_size,
                                          workers=int(_get(config, "workers", 1)),
                                          pin_memory=self.device.type == "cuda")
        self._preview_batch = None

        # -- models (same seed on every rank: identical initial GLIGEN weights)
        seed_everything(self.seed)
        self.model = instantiate_from_config(config.model)
        self.autoencoder = instantiate_from_config(config.autoencoder)
        self.text_encoder = instantiate_from_config(config.text_encoder)
        self.diffusion = instantiate_from_config(config.diffusion)
        self._load_pretrained(resume_ckpt)
        for m in (self.model, self.autoencoder, self.text_encoder, self.diffusion):
            m.to(self.device)
        self.autoencoder.eval()
        self.text_encoder.eval()
        disable_grads(self.autoencoder)
        disable_grads(self.text_encoder)

        # -- trainable parameters, optimizer, EMA, schedule
        trainable, frozen = select_trainable_parameters(self.model, self.input_conv_train, self.original_params_names)
        for _, p in frozen:
            p.requires_grad_(False)
        for _, p in trainable:
            p.requires_grad_(True)
        self.trainable_names = [n for n, _ in trainable]
        params = [p for _, p in trainable]
        self.opt = torch.optim.AdamW(params, lr=config.base_learning_rate, weight_decay=config.weight_decay)
        if self.rank == 0:
            count_params(params)
        self.ema = None
        if self.enable_ema:
            self.ema, self.ema_params = make_ema(self.model, self.trainable_names)
            self.master_params = params
        self.scheduler = self._make_scheduler()
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

        # -- auto-resume
        self.starting_iter = 0
        loader_state, rng_states = None, None
        if resume_ckpt is not None:
            loader_state, rng_states = self._load_resume_state(resume_ckpt)

        # -- grounding adapters (attached to the UNet: it builds null inputs from them)
        self.grounding_tokenizer_input = instantiate_from_config(config.grounding_tokenizer_input)
        self.model.grounding_tokenizer_input = self.grounding_tokenizer_input
        self.grounding_downsampler_input = (instantiate_from_config(config.grounding_downsampler_input)
                                            if "grounding_downsampler_input" in config else None)

        # -- folders (rank 0 writes)
        self.config_dict = make_config_dict(config)
        if self.rank == 0:
            os.makedirs(os.path.join(self.run_folder, "Log"), exist_ok=True)
            yaml_file = _get(config, "yaml_file", None)
            if yaml_file and os.path.isfile(yaml_file):
                shutil.copyfile(yaml_file, os.path.join(self.run_folder, "train_config_file.yaml"))
            OmegaConf.save(config, os.path.join(self.run_folder, "merged_config.yaml"))
            save_checkpoint(self.config_dict, os.path.join(self.run_folder, "config_dict.pth"))
            self.writer = _summary_writer(os.path.join(self.run_folder, "Log"))
            self.image_caption_saver = ImageCaptionSaver(self.run_folder)

        # -- DDP
        self.unet = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.unet, device_ids=ids, output_device=ids[0] if ids else None,
                             broadcast_buffers=False)

        # -- the data stream and RNG streams (last: nothing may consume randomness after this)
        self.loader_train = InfiniteLoader(self._loader, self._loader.sampler, **(loader_state or {}))
        if rng_states is not None:
            restore_rng_state(rng_states, self.device)
        else:
            seed_everything(self.seed + self.rank)
        synchronize()

    @classmethod
    def for_modules(cls, model, autoencoder, text_encoder, diffusion, grounding_tokenizer_input,
                    grounding_downsampler_input=None, inpaint_mode: bool = False, device="cpu",
                    precision: str = "fp32", randomize_fg_mask: bool = False, random_add_bg_mask: bool = False):
        """A Trainer holding only ready modules, for :meth:`run_one_step` (tests, notebooks)."""
        self = cls.__new__(cls)
        self.model = self.unet = model
        self.autoencoder, self.text_encoder, self.diffusion = autoencoder, text_encoder, diffusion
        self.grounding_tokenizer_input = grounding_tokenizer_input
        self.grounding_downsampler_input = grounding_downsampler_input
        model.grounding_tokenizer_input = grounding_tokenizer_input
        self.inpaint_mode, self.device, self.precision = inpaint_mode, torch.device(device), precision
        self.randomize_fg_mask, self.random_add_bg_mask = randomize_fg_mask, random_add_bg_mask
        self.l_simple_weight = 1
        return self

    def print(self, *args, **kwargs):
        if self.rank == 0:
            print(*args, **kwargs, flush=True)

    def _load_pretrained(self, resume_ckpt: dict | None) -> None:
        """SD v1.4 (strict=False, widened first conv) -> optional ``--ckpt`` (strict) (spec §2.1 steps 5-10)."""
        config = self.config
        additional = int(self.model.additional_channel_from_downsampler)
        if self.inpaint_mode:
            additional += self.model.in_channels + 1  # masked latent + mask
        self.input_conv_train = additional > 0
        self.original_params_names = None

        ckpt_path = _get(config, "ckpt", None)
        extra = load_checkpoint_file(ckpt_path) if ckpt_path else None
        sd_path = os.path.join(config.DATA_ROOT, config.official_ckpt_name)
        if os.path.isfile(sd_path):
            from convert_ckpt import add_additional_channels

            state_dict = read_official_ckpt(sd_path)
            sd_model = state_dict["model"]
            if additional and sd_model["input_blocks.0.0.weight"].shape[1] == self.model.in_channels:
                add_additional_channels(sd_model, additional)
            missing, unexpected = self.model.load_state_dict(sd_model, strict=False)
            if unexpected:
                raise CheckpointError(f"{sd_path}: {len(unexpected)} unexpected UNet keys, e.g. {unexpected[:5]} "
                                      "(is it a Stable Diffusion v1 checkpoint matching the model config?)")
            params = dict(self.model.named_parameters())
            bad = [k for k in missing if k in params and not is_trainable_name(k, False)]
            if bad:
                raise CheckpointError(f"{sd_path}: lacks {len(bad)} SD UNet weights, e.g. {bad[:5]}")
            self.original_params_names = list(sd_model.keys())
            frozen_sources = state_dict
        else:
            source = next((c for c in (resume_ckpt, extra)
                           if c is not None and all(k in c for k in ("text_encoder", "autoencoder", "diffusion"))), None)
            if source is None:
                raise FileNotFoundError(f"Stable Diffusion checkpoint not found: {sd_path} "
                                        "(set --DATA_ROOT / --official_ckpt_name)")
            self.print(f"{sd_path} not found: taking the frozen parts from the GLIGEN checkpoint")
            frozen_sources = source
        for name in ("autoencoder", "text_encoder", "diffusion"):
            load_strict(getattr(self, name), frozen_sources[name], name)
        if extra is not None:
            if "model" not in extra:
                raise CheckpointError(f"--ckpt {ckpt_path}: no 'model' entry")
            hint = ""
            w = extra["model"].get("input_blocks.0.0.weight")
            if w is not None and w.shape[1] != self.model.input_blocks[0][0].in_channels:
                hint = (f" (its first conv takes {w.shape[1]} channels, the model {self.model.input_blocks[0][0].in_channels}"
                        + ("; convert it with convert_ckpt.py first" if self.inpaint_mode else "") + ")")
            load_strict(self.model, extra["model"], f"--ckpt {ckpt_path}", hint)

    def _make_scheduler(self):
        from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

        kind = self.config.scheduler_type
        if kind == "cosine":
            return get_cosine_schedule_with_warmup(self.opt, num_warmup_steps=self.config.warmup_steps,
                                                   num_training_steps=self.total_iters)
        if kind == "constant":
            return get_constant_schedule_with_warmup(self.opt, num_warmup_steps=self.config.warmup_steps)
        raise ValueError(f"scheduler_type must be 'cosine' or 'constant', got {kind!r}")

    def _load_resume_state(self, ckpt: dict):
        """Model, EMA, optimizer, scheduler, scaler, iteration; returns (loader_state, this rank's RNG state)."""
        load_strict(self.model, ckpt["model"], "resume checkpoint")
        if self.ema is not None:
            if "ema" in ckpt:
                load_strict(self.ema, ckpt["ema"], "resume checkpoint (ema)")
            else:
                warnings.warn("resume checkpoint has no 'ema'; EMA restarts from the current weights")
        self.opt.load_state_dict(ckpt["opt"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.starting_iter = int(ckpt["iters"])
        return resume_position(ckpt, self.rank, self.world_size, self.batch_size, self.seed)

    # ------------------------------------------------------------------ one step
    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    @torch.no_grad()
    def get_input(self, batch: dict, timesteps: torch.Tensor | None = None):
        """batch -> (x_start (B,4,h,w), t (B,), context (B,77,D), inpainting_extra_input (B,5,h,w)|None,
        grounding_extra_input|None). RNG order: VAE posterior sample (CPU randn), then timesteps."""
        with self.autocast():
            x_start = self.autoencoder.encode(batch["image"]).float()
            context = self.text_encoder.encode(list(batch["caption"])).float()
        if timesteps is None:
            t = self.diffusion.sample_timesteps(x_start.shape[0], device=x_start.device)
        else:
            t = timesteps.to(x_start.device)
        inpainting_extra_input = None
        if self.inpaint_mode:
            from inpaint_mask_func import draw_masks_from_boxes

            mask = draw_masks_from_boxes(batch["boxes"], x_start.shape[-1], randomize_fg_mask=self.randomize_fg_mask,
                                         random_add_bg_mask=self.random_add_bg_mask).to(x_start)
            inpainting_extra_input = torch.cat([x_start * mask, mask], dim=1)
        grounding_extra_input = None
        if self.grounding_downsampler_input is not None:
            grounding_extra_input = self.grounding_downsampler_input.prepare(batch)
        return x_start, t, context, inpainting_extra_input, grounding_extra_input

    def run_one_step(self, batch: dict, timesteps: torch.Tensor | None = None, noise: torch.Tensor | None = None):
        """Spec §2.6: the ε-prediction MSE loss of one batch (scalar tensor with grad).

        ``timesteps`` / ``noise`` override the random draws (tests)."""
        x_start, t, context, inpainting_extra_input, grounding_extra_input = self.get_input(batch, timesteps)
        noise = torch.randn_like(x_start) if noise is None else noise.to(x_start)
        x_noisy = self.diffusion.q_sample(x_start=x_start, t=t, noise=noise)
        grounding_input = self.grounding_tokenizer_input.prepare(batch)
        input = dict(x=x_noisy, timesteps=t, context=context, inpainting_extra_input=inpainting_extra_input,
                     grounding_extra_input=grounding_extra_input, grounding_input=grounding_input)
        with self.autocast():
            model_output = self.model(input)
        loss = F.mse_loss(model_output.float(), noise) * self.l_simple_weight
        self.loss_dict = {"loss": loss.item()}
        return loss

    # ------------------------------------------------------------------ loop
    def start_training(self) -> None:
        from tqdm.auto import tqdm

        if self.starting_iter >= self.total_iters:
            synchronize()
            self.print(f"Training finished: checkpoint is at iteration {self.starting_iter} >= total_iters "
                       f"{self.total_iters}")
            return
        bar = tqdm(range(self.starting_iter, self.total_iters), initial=self.starting_iter, total=self.total_iters,
                   desc="Training progress", disable=self.rank != 0, dynamic_ncols=True)
        self.model.train()
        for iter_idx in bar:
            self.iter_idx = iter_idx
            self.opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for micro in range(self.grad_accum):
                batch = batch_to_device(next(self.loader_train), self.device)
                sync = (not self.distributed) or micro == self.grad_accum - 1
                with contextlib.nullcontext() if sync else self.model.no_sync():
                    loss = self.run_one_step(batch)
                    loss = loss / self.grad_accum
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                loss_sum += self.loss_dict["loss"]
            self.current_lr = self.opt.param_groups[0]["lr"]  # the lr of this update
            if self.scaler is not None:
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
            self.scheduler.step()
            if self.ema is not None:
                update_ema(self.ema_params, self.master_params, rate=self.ema_rate)
            self.loss_dict = {"loss": loss_sum / self.grad_accum}

            if iter_idx % 10 == 0:
                self.log_loss_into_tensorboard(iter_idx)
                bar.set_postfix(loss=f"{self.loss_dict['loss']:.4f}")
            if iter_idx == 0 or iter_idx % self.save_every_iters == 0 or iter_idx == self.total_iters - 1:
                self.save_ckpt_and_result()
        bar.close()
        synchronize()
        self._report_weights_in_sync()
        self.print("Training finished")
        if self.writer is not None:
            self.writer.close()

    def log_loss_into_tensorboard(self, iter_idx: int) -> None:
        """Loss (mean over ranks), learning rate and every gate's tanh(alpha) (collective call)."""
        loss_dict = reduce_loss_dict(self.loss_dict)
        if self.writer is None:
            return
        step = iter_idx + 1
        for k, v in loss_dict.items():
            self.writer.add_scalar(k, v, step)
        self.writer.add_scalar("lr", self.current_lr, step)
        for name, p in self.unet.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                self.writer.add_scalar("gates/" + name, float(torch.tanh(p.detach().float())), step)

    def trainable_state_hash(self) -> str:
        """sha256 over the trainable parameters (names and bytes), to compare ranks / runs."""
        h = hashlib.sha256()
        params = dict(self.unet.named_parameters())
        for name in self.trainable_names:
            h.update(name.encode())
            h.update(params[name].detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _report_weights_in_sync(self) -> None:
        hashes = all_gather(self.trainable_state_hash())
        self.print(f"trainable parameter sha256 per rank: {hashes}")
        if len(set(hashes)) != 1:
            warnings.warn(f"ranks hold different trainable weights: {hashes}")

    # ------------------------------------------------------------------ checkpoints / previews
    def checkpoint_dict(self, rng_states: list) -> dict:
        ckpt = {
            "model": self.unet.state_dict(),
            "text_encoder": official_text_encoder_state(self.text_encoder.state_dict()),
            "autoencoder": self.autoencoder.state_dict(),
            "diffusion": self.diffusion.state_dict(),
            "opt": self.opt.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iters": self.iter_idx + 1,
            "config_dict": self.config_dict,
            # our additions: exact resumption
            "rng": rng_states,
            "loader": {**self.loader_train.state(), "world_size": self.world_size, "batch_size": self.batch_size,
                       "seed": self.seed},
        }
        if self.ema is not None:
            ckpt["ema"] = self.ema.state_dict()
        if self.scaler is not None:
            ckpt["scaler"] = self.scaler.state_dict()
        return ckpt

    def save_ckpt_and_result(self) -> None:
        """Collective: gathers every rank's RNG state; rank 0 writes the preview and both checkpoint files."""
        rng_states = all_gather(capture_rng_state(self.device))
        if self.rank == 0:
            iter_name = self.iter_idx + 1
            if not bool(_get(self.config, "disable_inference_in_training", False)):
                with preserved_rng(self.device):
                    self.save_preview(iter_name)
            path = os.path.join(self.run_folder, f"checkpoint_{iter_name:08d}.pth")
            save_checkpoint(self.checkpoint_dict(rng_states), path)
            atomic_link_or_copy(path, os.path.join(self.run_folder, "checkpoint_latest.pth"))
        synchronize()

    def preview_batch(self) -> dict:
        """A fixed batch (the first ``batch_size`` samples, fixed augmentation seeds) for previews."""
        if self._preview_batch is None:
            self._preview_batch = fixed_preview_batch(self._loader.dataset, self.seed, self.batch_size)
        return dict(self._preview_batch)

    def save_preview(self, iter_name: int) -> None:
        """PLMS samples of :meth:`preview_batch`, real images, captions (``ldm.training.preview``)."""
        save_preview(self, self.preview_batch(), iter_name)


def _summary_writer(log_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        warnings.warn("tensorboard is not installed: no TensorBoard logs")
        return None
    return SummaryWriter(log_dir)
