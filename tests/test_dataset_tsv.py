"""TSVFile / TSVWriter / lineidx."""
import os
import pickle
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data_helpers import write_tsv  # noqa: E402

from dataset.tsv import TSVFile, TSVWriter, generate_lineidx, read_lineidx  # noqa: E402

ROWS = [["0", '{"a": 1}'], ["key-1", "x\u00e9y"], ["2", ""], ["3", "last"]]


@pytest.fixture
def tsv_path(tmp_path):
    return write_tsv(str(tmp_path / "train-00.tsv"), [list(r) for r in ROWS])


def test_round_trip_and_random_access(tsv_path):
    assert os.path.isfile(tsv_path[:-4] + ".lineidx")
    assert not os.path.exists(tsv_path + ".tmp")
    tsv = TSVFile(tsv_path)
    assert len(tsv) == 4
    for i in [3, 0, 2, 1, -1]:
        assert tsv[i] == ROWS[i]
    assert tsv.seek_first_column(1) == "key-1" and tsv.get_key(3) == "3"
    assert list(tsv) == ROWS


def test_lineidx_offsets_are_bytes(tsv_path):
    # the non-ASCII row must not shift the following offsets (binary offsets)
    offsets = read_lineidx(tsv_path[:-4] + ".lineidx")
    with open(tsv_path, "rb") as f:
        data = f.read()
    assert offsets == [0] + [i + 1 for i, b in enumerate(data[:-1]) if b == ord("\n")]


def test_generate_lineidx_matches_writer(tsv_path, tmp_path):
    expected = read_lineidx(tsv_path[:-4] + ".lineidx")
    out = generate_lineidx(tsv_path, str(tmp_path / "regen.lineidx"))
    assert read_lineidx(out) == expected


def test_missing_lineidx_is_a_clear_error(tsv_path):
    os.remove(tsv_path[:-4] + ".lineidx")
    with pytest.raises(FileNotFoundError, match=r"train-00\.lineidx"):
        TSVFile(tsv_path)
    tsv = TSVFile(tsv_path, if_generate_lineidx=True)  # only when asked
    assert tsv[3] == ROWS[3]


def test_missing_tsv_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        TSVFile(str(tmp_path / "nope.tsv"))


def test_stale_lineidx_detected(tsv_path):
    with open(tsv_path[:-4] + ".lineidx", "a") as f:
        f.write("999999\n")
    with pytest.raises(ValueError, match="stale"):
        len(TSVFile(tsv_path))


def test_reopen_after_pid_change_and_pickle(tsv_path):
    tsv = TSVFile(tsv_path)
    assert tsv[0] == ROWS[0]
    old_fp = tsv._fp
    tsv._pid = -1  # pretend we are in a forked worker
    assert tsv[1] == ROWS[1]
    assert tsv._fp is not old_fp
    clone = pickle.loads(pickle.dumps(tsv))
    assert clone[2] == ROWS[2]


def test_linelist_selects_rows(tsv_path):
    with open(tsv_path[:-4] + ".linelist", "w") as f:
        f.write("3\n1\n")
    tsv = TSVFile(tsv_path)
    assert len(tsv) == 2 and tsv[0] == ROWS[1] and tsv[1] == ROWS[3]


def test_writer_rejects_separators_and_aborts(tmp_path):
    path = str(tmp_path / "bad.tsv")
    with pytest.raises(ValueError):
        with TSVWriter(path) as w:
            w.write(["a", "b\tc"])
    assert not os.path.exists(path) and not os.path.exists(path + ".tmp")
