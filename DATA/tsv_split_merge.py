"""Split a TSV into parts / merge downloaded parts into ``train-00.tsv``.

Merging pairs every ``<stem>.tsv`` of the input folder with its own stem (natural sort:
``train-2`` before ``train-10``) and concatenates their rows in that order, writing a fresh
``.lineidx`` (fixes the original's positional half-split pairing, GLIGEN issues #39/#50).

    python DATA/tsv_split_merge.py --merge_in_folder parts/ --merge_out_folder merged_tsv/
    python DATA/tsv_split_merge.py --mode split --tsv_path train-00.tsv --out_folder parts/ --chuck_size 1073741824
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.tsv import TSVFile, TSVWriter, lineidx_path_for  # noqa: E402

__all__ = ["natural_key", "list_tsv_parts", "merge", "split", "main"]

_PART = re.compile(r"^train-\d+\.(tsv|lineidx)$")


def natural_key(name: str):
    """Sort key treating digit runs as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_tsv_parts(folder: str) -> list[str]:
    """``.tsv`` files of ``folder`` in natural order of their stems."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder not found: {folder}")
    names = [n for n in os.listdir(folder) if n.endswith(".tsv") and os.path.isfile(os.path.join(folder, n))]
    return [os.path.join(folder, n) for n in sorted(names, key=lambda n: natural_key(os.path.splitext(n)[0]))]


def _iter_raw_lines(tsv_path: str):
    with open(tsv_path, "rb") as f:
        for line in f:
            if line.strip():
                yield line


def merge(merge_in_folder: str, merge_out_folder: str, out_name: str = "train-00.tsv") -> str:
    """Concatenate all parts of ``merge_in_folder`` into ``merge_out_folder/out_name`` (+ .lineidx)."""
    parts = list_tsv_parts(merge_in_folder)
    if not parts:
        raise FileNotFoundError(f"no .tsv files in {merge_in_folder}")
    out = os.path.join(merge_out_folder, out_name)
    if os.path.realpath(out) in map(os.path.realpath, parts):
        raise ValueError("the merged file would overwrite one of its parts; use another output folder")
    with TSVWriter(out) as writer:
        for part in parts:
            for line in _iter_raw_lines(part):
                writer.write_raw(line)
    return out


def split(tsv_path: str, out_folder: str, keep_folder_if_exist: bool = False,
          chuck_size: int = 1024 * 1024 * 1024, lineidx_path: str | None = None) -> list[str]:
    """Split ``tsv_path`` into ``out_folder/train-{k:04d}.tsv`` parts of about ``chuck_size`` bytes."""
    if not os.path.isfile(tsv_path):
        raise FileNotFoundError(f"TSV file not found: {tsv_path}")
    if int(chuck_size) < 1:
        raise ValueError(f"--chuck_size must be a positive number of bytes, got {chuck_size}")
    tsv = TSVFile(tsv_path, lineidx=lineidx_path)
    n = len(tsv)
    n_parts = max(1, os.path.getsize(tsv_path) // max(1, int(chuck_size)))
    rows_per_part = max(1, math.ceil(n / n_parts))
    if os.path.isdir(out_folder) and not keep_folder_if_exist:
        # only earlier parts are removed (never the input, nor anything else in the folder)
        inputs = {os.path.realpath(tsv_path), os.path.realpath(lineidx_path or lineidx_path_for(tsv_path))}
        for name in os.listdir(out_folder):
            path = os.path.join(out_folder, name)
            if _PART.match(name) and os.path.isfile(path) and os.path.realpath(path) not in inputs:
                os.remove(path)
    os.makedirs(out_folder, exist_ok=True)
    outputs = []
    for k, start in enumerate(range(0, n, rows_per_part)):
        out = os.path.join(out_folder, f"train-{k:04d}.tsv")
        with TSVWriter(out) as writer:
            for i in range(start, min(n, start + rows_per_part)):
                writer.write_raw(tsv.raw_line(i))
        outputs.append(out)
    tsv.close()
    return outputs


def main(argv=None):
    ap = argparse.ArgumentParser(description="split / merge GLIGEN TSV files")
    ap.add_argument("--mode", choices=("merge", "split"), default="merge")
    ap.add_argument("--tsv_path", type=str, default="train-00.tsv")
    ap.add_argument("--lineidx_path", type=str, default=None)
    ap.add_argument("--out_folder", type=str, default="out")
    ap.add_argument("--keep_folder_if_exist", action="store_true")
    ap.add_argument("--chuck_size", type=int, default=1024 * 1024 * 1024, help="bytes per part (split)")
    ap.add_argument("--merge_in_folder", type=str, default="out")
    ap.add_argument("--merge_out_folder", type=str, default="merged_tsv")
    args = ap.parse_args(argv)
    from ldm.cli import guard

    with guard((Exception,), status=1) as g:  # one line, never a traceback
        if args.mode == "merge":
            print(merge(args.merge_in_folder, args.merge_out_folder))
        else:
            for p in split(args.tsv_path, args.out_folder, args.keep_folder_if_exist, args.chuck_size,
                           args.lineidx_path):
                print(p)
    if g.status:
        raise SystemExit(g.status)


if __name__ == "__main__":
    main()
