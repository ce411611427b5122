"""GLIGEN training loop (training.md §2): a frozen Stable Diffusion v1 UNet plus trainable
gated self-attention layers, grounding tokenizer and (spatial models) downsampler.

Reading order: helpers -> data (:class:`SeededSamples`, :class:`ResumableDistributedSampler`,
:class:`InfiniteLoader`) -> :class:`Trainer` (``__init__`` builds everything, ``run_one_step``
is the loss of spec §2.6, ``start_training`` the loop, ``save_ckpt_and_result`` checkpoints
and previews).

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
import copy
import hashlib
import os
import random
import shutil
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data._utils.collate import default_collate

from distributed import all_gather, broadcast_object, get_rank, get_world_size, reduce_loss_dict, synchronize
from ldm.checkpoint import (CheckpointError, config_from_checkpoint, load_checkpoint_file, make_config_dict,
                            official_text_encoder_state,
                            read_official_ckpt, save_checkpoint)
from ldm.util import instantiate_from_config, to_plain

__all__ = [
    "Trainer", "ConfigMismatchError", "read_official_ckpt", "batch_to_device", "sub_batch", "wrap_loader",
    "disable_grads", "count_params", "update_ema", "ImageCaptionSaver", "create_expt_folder_with_auto_resuming",
    "is_trainable_name", "select_trainable_parameters", "config_differences", "resolve_device", "seed_everything",
    "capture_rng_state", "restore_rng_state", "SeededSamples", "ResumableDistributedSampler", "InfiniteLoader",
]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# model-config keys that may change between a run and its resumption
RESUME_IGNORED_MODEL_KEYS = ("params.use_checkpoint",)


class ConfigMismatchError(CheckpointError):
    """Auto-resume found a checkpoint whose model config differs from the current one."""


# ============================================================================ small helpers
def batch_to_device(batch: dict, device) -> dict:
    """In place: every tensor value ``.to(device)``; other values (captions, ids) untouched."""
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            batch[k] = v.to(device)
    return batch


def sub_batch(batch: dict, num: int = 1) -> dict:
    """The first ``max(num, 1)`` items of every value (tensors and lists)."""
    num = max(num, 1)
    return {k: v[0:num] for k, v in batch.items()}


def wrap_loader(loader):
    """Infinite generator over ``loader`` (the original's helper; the trainer uses :class:`InfiniteLoader`)."""
    while True:
        yield from loader


def disable_grads(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad = False


def count_params(params) -> int:
    total = sum(p.numel() for p in params)
    print("total_trainable_params_count is: ", total)
    return total


@torch.no_grad()
def update_ema(target_params, source_params, rate: float = 0.99) -> None:
    """``target <- rate * target + (1 - rate) * source`` in place (no bias correction)."""
    for targ, src in zip(target_params, source_params):
        targ.detach().mul_(rate).add_(src.detach(), alpha=1 - rate)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK if available, else mps, else cpu. Raises if the named one is unavailable."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ValueError("--device mps requested but MPS is not available")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"--device must be auto, cpu, cuda or mps, got {name!r}")


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


# ---------------------------------------------------------------------- trainable parameters
def is_trainable_name(name: str, input_conv_train: bool) -> bool:
    """Spec §2.5 rules 1-4 (substring tests on the UNet parameter name)."""
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
                raise RuntimeError(f"parameter {name!r} is neither trainable (spec §2.5) nor in the SD checkpoint")
            frozen.append((name, p))
    return trainable, frozen


# ----------------------------------------------------------------------------------- configs
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
        if isinstance(va, tuple):
            va = list(va)
        if isinstance(vb, tuple):
            vb = list(vb)
        if va != vb:
            diffs.append(f"{key}: checkpoint {va!r} != current {vb!r}")
    return diffs


def create_expt_folder_with_auto_resuming(OUTPUT_ROOT: str, name: str):
    """Spec §2.1 step 2: ``(run_folder, resume_checkpoint_or_None)`` without creating anything.

    The newest ``tagNN`` holding ``checkpoint_latest.pth`` is resumed; every launch gets a new
    ``tagNN`` folder (``NN`` = number of existing tag entries, bumped past any existing name).
    """
    base = os.path.join(OUTPUT_ROOT, name)
    resume = None
    if os.path.isdir(base):
        tags = sorted(e for e in os.listdir(base) if e.startswith("tag"))[::-1]
        for tag in tags:
            candidate = os.path.join(base, tag, "checkpoint_latest.pth")
            if os.path.isfile(candidate):
                resume = candidate
                break
        n = len(tags)
        while os.path.exists(os.path.join(base, "tag" + str(n).zfill(2))):
            n += 1
        run_folder = os.path.join(base, "tag" + str(n).zfill(2))
    else:
        run_folder = os.path.join(base, "tag00")
    return run_folder, resume


# ====================================================================================== data
def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of one sample's augmentation randomness: a pure function of (run seed, epoch, position)."""
    return int(np.random.SeedSequence([seed % 2 ** 32, epoch, position]).generate_state(1)[0])


class SeededSamples(torch.utils.data.Dataset):
    """``ds[(index, seed)]`` -> ``dataset[index]`` with ``random`` / NumPy / torch-CPU seeded by ``seed``.

    The datasets draw their augmentations (flip, caption drop, embedding drop) from the global
    RNGs; seeding them per sample makes every sample independent of worker count and of where a
    run was resumed. The caller's RNG states are restored afterwards (matters with ``workers=0``).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        py, npst = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            torch.default_generator.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py)
                np.random.set_state(npst)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle, ``set_epoch``, rank sharding with padding) that yields
    ``(index, sample_seed)`` pairs for :class:`SeededSamples` and can start mid-epoch
    (``start_index`` = number of this rank's samples already consumed in the epoch)."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start_index = 0

    def __iter__(self):
        for k, index in enumerate(super().__iter__()):
            if k < self.start_index:
                continue
            yield index, sample_seed(self.seed, self.epoch, self.rank + k * self.num_replicas)


class InfiniteLoader:
    """Endless batches from ``loader``; calls ``sampler.set_epoch`` at every epoch start.

    ``state()`` = ``{"epoch", "batches"}`` (batches consumed in the current epoch); a new
    loader built with that state continues with exactly the batches the old one would have given.
    """

    def __init__(self, loader: DataLoader, sampler: ResumableDistributedSampler, epoch: int = 0, batches: int = 0):
        self.loader, self.sampler = loader, sampler
        self.epoch, self.batches = int(epoch), int(batches)
        self._it = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches}

    def __iter__(self):
        return self

    def __next__(self):
        for _ in range(3):
            if self._it is None:
                self.sampler.set_epoch(self.epoch)
                self.sampler.start_index = self.batches * self.loader.batch_size
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch, self.batches = self.epoch + 1, 0
                continue
            self.batches += 1
            return batch
        raise RuntimeError("the training data loader yields no batches (empty dataset?)")


# ================================================================================ previews
class ImageCaptionSaver:
    """Writes preview grids and ``captions.txt`` into the run folder (spec §2.11)."""

    def __init__(self, base_path: str, nrow: int = 8, normalize: bool = True, scale_each: bool = True,
                 range=(-1, 1)):
        self.base_path = base_path
        self.nrow, self.normalize, self.scale_each, self.range = nrow, normalize, scale_each, range

    def __call__(self, images, real, masked_real, captions, seen):
        import torchvision

        torchvision.utils.save_image(images, os.path.join(self.base_path, f"{seen:08d}.png"), nrow=self.nrow,
                                     normalize=self.normalize, scale_each=self.scale_each, value_range=self.range)
        torchvision.utils.save_image(real, os.path.join(self.base_path, f"{seen:08d}_real.png"), nrow=self.nrow)
        if masked_real is not None:  # the original's file name, typo included
            torchvision.utils.save_image(masked_real, os.path.join(self.base_path, f"{seen:08d}_mased_real.png"),
                                         nrow=self.nrow, normalize=self.normalize, scale_each=self.scale_each,
                                         value_range=self.range)
        assert images.shape[0] == len(captions)
        with open(os.path.join(self.base_path, "captions.txt"), "a", encoding="utf-8") as f:
            f.write(f"{seen:08d}:\n")
            for cap in captions:
                f.write(cap + "\n")
            f.write("\n")


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
        if not bool(_get(config, "disable_inference_in_training", False)):
            from ldm.models.diffusion.sampling import make_ddim_timesteps

            try:  # fail now rather than at the first preview
                make_ddim_timesteps(self.preview_steps, int((config.diffusion.get("params") or {}).get("timesteps", 1000)))
            except ValueError as e:
                raise ValueError(f"--preview_steps: {e}") from e
        self.writer = None

        # -- output folder / auto-resume (decided on rank 0, shared with the others)
        run_folder, resume_path = create_expt_folder_with_auto_resuming(config.OUTPUT_ROOT, config.name)
        self.run_folder, resume_path = broadcast_object((run_folder, resume_path))
        resume_ckpt = load_checkpoint_file(resume_path) if resume_path else None
        if resume_ckpt is not None:
            self._check_resume_config(resume_ckpt, resume_path)
            self.print(f"auto-resuming from {resume_path}")

        # -- data first: a missing TSV or an unknown dataset fails before anything is built
        self._build_data()

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
            self.ema = copy.deepcopy(self.model).eval()
            disable_grads(self.ema)
            ema_named = dict(self.ema.named_parameters())
            self.ema_params = [ema_named[n] for n in self.trainable_names]
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
        if self.rank == 0:
            os.makedirs(os.path.join(self.run_folder, "Log"), exist_ok=True)
            yaml_file = _get(config, "yaml_file", None)
            if yaml_file and os.path.isfile(yaml_file):
                shutil.copyfile(yaml_file, os.path.join(self.run_folder, "train_config_file.yaml"))
            OmegaConf.save(config, os.path.join(self.run_folder, "merged_config.yaml"))
            self.config_dict = make_config_dict(config)
            save_checkpoint(self.config_dict, os.path.join(self.run_folder, "config_dict.pth"))
            self.writer = _summary_writer(os.path.join(self.run_folder, "Log"))
            self.image_caption_saver = ImageCaptionSaver(self.run_folder)
        else:
            self.config_dict = make_config_dict(config)

        # -- DDP
        self.unet = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.unet, device_ids=ids, output_device=ids[0] if ids else None,
                             broadcast_buffers=False)

        # -- the data stream and RNG streams (last: nothing may consume randomness after this)
        self.loader_train = InfiniteLoader(self._loader, self._sampler, **(loader_state or {}))
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

    def _check_resume_config(self, ckpt: dict, path: str) -> None:
        if "config_dict" not in ckpt:
            warnings.warn(f"{path} has no config_dict; cannot verify it matches the current model config")
            return
        stored = copy.deepcopy(config_from_checkpoint(ckpt).get("model", {}))
        current = OmegaConf.to_container(self.config.model, resolve=True)
        for section in (stored, current):  # an absent inpaint_mode means False (the UNet default)
            if isinstance(section, dict) and isinstance(section.get("params"), dict):
                section["params"].setdefault("inpaint_mode", False)
        diffs = config_differences(stored, current)
        if diffs:
            raise ConfigMismatchError(f"refusing to resume from {path}: its model config differs from "
                                      f"--yaml_file ({'; '.join(diffs)}). Use another --name or OUTPUT_ROOT.")

    def _build_data(self) -> None:
        from dataset.concat_dataset import ConCatDataset

        config = self.config
        repeats = _get(config, "train_dataset_repeats", None)
        self.dataset_train = ConCatDataset(config.train_dataset_names, config.DATA_ROOT, train=True,
                                           repeats=list(repeats) if repeats else None)
        if len(self.dataset_train) == 0:
            raise ValueError("the training datasets are empty")
        if self.rank == 0:
            total = self.dataset_train.total_images()
            print(f"Total training images: {total}", flush=True)
        self._samples = SeededSamples(self.dataset_train)
        self._sampler = ResumableDistributedSampler(self._samples, num_replicas=self.world_size, rank=self.rank,
                                                    seed=self.seed, shuffle=True)
        workers = int(_get(config, "workers", 1))
        self._loader = DataLoader(self._samples, batch_size=self.batch_size, sampler=self._sampler,
                                  num_workers=workers, pin_memory=self.device.type == "cuda", drop_last=False,
                                  persistent_workers=workers > 0, generator=torch.Generator().manual_seed(self.seed))
        self._preview_batch = None

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
            _load_strict(getattr(self, name), frozen_sources[name], name)
        if extra is not None:
            if "model" not in extra:
                raise CheckpointError(f"--ckpt {ckpt_path}: no 'model' entry")
            hint = ""
            w = extra["model"].get("input_blocks.0.0.weight")
            if w is not None and w.shape[1] != self.model.input_blocks[0][0].in_channels:
                hint = (f" (its first conv takes {w.shape[1]} channels, the model {self.model.input_blocks[0][0].in_channels}"
                        + ("; convert it with convert_ckpt.py first" if self.inpaint_mode else "") + ")")
            _load_strict(self.model, extra["model"], f"--ckpt {ckpt_path}", hint)

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
        _load_strict(self.model, ckpt["model"], "resume checkpoint")
        if self.ema is not None:
            if "ema" in ckpt:
                _load_strict(self.ema, ckpt["ema"], "resume checkpoint (ema)")
            else:
                warnings.warn("resume checkpoint has no 'ema'; EMA restarts from the current weights")
        self.opt.load_state_dict(ckpt["opt"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.starting_iter = int(ckpt["iters"])
        loader_state, rng = None, None
        data = ckpt.get("loader")
        if data is not None:
            same = (data.get("world_size") == self.world_size and data.get("batch_size") == self.batch_size
                    and data.get("seed") == self.seed)
            loader_state = {"epoch": data["epoch"], "batches": data["batches"] if same else 0}
            if not same:
                warnings.warn("world size, batch size or seed changed since the checkpoint: the data order "
                              "restarts at the beginning of the saved epoch")
        rngs = ckpt.get("rng")
        if isinstance(rngs, list) and len(rngs) == self.world_size:
            rng = rngs[self.rank]
        elif rngs is not None:
            warnings.warn(f"checkpoint holds RNG states for {len(rngs)} ranks, this run has {self.world_size}; reseeding")
        return loader_state, rng

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
            _atomic_link_or_copy(path, os.path.join(self.run_folder, "checkpoint_latest.pth"))
        synchronize()

    def preview_batch(self) -> dict:
        """A fixed batch (the first ``batch_size`` samples, fixed augmentation seeds) for previews."""
        if self._preview_batch is None:
            n = len(self._samples)
            items = [self._samples[(i % n, sample_seed(self.seed, -1 % 2 ** 32, i))] for i in range(self.batch_size)]
            self._preview_batch = default_collate(items)
        return dict(self._preview_batch)

    @torch.no_grad()
    def save_preview(self, iter_name: int) -> None:
        """PLMS samples (50 steps, guidance 5) of the preview batch in eval mode, with real images and captions."""
        from ldm.models.diffusion.plms import PLMSSampler

        batch = batch_to_device(self.preview_batch(), self.device)
        image = batch["image"]
        B = image.shape[0]
        ds0 = self.dataset_train.datasets[0]
        if "boxes" in batch and hasattr(ds0, "vis_getitem_data"):
            real = torch.stack([ds0.vis_getitem_data(out={"image": image[i].cpu(), "boxes": batch["boxes"][i].cpu()},
                                                     return_tensor=True, print_caption=False) for i in range(B)])
        else:
            real = (image.cpu().float() * 0.5 + 0.5).clamp(0, 1)
        was_training = self.unet.training
        self.unet.eval()
        try:
            with self.autocast():
                uc = self.text_encoder.encode([""] * B).float()
                context = self.text_encoder.encode(list(batch["caption"])).float()
                x_start, _, _, inpainting_extra_input, grounding_extra_input = self.get_input(
                    batch, timesteps=torch.zeros(B, dtype=torch.long))
                input = dict(x=None, timesteps=None, context=context, inpainting_extra_input=inpainting_extra_input,
                             grounding_extra_input=grounding_extra_input,
                             grounding_input=self.grounding_tokenizer_input.prepare(batch))
                shape = (B, self.unet.in_channels, x_start.shape[-2], x_start.shape[-1])
                sampler = PLMSSampler(self.diffusion, self.unet, progress=False)
                samples = sampler.sample(S=self.preview_steps, shape=shape, input=input, uc=uc, guidance_scale=5)
                samples = self.autoencoder.decode(samples.to(x_start.dtype))
        finally:
            self.unet.train(was_training)
        samples = torch.clamp(samples.float().cpu(), min=-1, max=1)
        masked_real = None
        if self.inpaint_mode:
            mask = inpainting_extra_input[:, -1:].float().cpu()
            masked_real = image.float().cpu() * F.interpolate(mask, size=image.shape[-2:], mode="nearest")
        self.image_caption_saver(samples, real, masked_real, list(batch["caption"]), iter_name)


# ============================================================================ local helpers
def _load_strict(module: torch.nn.Module, state_dict: dict, what: str, hint: str = "") -> None:
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{what}: state dict does not match the model{hint}: {detail[:600]}") from e


def _atomic_link_or_copy(src: str, dst: str) -> None:
    """``dst`` becomes the same file as ``src`` atomically (hard link, else copy) + rename."""
    tmp = dst + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _summary_writer(log_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        warnings.warn("tensorboard is not installed: no TensorBoard logs")
        return None
    return SummaryWriter(log_dir)
