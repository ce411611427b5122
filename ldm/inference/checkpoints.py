"""Where checkpoints come from: a local file, a Hub repo id, or the released model for a mode.

Released checkpoints: all files are ``diffusion_pytorch_model.bin`` in the
repos below. Downloads go through ``huggingface_hub.hf_hub_download`` (its cache;
``HF_HUB_OFFLINE=1`` is honoured: cached files only).
"""
from __future__ import annotations

import os
import re

from .errors import ResolveError
from .modes import Mode

HUB_FILENAME = "diffusion_pytorch_model.bin"

#: (family, inpaint) -> (Hub repo id, local name used by the original under ../gligen_checkpoints/)
RELEASED = {
    ("text", False): ("gligen/gligen-generation-text-box", "checkpoint_generation_text.pth"),
    ("text_image", False): ("gligen/gligen-generation-text-image-box", "checkpoint_generation_text_image.pth"),
    ("keypoint", False): ("gligen/gligen-generation-keypoint", "checkpoint_generation_keypoint.pth"),
    ("text", True): ("gligen/gligen-inpainting-text-box", "checkpoint_inpainting_text.pth"),
    ("text_image", True): ("gligen/gligen-inpainting-text-image-box", "checkpoint_inpainting_text_image.pth"),
    ("hed", False): ("gligen/gligen-generation-hed", "checkpoint_generation_hed.pth"),
    ("canny", False): ("gligen/gligen-generation-canny", "checkpoint_generation_canny.pth"),
    ("depth", False): ("gligen/gligen-generation-depth", "checkpoint_generation_depth.pth"),
    ("sem", False): ("gligen/gligen-generation-sem", "checkpoint_generation_sem.pth"),
    ("normal", False): ("gligen/gligen-generation-normal", "checkpoint_generation_normal.pth"),
}
#: released repo id -> Mode (known without opening the file)
RELEASED_MODES = {repo: Mode(fam, inp) for (fam, inp), (repo, _) in RELEASED.items()}

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def released_checkpoint(mode: Mode) -> str:
    """Hub repo id of the released checkpoint for ``mode``."""
    try:
        return RELEASED[(mode.family, mode.inpaint)][0]
    except KeyError:
        raise ResolveError(f"no released checkpoint for {mode.name}") from None


_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def is_repo_id(spec: str) -> bool:
    """``owner/name`` that is not a local path (nor looks like a file name)."""
    return bool(_REPO_ID.match(spec)) and not os.path.exists(spec) and not spec.lower().endswith(_FILE_SUFFIXES)


def hub_download(repo_id: str, filename: str = HUB_FILENAME, revision: str | None = None) -> str:
    """``hf_hub_download`` with a one-line :class:`ResolveError` when offline / missing."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a dependency
        raise ResolveError("huggingface_hub is required to fetch checkpoints from the Hub") from None
    try:
        return hf_hub_download(repo_id, filename, revision=revision)
    except Exception as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, HTTP errors...
        from ldm.hub import offline

        hint = " (HF_HUB_OFFLINE is set and it is not in the cache)" if offline() else ""
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ResolveError(f"cannot fetch {filename} from the Hub repo {repo_id}{hint}: {msg}; "
                           "pass --ckpt with a local file") from None


def diffusers_repo_folder(repo_id: str, revision: str | None = None) -> str | None:
    """The local snapshot of a diffusers-layout Hub repo (one with ``model_index.json``), else None."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, "model_index.json", revision=revision)
    except Exception:  # not a diffusers repo, or not reachable: the single-file path reports the error
        return None
    from ldm.diffusers_format import fetch_diffusers_repo

    return fetch_diffusers_repo(repo_id, revision)


def resolve_checkpoint(spec: str | None, mode: Mode | None = None, ckpt_dir: str | None = None) -> str:
    """A local checkpoint path for ``spec``.

    Args:
        spec: a local file, a local folder holding ``diffusion_pytorch_model.bin``, a diffusers GLIGEN
            folder (returned as is), a Hub repo id (``owner/name``, optionally ``owner/name@revision``;
            a diffusers-layout repo gives its snapshot folder), or None.
        mode: with ``spec`` None, the released checkpoint for this mode is used.
        ckpt_dir: folder searched first for the original's local names
            (``checkpoint_generation_text.pth``...) when ``spec`` is None.
    """
    if spec is None:
        if mode is None:
            raise ResolveError("no checkpoint given")
        repo, local_name = RELEASED.get((mode.family, mode.inpaint), (None, None))
        if repo is None:
            raise ResolveError(f"no released checkpoint for {mode.name}")
        if ckpt_dir and os.path.isfile(os.path.join(ckpt_dir, local_name)):
            return os.path.join(ckpt_dir, local_name)
        return hub_download(repo)
    spec = os.path.expanduser(spec)
    if os.path.isfile(spec):
        return spec
    if os.path.isdir(spec):
        from ldm.diffusers_format import is_diffusers_folder

        if is_diffusers_folder(spec):
            return spec  # loaded by ldm.diffusers_format.from_diffusers
        for name in (HUB_FILENAME, "diffusion_pytorch_model.safetensors"):
            if os.path.isfile(os.path.join(spec, name)):
                return os.path.join(spec, name)
        raise ResolveError(f"checkpoint folder {spec} has no {HUB_FILENAME}")
    repo, _, revision = spec.partition("@")
    if is_repo_id(repo):
        if repo not in RELEASED_MODES:
            folder = diffusers_repo_folder(repo, revision or None)
            if folder is not None:
                return folder
        return hub_download(repo, revision=revision or None)
    raise ResolveError(f"checkpoint not found: {spec} (neither a file nor a Hub repo id)")
