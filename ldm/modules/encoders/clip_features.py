"""CLIP phrase / image features used for grounding.

Shared by the offline data tool (``DATA/make_tsv.py``), the box datasets
(``projection_matrix`` for ``after_reproject``) and inference (phrase and reference-image
features).

Feature definitions (CLIP ViT-L/14: D_text = 768, D_vision = 1024, D_proj = 768):

* text "before":  ``text_model(...).pooler_output`` – final-layer-normed EOS state, ``(N, D_text)``;
* text "after":   ``text_projection(before)`` L2-normalised, ``(N, D_proj)``;
* image "before": ``vision_model(...).pooler_output`` – post-layernormed CLS, ``(N, D_vision)``;
* image "after":  ``visual_projection(before)`` L2-normalised, ``(N, D_proj)``;
* image "reprojected": ``v = after @ P`` with ``P = text_projection.weight (D_proj, D_text)``,
  then ``v / ||v|| * 28.7`` -> ``(N, D_text)``, i.e. mapped into the text "before" space.
"""
from __future__ import annotations

import glob
import json
import os
from functools import lru_cache
from typing import Iterable, Sequence

import torch
from PIL import Image

from ldm.imageops import center_crop

__all__ = [
    "DEFAULT_CLIP_VERSION", "CLIP_MEAN", "CLIP_STD", "TEXT_FEATURE_NORM",
    "load_text_projection", "resolve_projection_matrix", "reproject_image_embedding",
    "preprocess_images", "crop_box", "CLIPGroundingFeatures",
]

DEFAULT_CLIP_VERSION = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: empirical norm of CLIP ViT-L/14 text "before projection" (pooled) features
TEXT_FEATURE_NORM = 28.7
TEXT_PROJECTION_KEY = "text_projection.weight"


# --------------------------------------------------------------------------- projection
def _read_safetensors_key(path: str, key: str = TEXT_PROJECTION_KEY) -> torch.Tensor | None:
    """Read one tensor from a safetensors file without loading the others (None if absent)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        keys = list(f.keys())
        if key in keys:
            return f.get_tensor(key)
        # e.g. checkpoints saved from a wrapper module ("clip.text_projection.weight")
        suffixed = [k for k in keys if k.endswith("." + key)]
        if len(suffixed) == 1:
            return f.get_tensor(suffixed[0])
    return None


def _text_projection_from_local_dir(path: str) -> torch.Tensor | None:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shard = json.load(f)["weight_map"].get(TEXT_PROJECTION_KEY)
        if shard:
            return _read_safetensors_key(os.path.join(path, shard))
    candidates = [os.path.join(path, "model.safetensors")]
    candidates += sorted(p for p in glob.glob(os.path.join(path, "*.safetensors")) if p not in candidates)
    for p in candidates:
        if os.path.isfile(p):
            t = _read_safetensors_key(p)
            if t is not None:
                return t
    bin_path = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(bin_path):
        sd = torch.load(bin_path, map_location="cpu", weights_only=True)
        if TEXT_PROJECTION_KEY in sd:
            return sd[TEXT_PROJECTION_KEY].clone()
    return None


def _text_projection_from_model(version: str) -> torch.Tensor:
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(version)
    return model.text_projection.weight.detach().clone()


@lru_cache(maxsize=8)
def _load_text_projection_cached(version: str) -> torch.Tensor:
    if os.path.isdir(version):
        t = _text_projection_from_local_dir(version)
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            t = _read_safetensors_key(hf_hub_download(version, "model.safetensors"))
        except EntryNotFoundError:  # no safetensors in the repo (or not cached while offline)
            t = None
    if t is None:
        t = _text_projection_from_model(version)
    return t.detach().to(torch.float32).contiguous()


def load_text_projection(version: str = DEFAULT_CLIP_VERSION) -> torch.Tensor:
    """CLIP's ``text_projection.weight``, shape ``(D_proj, D_text)`` (768 x 768 for ViT-L/14), float32.

    ``version``: a local model directory (``model.safetensors`` [sharded ok] or
    ``pytorch_model.bin``) or a Hub repo id. For a repo id only ``model.safetensors`` is fetched
    through the huggingface_hub cache (honours ``HF_HUB_OFFLINE``) and only the one tensor is read;
    without a safetensors file the full ``CLIPModel`` is loaded as a fallback.
    Cached per version; a fresh copy is returned on every call.
    """
    return _load_text_projection_cached(str(version)).clone()


def resolve_projection_matrix(source) -> torch.Tensor:
    """``projection_matrix`` from a tensor, a ``torch.save``d tensor file (the original
    ``projection_matrix`` file), a ``.safetensors`` file, a model directory or a Hub repo id."""
    if isinstance(source, torch.Tensor):
        return source.detach().to(torch.float32)
    source = os.fspath(source)
    if os.path.isfile(source):
        if source.endswith(".safetensors"):
            t = _read_safetensors_key(source)
            if t is None:
                raise KeyError(f"{TEXT_PROJECTION_KEY!r} not found in {source}")
            return t.to(torch.float32)
        t = torch.load(source, map_location="cpu", weights_only=True)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{source} does not contain a tensor (got {type(t).__name__})")
        return t.to(torch.float32)
    return load_text_projection(source)


def reproject_image_embedding(e_after: torch.Tensor, P: torch.Tensor, norm: float = TEXT_FEATURE_NORM) -> torch.Tensor:
    """Map normalised CLIP image embeddings into the text "before projection" space.

    e_after: (..., D_proj) unit-norm image embeds; P: (D_proj, D_text) ``text_projection.weight``.
    Returns ``(..., D_text)``: ``v = e @ P``, ``v / ||v||_2 * norm``.
    """
    v = e_after @ P.to(device=e_after.device, dtype=e_after.dtype)
    return v / v.norm(dim=-1, keepdim=True) * norm


# --------------------------------------------------------------------------- images
def crop_box(image: Image.Image, bbox_xywh: Sequence[float]) -> Image.Image:
    """Crop an ``[x, y, w, h]`` pixel box (as ``process_grounding.py``; no clamping)."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    return image.crop((x, y, x + w, y + h))


def _resize_short_side(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return image.resize((new_w, new_h), resample=Image.BICUBIC)


def preprocess_images(images: Iterable[Image.Image], mode: str = "clip", size: int = 224) -> torch.Tensor:
    """PIL images -> normalised ``pixel_values (N, 3, size, size)`` float32.

    mode ``"clip"``: standard CLIP preprocessing (short side -> ``size`` bicubic, centre crop);
    mode ``"crop_resize"``: resize to ``size x size`` bicubic without keeping the aspect ratio
    (box crops, as the original's ``process_grounding.py``).
    """
    if isinstance(images, Image.Image):
        images = [images]
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    out = []
    for im in images:
        im = im.convert("RGB")
        if mode == "clip":
            im = center_crop(_resize_short_side(im, size), size, rounding="floor")
        elif mode == "crop_resize":
            im = im.resize((size, size), resample=Image.BICUBIC)
        else:
            raise ValueError(f"unknown preprocessing mode {mode!r} (expected 'clip' or 'crop_resize')")
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3)
        out.append((x.permute(2, 0, 1).float() / 255 - mean) / std)
    if not out:
        return torch.zeros(0, 3, size, size)
    return torch.stack(out)


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)


def _tokenizer_for(version: str):
    """Tokenizer files inside a local ``version`` directory if present, else the offline CLIP BPE."""
    if os.path.isdir(version) and os.path.isfile(os.path.join(version, "vocab.json")) \
            and os.path.isfile(os.path.join(version, "merges.txt")):
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(version)
    from .clip_tokenizer import build_clip_tokenizer

    return build_clip_tokenizer()


# --------------------------------------------------------------------------- model wrapper
class CLIPGroundingFeatures:
    """Frozen HF ``CLIPModel`` computing the grounding features defined in the module docstring.

    Text inputs: a string or a list of strings (tokenised with ``padding=True``; truncated to 77
    tokens). Image inputs: a PIL image or a list of them, plus ``mode`` (``"clip"`` or
    ``"crop_resize"``, see :func:`preprocess_images`), or a ready ``pixel_values`` tensor.
    Outputs are float32 CPU-agnostic tensors on ``device``.
    """

    def __init__(self, version: str = DEFAULT_CLIP_VERSION, device="cpu", dtype=torch.float32, tokenizer=None):
        from transformers import CLIPModel

        self.version = version
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = CLIPModel.from_pretrained(version).to(device=self.device, dtype=dtype).eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer if tokenizer is not None else _tokenizer_for(version)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    # dims
    @property
    def text_dim(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def vision_dim(self) -> int:
        return self.model.config.vision_config.hidden_size

    @property
    def projection_dim(self) -> int:
        return self.model.config.projection_dim

    @property
    def projection_matrix(self) -> torch.Tensor:
        """``text_projection.weight`` ``(D_proj, D_text)`` float32 (a detached copy)."""
        return self.model.text_projection.weight.detach().float().clone()

    # text
    @torch.no_grad()
    def encode_text(self, phrases):
        """phrases: str | list[str] -> ``(before (N, D_text), after (N, D_proj))``."""
        if isinstance(phrases, str):
            phrases = [phrases]
        tok = self.tokenizer(list(phrases), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        out = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                    attention_mask=tok["attention_mask"].to(self.device))
        before = out.pooler_output
        after = _l2_normalize(self.model.text_projection(before))
        return before.float(), after.float()

    def text_before(self, phrases) -> torch.Tensor:
        """``(N, D_text)`` pooled text features before ``text_projection`` (unnormalised)."""
        return self.encode_text(phrases)[0]

    def text_after(self, phrases) -> torch.Tensor:
        """``(N, D_proj)`` L2-normalised ``text_embeds``."""
        return self.encode_text(phrases)[1]

    # images
    def pixel_values(self, images, mode: str = "clip") -> torch.Tensor:
        """images -> ``(N, 3, s, s)`` normalised pixels on device (``s`` = the model's image size)."""
        if isinstance(images, torch.Tensor):
            pv = images
        else:
            pv = preprocess_images(images, mode=mode, size=self.image_size)
        return pv.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode_images(self, images, mode: str = "clip"):
        """images -> ``(before (N, D_vision), after (N, D_proj))``."""
        out = self.model.vision_model(pixel_values=self.pixel_values(images, mode))
        before = out.pooler_output
        after = _l2_normalize(self.model.visual_projection(before))
        return before.float(), after.float()

    def image_before(self, images, mode: str = "clip") -> torch.Tensor:
        """``(N, D_vision)`` vision pooled output (CLS after post-layernorm)."""
        return self.encode_images(images, mode)[0]

    def image_after(self, images, mode: str = "clip") -> torch.Tensor:
        """``(N, D_proj)`` L2-normalised ``image_embeds``."""
        return self.encode_images(images, mode)[1]

    def image_reprojected(self, images, mode: str = "clip", norm: float = TEXT_FEATURE_NORM) -> torch.Tensor:
        """``(N, D_text)``: :func:`reproject_image_embedding` of ``image_after`` with this model's P."""
        return reproject_image_embedding(self.image_after(images, mode), self.projection_matrix.to(self.device), norm)
