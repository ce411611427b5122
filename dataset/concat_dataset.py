"""Concatenation of catalog datasets with per-dataset repeats (data.md §7)."""
from __future__ import annotations

import importlib

import torch

from .catalog import DatasetCatalog

__all__ = ["ConCatDataset", "import_target"]


def import_target(path: str):
    """``"dataset.tsv_dataset.TSVDataset"`` -> the class."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _as_dict(params) -> dict:
    if params is None:
        return {}
    try:  # OmegaConf DictConfig -> plain containers
        from omegaconf import DictConfig, OmegaConf

        if isinstance(params, DictConfig):
            return OmegaConf.to_container(params, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(params)


class ConCatDataset(torch.utils.data.Dataset):
    """Datasets named in ``dataset_name_list`` (YAML ``train_dataset_names``: mapping
    ``name -> kwargs or None`` in order, or a plain list of names), instantiated from
    ``DatasetCatalog(ROOT)`` with the YAML kwargs overriding the catalog's.

    Dataset ``k`` occupies ``len(ds_k) * repeats[k]`` consecutive global indices (its local
    index restarts at 0 for each repeat). ``total_images()`` ignores repeats.
    Raises ``KeyError`` listing the known names for an unknown dataset name.
    """

    def __init__(self, dataset_name_list, ROOT, train=True, repeats=None):
        if isinstance(dataset_name_list, str):
            dataset_name_list = [dataset_name_list]
        if hasattr(dataset_name_list, "items"):
            entries = [(str(k), v) for k, v in dataset_name_list.items()]
        else:
            entries = [(str(k), None) for k in dataset_name_list]
        if repeats is None:
            repeats = [1] * len(entries)
        repeats = list(repeats)
        if len(repeats) != len(entries):
            raise ValueError(f"repeats has {len(repeats)} entries for {len(entries)} datasets")

        catalog = DatasetCatalog(ROOT)
        known = catalog.names()
        unknown = [name for name, _ in entries if name not in known]
        if unknown:
            raise KeyError(f"unknown dataset name(s) {unknown}; known datasets: {', '.join(known)}")

        self.datasets = []
        offsets, which = [], []
        total = 0
        for idx, (name, yaml_params) in enumerate(entries):
            spec = catalog.get(name)
            key = "train_params" if train else "val_params"
            if key not in spec:
                raise KeyError(f"dataset {name!r} defines no {key}")
            params = dict(spec[key])
            params.update(_as_dict(yaml_params))
            ds = import_target(spec["target"])(**params)
            self.datasets.append(ds)
            n = len(ds)
            for _ in range(int(repeats[idx])):
                offsets.append(torch.full((n,), total, dtype=torch.long))
                which.append(torch.full((n,), idx, dtype=torch.long))
                total += n
        self.total = total
        offsets = torch.cat(offsets) if offsets else torch.zeros(0, dtype=torch.long)
        self.which_dataset = torch.cat(which) if which else torch.zeros(0, dtype=torch.long)
        self.mapping = torch.arange(total) - offsets

    def total_images(self) -> int:
        """Sum of the datasets' ``total_images()`` (repeats not counted); prints each."""
        count = 0
        for ds in self.datasets:
            n = ds.total_images()
            print(f"{type(ds).__name__}: {n} images")
            count += n
        return count

    def __getitem__(self, idx):
        idx = int(idx)
        if idx < 0:
            idx += self.total
        return self.datasets[int(self.which_dataset[idx])][int(self.mapping[idx])]

    def __len__(self) -> int:
        return self.total
