"""How a command-line entry point ends on an error: ``error: <one line>`` on stderr and a non-zero
exit status, never a traceback. ``GLIGEN_DEBUG=1`` re-raises instead, traceback and all.

Each entry point says which exception types are expected (bad input, a missing resource) and with
which status they end; :class:`guard` does the rest::

    with guard((LayoutError, CheckpointError), status=2, others=1) as g:
        run(argv)
    return g.status
"""
from __future__ import annotations

import os
import sys


def one_line(e: BaseException) -> str:
    """The first non-empty line of ``e``'s message (a KeyError's key unquoted); its type name when empty."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


class guard:
    """Context manager that turns an exception into ``error: <one line>`` and :attr:`status`.

    Args:
        expected: exception types printed as ``error: <one line>``, ending with ``status``.
        status: exit status of an expected error.
        others: exit status of any other ``Exception``, printed as
            ``error: <Type>: <one line> (set GLIGEN_DEBUG=1 for the traceback)``; None lets it propagate.
        interrupted: what Ctrl-C prints after ``error: `` (status 130); None lets it propagate.

    ``status`` stays 0 when the block ends normally. With ``GLIGEN_DEBUG`` set, errors propagate.
    """

    def __init__(self, expected: tuple = (), status: int = 1, *, others: int | None = None,
                 interrupted: str | None = None):
        self.expected, self.error_status, self.others, self.interrupted = tuple(expected), status, others, interrupted
        self.status = 0

    def __enter__(self) -> "guard":
        return self

    def __exit__(self, typ, e, tb) -> bool:
        if e is None:
            return False
        if isinstance(e, KeyboardInterrupt) and self.interrupted is not None:
            return self._end(130, self.interrupted)
        debug = bool(os.environ.get("GLIGEN_DEBUG"))
        if isinstance(e, self.expected) and not debug:
            return self._end(self.error_status, one_line(e))
        if isinstance(e, Exception) and self.others is not None and not debug:
            kind = "out of memory" if "OutOfMemory" in type(e).__name__ else type(e).__name__
            return self._end(self.others, f"{kind}: {one_line(e)} (set GLIGEN_DEBUG=1 for the traceback)")
        return False

    def _end(self, status: int, message: str) -> bool:
        print(f"error: {message}", file=sys.stderr, flush=True)
        self.status = status
        return True
