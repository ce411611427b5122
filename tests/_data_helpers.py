"""Synthetic data for the dataset / DATA-tool / CLIP-feature tests (everything in tmp dirs)."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from dataset.codec import encode_embedding_b64, encode_image_b64, encode_row  # noqa: E402
from dataset.tsv import TSVWriter  # noqa: E402

# embedding sizes of the synthetic box TSVs (text before, text after, image before, image after)
D_TEXT, D_PROJ, D_VISION = 8, 4, 6


def rand_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def emb(value: float, dim: int) -> torch.Tensor:
    """Recognisable embedding: ``value`` in slot 0, then 1, 2, ..."""
    t = torch.arange(dim, dtype=torch.float32)
    t[0] = value
    return t


def box_anno(bbox, value: float, anno_id: int = 0, **extra) -> dict:
    """Annotation with embeddings tagged by ``value`` (slot 0)."""
    e_after = emb(value, D_PROJ)
    e_after = e_after / e_after.norm()  # unit norm, like CLIP image_embeds
    anno = {
        "bbox": list(bbox), "id": anno_id,
        "text_embedding_before": encode_embedding_b64(emb(value, D_TEXT)),
        "text_embedding_after": encode_embedding_b64(emb(value, D_PROJ)),
        "image_embedding_before": encode_embedding_b64(emb(value, D_VISION)),
        "image_embedding_after": encode_embedding_b64(e_after),
    }
    anno.update(extra)
    return anno


def box_item(data_id, image: Image.Image, annos, caption: str | None = "a caption", is_det=False) -> dict:
    item = {"data_id": data_id, "image": encode_image_b64(image), "file_name": f"{data_id}.jpg", "annos": annos}
    if is_det:
        item["is_det"] = True
    else:
        item["caption"] = caption
    return item


def write_tsv(path: str, items) -> str:
    """Write items as rows ``[data_id, json]``; raw ``list`` items are written column-wise as is."""
    with TSVWriter(path) as w:
        for item in items:
            w.write(item if isinstance(item, list) else encode_row(item))
    return path


def simple_box_tsv(path: str, n: int = 3, size=(100, 50), caption="a caption") -> str:
    """``n`` rows, each with two boxes."""
    items = [box_item(i, rand_image(*size, seed=i),
                      [box_anno([10, 0, 30, 50], 1.0, 2 * i), box_anno([25, 10, 50, 25], 2.0, 2 * i + 1)],
                      caption=f"{caption} {i}") for i in range(n)]
    return write_tsv(path, items)


def projection(d_proj: int = D_PROJ, d_text: int = D_TEXT, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_proj, d_text, generator=g)


def make_tiny_clip(path: str, seed: int = 0) -> str:
    """Save a tiny random ``CLIPModel`` (vocab 49408, 77 positions) into ``path``."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77),
        vision_config=dict(hidden_size=48, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(path)
    return path


def write_json(path: str, obj) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return path
