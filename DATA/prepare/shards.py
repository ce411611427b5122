"""Resumable shards: a shard's files are written to temporary names and renamed into place, then
its record ``ROOT/shards/<shard>.json`` is written (atomically) last. A shard is finished iff its
record exists; a rerun skips finished shards and redoes any other (its partial files are replaced).
``ROOT/manifest.json`` holds the settings the folder was made with; a rerun with other settings is
refused (or starts over with ``overwrite``)."""
from __future__ import annotations

import json
import os
import shutil

from .inputs import InputError

__all__ = ["shard_name", "atomic_write_json", "read_json", "Manifest"]

MANIFEST = "manifest.json"
RECORDS = "shards"
PREVIEW = "preview"  # written by --preview before the first run


def shard_name(k: int) -> str:
    return f"train-{k:05d}"


def atomic_write_json(path: str, obj) -> None:
    """``json.dump`` to ``path + '.tmp'``, fsync, rename (sorted keys: same object -> same bytes)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Manifest:
    """Settings and finished-shard records of an output folder ``root``.

    The constructor only checks (nothing is written, so a failure before :meth:`start`, e.g. a model
    that cannot be loaded, leaves ``root`` as it was); :meth:`start` writes the settings.
    """

    def __init__(self, root: str, settings: dict, overwrite: bool = False):
        self.root, self.settings, self.overwrite = root, settings, overwrite
        path = os.path.join(root, MANIFEST)
        self.exists = os.path.isfile(path)
        if self.exists and not overwrite:
            old = read_json(path)
            if old != settings:
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise InputError(f"{root} was made with other settings ({', '.join(diff)} differ): use another "
                                 f"--out, the same settings, or --overwrite to start over")
        elif not self.exists and os.path.isdir(root) and set(os.listdir(root)) - {PREVIEW}:
            raise InputError(f"--out {root} exists and is not an output of prepare_data.py (no {MANIFEST})")

    def start(self) -> None:
        """Write the settings (after clearing an old output with ``overwrite``) and remove the
        temporary files of an interrupted run."""
        if self.exists and self.overwrite:
            shutil.rmtree(self.root)  # only ever a folder this tool made (it has our manifest)
            self.exists, self.overwrite = False, False
        os.makedirs(os.path.join(self.root, RECORDS), exist_ok=True)
        atomic_write_json(os.path.join(self.root, MANIFEST), self.settings)
        self.exists = True
        for dirpath, _, files in os.walk(self.root):  # leftovers of a crashed run
            for name in files:
                if name.endswith(".tmp"):
                    os.remove(os.path.join(dirpath, name))
        shutil.rmtree(os.path.join(self.root, ".tmp"), ignore_errors=True)

    def record_path(self, shard: str) -> str:
        return os.path.join(self.root, RECORDS, shard + ".json")

    def done(self, shard: str) -> bool:
        return not self.overwrite and os.path.isfile(self.record_path(shard))

    def record(self, shard: str):
        return read_json(self.record_path(shard))

    def commit(self, shard: str, record: dict) -> None:
        atomic_write_json(self.record_path(shard), record)

    def tmp_dir(self, shard: str) -> str:
        path = os.path.join(self.root, ".tmp", shard)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path
