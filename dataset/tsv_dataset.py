"""Box (grounding / detection) datasets stored as TSV."""
from __future__ import annotations

import random

import torch

from .base_dataset import BaseDataset
from .codec import CorruptSampleError, decode_embedding_b64, decode_image_b64, decode_row, require
from .transforms import largest_first, recalculate_box, transform_image
from .tsv import TSVFile

__all__ = ["TSVDataset", "mask_for_random_drop_text_or_image_feature", "map_image_embedding", "make_a_sentence"]

WHICH_LAYER_TEXT = ("before", "after")
WHICH_LAYER_IMAGE = ("after", "after_renorm", "after_reproject")
RANDOM_DROP_EMBEDDING = ("none", "both", "image")
TEXT_FEATURE_NORM = 28.7


def mask_for_random_drop_text_or_image_feature(masks: torch.Tensor, random_drop_embedding: str):
    """Per-box embedding dropout.

    masks: (N,) float. Returns ``(image_masks, text_masks)``, each (N,).
    ``'both'``: for each slot, with probability 0.5 drop exactly one of image/text (chosen
    uniformly), so a real box never loses both. ``'image'``: drop image embeddings with p=0.5.
    """
    N = masks.shape[0]
    if random_drop_embedding == "none":
        return masks.clone(), masks.clone()
    if random_drop_embedding == "both":
        keep = torch.ones(2, N)
        for i in range(N):
            if random.uniform(0, 1) < 0.5:
                keep[random.choice((0, 1)), i] = 0
        return keep[0] * masks, keep[1] * masks
    if random_drop_embedding == "image":
        return masks * (torch.rand(N) > 0.5).float(), masks.clone()
    raise ValueError(f"random_drop_embedding must be one of {RANDOM_DROP_EMBEDDING}, got {random_drop_embedding!r}")


def map_image_embedding(e_after: torch.Tensor, which_layer_image: str, projection_matrix=None) -> torch.Tensor:
    """Map a unit-norm CLIP image embedding.

    e_after: (D_proj,). ``after`` -> unchanged; ``after_renorm`` -> ``e * 28.7``;
    ``after_reproject`` -> ``v = e @ P``, ``v / ||v|| * 28.7`` with ``P (D_proj, D_text)``.
    """
    if which_layer_image == "after":
        return e_after
    if which_layer_image == "after_renorm":
        return e_after * TEXT_FEATURE_NORM
    if which_layer_image == "after_reproject":
        from ldm.modules.encoders.clip_features import reproject_image_embedding

        return reproject_image_embedding(e_after, projection_matrix, TEXT_FEATURE_NORM)
    raise ValueError(f"which_layer_image must be one of {WHICH_LAYER_IMAGE}, got {which_layer_image!r}")


def make_a_sentence(names, clean: bool = False) -> str:
    """Detection pseudo caption: class names joined by ``", "`` (``clean`` strips ``-other``)."""
    if clean:
        names = [n[:-len("-other")] if n.endswith("-other") else n for n in names]
    return ", ".join(names)


class TSVDataset(BaseDataset):
    """Boxes with phrase / crop embeddings from a GLIGEN TSV.

    Output of ``ds[i]`` (N = ``max_boxes_per_data``, D = ``embedding_len``):

    * ``id``: int | str – ``data_id``
    * ``image``: (3, S, S) float32 in [-1, 1]
    * ``caption``: str – caption, detection pseudo caption, or ``""``
    * ``boxes``: (N, 4) float32 – normalised xyxy, largest area first, zero padded
    * ``masks`` / ``image_masks`` / ``text_masks``: (N,) float32
    * ``text_embeddings`` / ``image_embeddings``: (N, D) float32

    Extra kwargs beyond the original signature: ``projection_matrix`` (tensor or path; default:
    ``text_projection.weight`` of ``clip_version``, loaded lazily once, only for
    ``after_reproject``), ``embedding_len`` (768 for CLIP ViT-L/14) and ``if_generate_lineidx``.
    Corrupt rows are skipped (see :class:`~dataset.base_dataset.BaseDataset`).
    """

    def __init__(self, tsv_path, which_layer_text="before", which_layer_image="after_reproject",
                 prob_use_caption=1, random_drop_embedding="none", image_size=512, min_box_size=0.01,
                 max_boxes_per_data=8, max_images=None, random_crop=False, random_flip=True,
                 projection_matrix=None, clip_version="openai/clip-vit-large-patch14", embedding_len=768,
                 if_generate_lineidx=False):
        super().__init__()
        if which_layer_text not in WHICH_LAYER_TEXT:
            raise ValueError(f"which_layer_text must be one of {WHICH_LAYER_TEXT}, got {which_layer_text!r}")
        if which_layer_image not in WHICH_LAYER_IMAGE:
            raise ValueError(f"which_layer_image must be one of {WHICH_LAYER_IMAGE}, got {which_layer_image!r}")
        if random_drop_embedding not in RANDOM_DROP_EMBEDDING:
            raise ValueError(f"random_drop_embedding must be one of {RANDOM_DROP_EMBEDDING}, "
                             f"got {random_drop_embedding!r}")
        if random_crop:
            raise NotImplementedError("random_crop=True is not implemented (as in the original)")
        if max_boxes_per_data > 99:
            raise ValueError("max_boxes_per_data must be <= 99")
        self.tsv_path = tsv_path
        self.which_layer_text = which_layer_text
        self.which_layer_image = which_layer_image
        self.prob_use_caption = prob_use_caption
        self.random_drop_embedding = random_drop_embedding
        self.image_size = image_size
        self.min_box_size = min_box_size
        self.max_boxes_per_data = max_boxes_per_data
        self.max_images = max_images  # stored but ignored, as in the original
        self.random_flip = random_flip
        self.embedding_len = embedding_len
        self.clip_version = clip_version
        self._projection_source = projection_matrix
        self._projection_matrix = None
        self.tsv_file = TSVFile(tsv_path, if_generate_lineidx=if_generate_lineidx)

    # ------------------------------------------------------------------ helpers
    @property
    def projection_matrix(self) -> torch.Tensor:
        """``(D_proj, D_text)`` float32, resolved on first use."""
        if self._projection_matrix is None:
            from ldm.modules.encoders.clip_features import load_text_projection, resolve_projection_matrix

            if self._projection_source is None:
                P = load_text_projection(self.clip_version)
            else:
                P = resolve_projection_matrix(self._projection_source)
            if P.ndim != 2 or P.shape[1] != self.embedding_len:
                raise ValueError(f"projection_matrix has shape {tuple(P.shape)}; expected (D_proj, {self.embedding_len})")
            self._projection_matrix = P
        return self._projection_matrix

    def _image_embedding_len(self) -> int:
        if self.which_layer_image == "after_reproject":
            return self.projection_matrix.shape[0]
        return self.embedding_len

    def __len__(self) -> int:
        return len(self.tsv_file)

    def describe_sample(self, index: int) -> str:
        return f"row {index} of {self.tsv_path}"

    # ------------------------------------------------------------------ sample
    def get_item(self, index: int) -> dict:
        S, N = self.image_size, self.max_boxes_per_data
        try:
            row = self.tsv_file[index]
        except UnicodeDecodeError as e:
            raise CorruptSampleError(f"row is not UTF-8: {e}") from e
        item = decode_row(row)
        image, info = transform_image(decode_image_b64(require(item, "image")), S, self.random_flip)
        is_det = bool(item.get("is_det", False))
        annos = require(item, "annos")
        if not isinstance(annos, list):
            raise CorruptSampleError("'annos' is not a list")

        text_key = f"text_embedding_{self.which_layer_text}"
        image_len = self._image_embedding_len()
        valid = []  # (area, box, text_emb, image_emb, category_name)
        for anno in annos:
            bbox = require(anno, "bbox")
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
                raise CorruptSampleError(f"bbox must be [x, y, w, h], got {bbox!r}")
            try:
                ok, xyxy = recalculate_box(bbox, info, S, self.min_box_size)
            except (TypeError, ValueError) as e:
                raise CorruptSampleError(f"bad bbox {bbox!r}: {e}") from e
            if not ok:
                continue
            x0, y0, x1, y1 = xyxy
            text_emb = decode_embedding_b64(require(anno, text_key), self.embedding_len)
            image_emb = decode_embedding_b64(require(anno, "image_embedding_after"), image_len)
            image_emb = map_image_embedding(image_emb, self.which_layer_image,
                                            self.projection_matrix if self.which_layer_image == "after_reproject" else None)
            name = require(anno, "category_name") if is_det else None
            valid.append(((x1 - x0) * (y1 - y0), torch.tensor([x0, y0, x1, y1]) / S, text_emb, image_emb, name))

        valid = largest_first(valid, [v[0] for v in valid])[:N]

        boxes = torch.zeros(N, 4)
        masks = torch.zeros(N)
        text_embeddings = torch.zeros(N, self.embedding_len)
        image_embeddings = torch.zeros(N, self.embedding_len)
        for i, (_, box, t, im, _) in enumerate(valid):
            boxes[i] = box
            masks[i] = 1
            text_embeddings[i] = t
            image_embeddings[i] = im
        image_masks, text_masks = mask_for_random_drop_text_or_image_feature(masks, self.random_drop_embedding)

        if random.uniform(0, 1) < self.prob_use_caption:
            caption = make_a_sentence([v[4] for v in valid]) if is_det else str(require(item, "caption"))
        else:
            caption = ""

        return {
            "id": require(item, "data_id"),
            "image": image,
            "caption": caption,
            "boxes": boxes,
            "masks": masks,
            "image_masks": image_masks,
            "text_masks": text_masks,
            "text_embeddings": text_embeddings,
            "image_embeddings": image_embeddings,
        }
