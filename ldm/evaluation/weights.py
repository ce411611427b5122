"""Weights of the evaluation models, through the libraries' own caches.

* torchvision detectors and the FID Inception network are ``.pth`` files in torch's hub cache
  (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``);
* transformers models (OWLv2, Grounding DINO, CLIP) live in the Hugging Face cache and load
  through :func:`ldm.hub.load_pretrained` (the same notice and offline error).

On first use the file is downloaded and the command says so on stderr. Offline
(``HF_HUB_OFFLINE=1``) or when the download fails, :class:`ResolveError` names the file that is
needed, in one line. Downloaded ``.pth`` files are loaded with ``weights_only=True``.
"""
from __future__ import annotations

import os
import sys

import torch

from ldm.hub import offline
from ldm.inference.errors import ResolveError


def torch_hub_file(url: str, what: str) -> str:
    """Local path of ``url``'s file in torch's hub cache, downloading it (with a notice) when missing."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if os.path.isfile(path):
        return path
    hint = f"{what} needs {os.path.basename(url)} in {os.path.dirname(path)} (from {url})"
    if offline():
        raise ResolveError(f"{hint}; offline (HF_HUB_OFFLINE=1) and not cached")
    print(f"downloading {what} weights {url} -> {path}", file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, progress=True)
    except Exception as e:  # URLError, HTTPError, OSError, hash mismatch
        raise ResolveError(f"{hint}; download failed ({type(e).__name__})") from None
    return path


def load_state_dict(path: str, what: str) -> dict:
    """A plain state dict from ``path`` (``weights_only=True``; anything else is refused)."""
    if not os.path.isfile(path):
        raise ResolveError(f"{what} weights not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ResolveError(f"cannot load {what} weights {path} as a state dict ({type(e).__name__})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ResolveError(f"{what} weights {path} hold a {type(sd).__name__}, not a state dict")
    return sd
