"""The training data stream: seeded per-sample augmentation, rank sharding, exact resumption.

A batch is a dict of collated samples, e.g. for box data ``image`` (B,3,H,W) in [-1,1],
``caption`` (list of B str), ``boxes`` (B,N,4), ``masks`` (B,N), ``text_embeddings`` (B,N,D).

Pipeline: ``ConCatDataset`` -> :class:`SeededSamples` (indexed by ``(index, seed)``) ->
``DataLoader`` with a :class:`ResumableDistributedSampler` -> :class:`InfiniteLoader`, whose
``state()`` goes into the checkpoint.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["batch_to_device", "sub_batch", "wrap_loader", "sample_seed", "SeededSamples",
           "ResumableDistributedSampler", "InfiniteLoader", "build_train_dataset", "build_train_loader"]


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


def build_train_dataset(dataset_names, data_root: str, repeats=None, verbose: bool = True):
    """YAML ``train_dataset_names`` (+ ``train_dataset_repeats``) -> a non-empty ``ConCatDataset``.

    ``verbose`` prints the image count of every dataset and the total (rank 0)."""
    from dataset.concat_dataset import ConCatDataset

    dataset = ConCatDataset(dataset_names, data_root, train=True, repeats=list(repeats) if repeats else None)
    if len(dataset) == 0:
        raise ValueError("the training datasets are empty")
    if verbose:
        print(f"Total training images: {dataset.total_images()}", flush=True)
    return dataset


def build_train_loader(dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, workers: int = 1,
                       pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` over ``SeededSamples(dataset)`` sharded for ``rank`` of ``world_size``.

    ``loader.dataset`` is the :class:`SeededSamples`, ``loader.sampler`` the
    :class:`ResumableDistributedSampler`; wrap it in :class:`InfiniteLoader` to train."""
    samples = SeededSamples(dataset)
    sampler = ResumableDistributedSampler(samples, num_replicas=world_size, rank=rank, seed=seed, shuffle=True)
    return DataLoader(samples, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=False, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))
