"""TSV files with a ``.lineidx`` byte-offset index.

A TSV dataset is a pair of files with the same stem:

* ``<stem>.tsv``     – one sample per line, columns separated by TAB, ``\\n`` terminated;
* ``<stem>.lineidx`` – one decimal integer per line: the byte offset of line ``i`` of the TSV.

Optional ``<stem>.linelist`` (row indices to expose) and ``<stem>.chunks``
(``{class_name: [first_row, last_row]}``, used with ``class_selector``) are honoured.

Files are read and written in **binary** mode, so offsets are byte offsets whatever the
platform encoding (fields are decoded as UTF-8; GLIGEN data is pure ASCII anyway). Read
handles are opened lazily and re-opened when the process id changes, which makes a
``TSVFile`` safe to use from forked DataLoader workers.

Command line: ``python -m dataset.tsv --generate-lineidx FILE.tsv [...]``.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

__all__ = ["TSVFile", "TSVWriter", "generate_lineidx", "lineidx_path_for", "read_lineidx"]


def _sibling(tsv_file: str, ext: str) -> str:
    return os.path.splitext(tsv_file)[0] + ext


def lineidx_path_for(tsv_file: str) -> str:
    """``train-00.tsv`` -> ``train-00.lineidx``."""
    return _sibling(tsv_file, ".lineidx")


def generate_lineidx(tsv_file: str, lineidx_file: str | None = None) -> str:
    """Write the ``.lineidx`` of ``tsv_file`` (atomically, via a ``.tmp`` file); returns its path."""
    lineidx_file = lineidx_file or lineidx_path_for(tsv_file)
    tmp = lineidx_file + ".tmp"
    with open(tsv_file, "rb") as fin, open(tmp, "w", encoding="ascii") as fout:
        offset = 0
        for line in fin:
            fout.write(f"{offset}\n")
            offset += len(line)
    os.replace(tmp, lineidx_file)
    return lineidx_file


def read_lineidx(lineidx_file: str) -> list[int]:
    """Offsets stored in a ``.lineidx`` file (blank lines ignored)."""
    with open(lineidx_file, "r", encoding="ascii") as f:
        try:
            return [int(line) for line in f if line.strip()]
        except ValueError as e:
            raise ValueError(f"{lineidx_file} is not a valid .lineidx file (one integer per line): {e}") from e


class TSVFile:
    """Random access to the rows of a TSV file.

    ``tsv[i]`` -> list of column strings (each ``strip()``-ed) of selected row ``i``.

    Raises ``FileNotFoundError`` naming the missing file when the TSV is missing, or when
    its ``.lineidx`` is missing and ``if_generate_lineidx`` is False.
    ``blob_storage`` is accepted for signature compatibility and ignored.
    """

    def __init__(self, tsv_file: str, if_generate_lineidx: bool = False, lineidx: str | None = None,
                 class_selector: Sequence[str] | None = None, blob_storage=None):
        self.tsv_file = tsv_file
        self.lineidx = lineidx or lineidx_path_for(tsv_file)
        self.linelist = _sibling(tsv_file, ".linelist")
        self.chunks = _sibling(tsv_file, ".chunks")
        self.class_selector = class_selector
        if not os.path.isfile(tsv_file):
            raise FileNotFoundError(f"TSV file not found: {tsv_file}")
        if not os.path.isfile(self.lineidx):
            if if_generate_lineidx:
                generate_lineidx(tsv_file, self.lineidx)
            else:
                raise FileNotFoundError(
                    f"line index file not found: {self.lineidx} (needed to read {tsv_file}). "
                    f"Generate it with `python -m dataset.tsv --generate-lineidx {tsv_file}` "
                    f"or pass if_generate_lineidx=True.")
        self._fp = None
        self._pid = None
        self._lineidx: list[int] | None = None
        self._sample_indices: list[int] | None = None

    # ---------------------------------------------------------------- index
    def _ensure_lineidx_loaded(self) -> None:
        if self._lineidx is not None:
            return
        offsets = read_lineidx(self.lineidx)
        size = os.path.getsize(self.tsv_file)
        if offsets and offsets[-1] >= size:
            raise ValueError(f"{self.lineidx} is stale: offset {offsets[-1]} is beyond the end of "
                             f"{self.tsv_file} ({size} bytes); regenerate it.")
        self._lineidx = offsets
        if os.path.isfile(self.linelist):
            with open(self.linelist, "r", encoding="ascii") as f:
                self._sample_indices = sorted(int(line) for line in f if line.strip())
        elif os.path.isfile(self.chunks):
            with open(self.chunks, "r", encoding="utf-8") as f:
                chunks = json.load(f)
            names = chunks.keys() if self.class_selector is None else self.class_selector
            self._sample_indices = [i for name in names for i in range(chunks[name][0], chunks[name][1] + 1)]
        else:
            self._sample_indices = list(range(len(offsets)))

    def num_rows(self) -> int:
        """Number of rows in the TSV (ignores any linelist / chunk selection)."""
        self._ensure_lineidx_loaded()
        return len(self._lineidx)

    def __len__(self) -> int:
        self._ensure_lineidx_loaded()
        return len(self._sample_indices)

    # ---------------------------------------------------------------- reading
    def _ensure_open(self):
        if self._fp is None or self._pid != os.getpid():
            self._fp = open(self.tsv_file, "rb")
            self._pid = os.getpid()
        return self._fp

    def _read_line_at(self, offset: int) -> bytes:
        fp = self._ensure_open()
        fp.seek(offset)
        return fp.readline()

    def raw_line(self, idx: int) -> bytes:
        """Undecoded bytes (incl. the newline) of selected row ``idx``."""
        self._ensure_lineidx_loaded()
        return self._read_line_at(self._lineidx[self._sample_indices[idx]])

    def seek(self, idx: int) -> list[str]:
        """Columns of selected row ``idx`` (supports negative indices)."""
        line = self.raw_line(idx).decode("utf-8")
        return [field.strip() for field in line.split("\t")]

    __getitem__ = seek

    def __iter__(self):
        for i in range(len(self)):
            yield self.seek(i)

    def seek_first_column(self, idx: int) -> str:
        """First column (the key) of raw row ``idx`` (ignores the selection, as the original)."""
        self._ensure_lineidx_loaded()
        line = self._read_line_at(self._lineidx[idx]).decode("utf-8")
        return line.split("\t", 1)[0].strip()

    get_key = seek_first_column

    def close(self) -> None:
        if self._fp is not None:
            self._fp.close()
        self._fp = None
        self._pid = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fp"] = None
        state["_pid"] = None
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"TSVFile({self.tsv_file!r})"


class TSVWriter:
    """Write rows to ``tsv_file`` and its ``.lineidx`` (both via ``.tmp`` files renamed on close).

    ``write(values)`` writes ``"\\t".join(map(str, values)) + "\\n"`` (UTF-8) and records the
    row's byte offset. Values must not contain TAB or newline characters.
    Usable as a context manager.
    """

    def __init__(self, tsv_file: str):
        self.tsv_file = tsv_file
        self.lineidx_file = lineidx_path_for(tsv_file)
        parent = os.path.dirname(os.path.abspath(tsv_file))
        os.makedirs(parent, exist_ok=True)
        self._tsv_tmp = tsv_file + ".tmp"
        self._idx_tmp = self.lineidx_file + ".tmp"
        self._fp = open(self._tsv_tmp, "wb")
        self._idx_fp = open(self._idx_tmp, "w", encoding="ascii")
        self._offset = 0
        self.n_rows = 0

    def write(self, values: Iterable, sep: str = "\t") -> None:
        fields = [str(v) for v in values]
        for field in fields:
            if "\t" in field or "\n" in field or "\r" in field:
                raise ValueError("TSV fields must not contain TAB or newline characters")
        data = (sep.join(fields) + "\n").encode("utf-8")
        self._idx_fp.write(f"{self._offset}\n")
        self._fp.write(data)
        self._offset += len(data)
        self.n_rows += 1

    def write_raw(self, line: bytes) -> None:
        """Copy one already encoded row (a trailing newline is added if missing)."""
        if not line.endswith(b"\n"):
            line += b"\n"
        self._idx_fp.write(f"{self._offset}\n")
        self._fp.write(line)
        self._offset += len(line)
        self.n_rows += 1

    def close(self) -> None:
        if self._fp is None:
            return
        self._fp.close()
        self._idx_fp.close()
        os.replace(self._tsv_tmp, self.tsv_file)
        os.replace(self._idx_tmp, self.lineidx_file)
        self._fp = None

    def abort(self) -> None:
        """Close and delete the temporary files without producing output."""
        if self._fp is None:
            return
        self._fp.close()
        self._idx_fp.close()
        for p in (self._tsv_tmp, self._idx_tmp):
            if os.path.exists(p):
                os.remove(p)
        self._fp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="TSV utilities")
    ap.add_argument("--generate-lineidx", nargs="+", metavar="TSV", required=True,
                    help="write <stem>.lineidx next to each TSV")
    args = ap.parse_args(argv)
    for path in args.generate_lineidx:
        print(generate_lineidx(path))


if __name__ == "__main__":
    _main()
