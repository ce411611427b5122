"""The one helper every entry point ends its errors with (ldm/cli.py)."""
import pytest

from ldm.cli import guard, one_line


def test_one_line():
    assert one_line(ValueError("\n  first line  \nsecond")) == "first line"
    assert one_line(KeyError("missing key")) == "missing key"
    assert one_line(RuntimeError()) == "RuntimeError"


def test_guard_statuses(monkeypatch, capsys):
    monkeypatch.delenv("GLIGEN_DEBUG", raising=False)
    with guard((ValueError,), status=2) as g:
        pass
    assert g.status == 0
    with guard((ValueError,), status=2) as g:
        raise ValueError("bad box\ndetails")
    assert g.status == 2 and capsys.readouterr().err == "error: bad box\n"
    with guard((ValueError,), status=2, others=1) as g:
        raise OSError("disk full")
    assert g.status == 1
    assert capsys.readouterr().err == "error: OSError: disk full (set GLIGEN_DEBUG=1 for the traceback)\n"
    with guard(interrupted="interrupted") as g:
        raise KeyboardInterrupt
    assert g.status == 130 and capsys.readouterr().err == "error: interrupted\n"
    with pytest.raises(OSError):  # not expected and no `others`: propagates
        with guard((ValueError,)):
            raise OSError("x")
    with pytest.raises(KeyboardInterrupt):
        with guard((ValueError,)):
            raise KeyboardInterrupt
    monkeypatch.setenv("GLIGEN_DEBUG", "1")
    with pytest.raises(ValueError):
        with guard((ValueError,), status=2, others=1):
            raise ValueError("bad")
