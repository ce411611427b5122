"""Exceptions of the inference front-end (each message is one line, printed as ``error: ...``)."""
from __future__ import annotations


class LayoutError(ValueError):
    """A layout / request that cannot be run as given (bad values, missing files, wrong modality)."""


class ResolveError(RuntimeError):
    """A checkpoint or model that could not be found or fetched (e.g. offline without a cache)."""
