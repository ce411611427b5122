"""Concatenation of catalog (or user-defined) datasets with per-dataset repeats."""
from __future__ import annotations

import os

import torch

from ldm.util import get_obj_from_str, to_plain

from .catalog import DatasetCatalog

__all__ = ["ConCatDataset", "import_target", "resolve_entry"]

# constructor kwargs of a user entry (one with its own ``target``) that are paths: a relative
# string value is joined onto ROOT, as the catalog does for its entries
PATH_KEY_SUFFIXES = ("_path", "_root", "_rootdir", "_dir")


import_target = get_obj_from_str  # ``"dataset.tsv_dataset.TSVDataset"`` -> the class (one implementation)


def _as_dict(params) -> dict:
    """kwargs (plain dict or OmegaConf) -> a plain dict (None -> {})."""
    return {} if params is None else dict(to_plain(params))


def _resolve_paths(params: dict, ROOT: str) -> dict:
    """``params`` with relative string values of ``*_path`` / ``*_root`` / ``*_rootdir`` / ``*_dir``
    keys joined onto ``ROOT`` (``~`` expanded; absolute paths unchanged)."""
    out = dict(params)
    for k, v in params.items():
        if k.endswith(PATH_KEY_SUFFIXES) and isinstance(v, str):
            out[k] = os.path.join(ROOT, os.path.expanduser(v))
    return out


def resolve_entry(name: str, yaml_params, catalog: DatasetCatalog, train: bool = True) -> tuple[str, dict]:
    """One ``train_dataset_names`` entry -> ``(target "module.Class", constructor kwargs)``.

    * ``{target: module.Class, params: {...}}`` (any name): a user dataset; path kwargs relative
      to ``catalog.ROOT`` (see :data:`PATH_KEY_SUFFIXES`);
    * otherwise ``name`` must be a catalog name and ``yaml_params`` (kwargs or None) override
      the catalog's ``train_params`` (``val_params`` if not ``train``).
    """
    yaml_params = _as_dict(yaml_params)
    if "target" in yaml_params:
        extra = sorted(set(yaml_params) - {"target", "params"})
        if extra:
            raise ValueError(f"dataset {name!r}: an entry with 'target' takes only 'target' and 'params' "
                             f"(constructor kwargs), got also {extra}")
        return str(yaml_params["target"]), _resolve_paths(_as_dict(yaml_params.get("params")), catalog.ROOT)
    spec = catalog.get(name)
    key = "train_params" if train else "val_params"
    if key not in spec:
        raise KeyError(f"dataset {name!r} defines no {key}")
    params = dict(spec[key])
    params.update(yaml_params)
    return spec["target"], params


class ConCatDataset(torch.utils.data.Dataset):
    """Datasets named in ``dataset_name_list`` (YAML ``train_dataset_names``: mapping
    ``name -> kwargs or None`` in order, or a plain list of names), instantiated from
    ``DatasetCatalog(ROOT)`` with the YAML kwargs overriding the catalog's; an entry
    ``name -> {target: module.Class, params: {...}}`` defines its own dataset (:func:`resolve_entry`).

    Dataset ``k`` occupies ``len(ds_k) * repeats[k]`` consecutive global indices (its local
    index restarts at 0 for each repeat). ``total_images()`` ignores repeats.
    Raises ``KeyError`` listing the known names for an unknown name without ``target``.
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
        unknown = [name for name, p in entries if name not in known and not (hasattr(p, "keys") and "target" in p)]
        if unknown:
            raise KeyError(f"unknown dataset name(s) {unknown}; known datasets: {', '.join(known)} "
                           "(or give the entry its own 'target' and 'params')")

        self.datasets = []
        offsets, which = [], []
        total = 0
        for idx, (name, yaml_params) in enumerate(entries):
            target, params = resolve_entry(name, yaml_params, catalog, train)
            try:
                cls = import_target(target)
            except (ImportError, AttributeError, ValueError) as e:
                raise ValueError(f"dataset {name!r}: cannot import target {target!r} ({e})") from e
            ds = cls(**params)
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
