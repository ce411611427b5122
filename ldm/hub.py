"""Hugging Face models through the libraries' own caches, with the messages a command line needs.

:func:`load_pretrained` wraps any ``from_pretrained``-style callable (transformers' Auto classes,
:class:`~ldm.modules.encoders.clip_features.CLIPGroundingFeatures`): a local folder is loaded as is;
a repo id not yet in the Hugging Face cache is announced on stderr before it is downloaded
(``downloading <what> <repo> (first use) ...``), and offline (``HF_HUB_OFFLINE=1`` or
``TRANSFORMERS_OFFLINE=1``) it is one line naming the repo -- and the flag that takes a local
folder instead, where the caller names one. Every failure is ``error(message)`` in one line: the
evaluation CLI's :class:`~ldm.inference.errors.ResolveError` by default; ``DATA/prepare_data.py``
passes its own ``InputError``.
"""
from __future__ import annotations

import os
import sys

from ldm.cli import one_line
from ldm.inference.errors import ResolveError

_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """True when the Hub must not be contacted (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(k, "0").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_cached(repo: str, filename: str = "config.json") -> bool:
    """``repo``'s ``filename`` is in the Hugging Face cache (False for an invalid repo id)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, filename), str)
    except Exception:  # HFValidationError: not a repo id
        return False


def load_pretrained(load, repo: str, what: str, *, flag: str | None = None,
                    error: type[Exception] = ResolveError):
    """``load(repo)`` (a ``from_pretrained``) for the ``what`` model: a download notice on first
    use, and ``error(one line)`` naming ``repo`` (and ``flag``) when it cannot be had."""
    local = f" (or pass a local folder to {flag})" if flag else ""
    if not os.path.isdir(repo):
        if os.path.isabs(repo) or repo.startswith((".", "~")) or repo.count("/") > 1:
            raise error(f"{what} model folder not found: {repo}")
        if not is_cached(repo):
            if offline():
                raise error(f"{what} model {repo!r} is not in the Hugging Face cache and the Hub is offline "
                            f"(HF_HUB_OFFLINE): run `hf download {repo}` on a connected machine{local}")
            print(f"downloading {what} {repo} (first use) ...", file=sys.stderr, flush=True)
    try:
        return load(repo)
    except (OSError, ValueError) as e:  # missing files, HTTP errors, bad configs
        if os.path.isdir(repo):
            raise error(f"{what} model folder {repo} cannot be loaded ({one_line(e)})") from None
        raise error(f"{what} model {repo!r} could not be loaded ({one_line(e)}){local}") from None
