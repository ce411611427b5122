"""Evaluation layouts from a COCO-format annotation file (COCO 2014 / 2017 val, LVIS).

GLIGEN is evaluated on COCO by generating one image per validation image from that image's
caption and its object boxes, the object category names serving as the grounding phrases. The
boxes are prepared exactly as the box datasets prepare them for training
(``dataset/transforms.py``, after the original ``TSVDataset``): the image is scaled so that its
short side is ``S`` and centre-cropped to ``S x S``; each box is mapped into that crop and
clamped, boxes covering less than ``min_box_size`` (1 %) of the crop are dropped, the rest are
sorted by area (largest first) and the first ``max_boxes`` (30, the model's limit) are kept.
Crowd annotations (``iscrowd = 1``) are skipped. Images left with fewer than ``min_objects`` or
more than ``max_objects`` boxes are skipped (layout-to-image papers often use 3..8).

The caption is the image's ``k``-th caption (captions ordered by annotation id; ``k`` = the
sample index, modulo the number of captions). Without a captions file, or for an image that has
none, the caption is the kept category names joined by ``", "`` (the original's pseudo caption
for detection data).

LVIS files are COCO-format too: their images carry ``coco_url`` instead of ``file_name`` (the
file name is its last path component) and category names use ``_`` for spaces.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from dataset.transforms import TransformInfo, recalculate_box
from ldm.inference.errors import LayoutError
from ldm.inference.layout import MAX_OBJS


@dataclass(frozen=True)
class Protocol:
    """How layouts are built from annotations (recorded in ``layouts.json`` and the scores)."""

    image_size: int = 512
    min_box_size: float = 0.01
    max_boxes: int = MAX_OBJS
    min_objects: int = 1
    max_objects: int | None = None

    def __post_init__(self):
        if not 1 <= self.max_boxes <= MAX_OBJS:
            raise LayoutError(f"--max-boxes must be between 1 and {MAX_OBJS}, got {self.max_boxes}")
        if not 0.0 <= self.min_box_size < 1.0:
            raise LayoutError(f"--min-box-size must be a fraction in [0, 1), got {self.min_box_size}")
        if self.min_objects < 0 or (self.max_objects is not None and self.max_objects < self.min_objects):
            raise LayoutError(f"object count range {self.min_objects}..{self.max_objects} is empty")


@dataclass
class EvalImage:
    """One annotated image turned into a layout.

    ``boxes``: normalised ``[x0, y0, x1, y1]`` in the ``S x S`` centre crop, largest first;
    ``phrases`` / ``category_ids``: one per box; ``captions``: the image's captions (may be empty).
    """

    image_id: int | str
    file_name: str
    width: int
    height: int
    phrases: list[str]
    boxes: list[list[float]]
    category_ids: list[int]
    captions: list[str] = field(default_factory=list)

    def caption(self, k: int = 0) -> str:
        if self.captions:
            return self.captions[k % len(self.captions)]
        return ", ".join(self.phrases)


def crop_geometry(width: int, height: int, size: int) -> TransformInfo:
    """The :class:`TransformInfo` that ``dataset.transforms.transform_image`` produces for an image of
    ``width x height`` (no flip), computed from the size alone (no pixels read)."""
    w, h = width, height
    while min(w, h) >= 2 * size:
        w, h = w // 2, h // 2
    scale = size / min(w, h)
    w, h = round(w * scale), round(h * scale)
    return TransformInfo(size / min(width, height), (h - size) // 2, (w - size) // 2, width, height, False)


def _read_json(path: str, what: str) -> dict:
    from .report import read_json

    return read_json(path, what)


def _category_name(cat: dict) -> str:
    return str(cat["name"]).replace("_", " ").strip()


def load_categories(annotations: str | dict) -> dict[int, str]:
    """``{category_id: phrase}`` of a COCO-format file (or its loaded dict)."""
    data = _read_json(annotations, "annotations") if isinstance(annotations, str) else annotations
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise LayoutError("the annotations have no 'categories' (expected a COCO-format instances file)")
    try:
        return {int(c["id"]): _category_name(c) for c in cats}
    except (KeyError, TypeError, ValueError):
        raise LayoutError("every category needs an integer 'id' and a 'name'") from None


def build_layouts(annotations: str, captions: str | None = None, protocol: Protocol = Protocol(),
                  limit: int | None = None) -> list[EvalImage]:
    """Read a COCO-format instances file (+ optional captions file) -> layouts ordered by image id.

    ``limit``: keep only the first ``limit`` layouts (after filtering).
    """
    data = _read_json(annotations, "annotations")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise LayoutError(f"the annotations file {annotations} has no '{key}' list (COCO format expected)")
    names = load_categories(data)
    S = protocol.image_size

    by_image: dict = {}
    for a in data["annotations"]:
        if a.get("iscrowd", 0):
            continue
        try:
            by_image.setdefault(a["image_id"], []).append((int(a["category_id"]), [float(v) for v in a["bbox"]]))
        except (KeyError, TypeError, ValueError):
            raise LayoutError(f"annotation {a.get('id', '?')} needs 'image_id', 'category_id' and a 4-number "
                              "'bbox'") from None
    caps: dict = {}
    if captions:
        cdata = _read_json(captions, "captions")
        entries = sorted(cdata.get("annotations") or [], key=lambda c: c.get("id", 0))
        for c in entries:
            if isinstance(c.get("caption"), str):
                caps.setdefault(c.get("image_id"), []).append(c["caption"].strip())

    out = []
    for im in sorted(data["images"], key=lambda i: (str(type(i.get("id"))), i.get("id"))):
        try:
            image_id, W, H = im["id"], int(im["width"]), int(im["height"])
        except (KeyError, TypeError, ValueError):
            raise LayoutError("every image needs 'id', 'width' and 'height'") from None
        file_name = im.get("file_name") or os.path.basename(str(im.get("coco_url", ""))) or f"{image_id}.jpg"
        info = crop_geometry(W, H, S)
        kept = []
        for cat, bbox in by_image.get(image_id, []):
            if cat not in names:
                raise LayoutError(f"image {image_id}: category id {cat} is not in 'categories'")
            valid, xyxy = recalculate_box(bbox, info, S, protocol.min_box_size)
            if valid:
                kept.append(((xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1]), cat, [v / S for v in xyxy]))
        kept.sort(key=lambda t: -t[0])  # stable: ties keep file order
        kept = kept[:protocol.max_boxes]
        if len(kept) < protocol.min_objects or (protocol.max_objects is not None and len(kept) > protocol.max_objects):
            continue
        out.append(EvalImage(image_id=image_id, file_name=file_name, width=W, height=H,
                             phrases=[names[c] for _, c, _ in kept], boxes=[b for _, _, b in kept],
                             category_ids=[c for _, c, _ in kept], captions=caps.get(image_id, [])))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise LayoutError(f"no image of {annotations} has a usable layout "
                          f"({protocol.min_objects}..{protocol.max_objects or protocol.max_boxes} boxes of at least "
                          f"{protocol.min_box_size:.0%} of the crop)")
    return out
