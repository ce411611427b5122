"""Images + grounding annotations -> GLIGEN box TSV (+ .lineidx) with CLIP embeddings.

Replaces the original two-step pipeline (``process_grounding.py`` + ``mydata_to_tsv.py``) with
one pass; the stored fields are exactly those the original's TSV rows hold (see DATA/README.md).

Usage (from the repository root)::

    python DATA/make_tsv.py --image_root imgs/ --annotations ann.json --out out/train-00.tsv \
        [--clip openai/clip-vit-large-patch14] [--detection] [--batch_size 16] [--device cuda]

Annotation formats (see ``DATA/README.md``):

* simple: ``[{"file_name", "caption", "annos": [{"bbox": [x, y, w, h], "phrase" | "tokens_positive"}]}]``;
* COCO-like grounding: ``{"images": [{"id", "file_name", "caption"}], "annotations": [{"id",
  "image_id", "bbox", "tokens_positive"}]}``;
* COCO instances (``--detection``): ``{"images", "annotations": [{..., "category_id"}],
  "categories": [{"id", "name"}]}``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import warnings

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.imageops import ImageError, open_image  # noqa: E402

from dataset.codec import encode_embedding_b64, encode_image_b64, encode_row  # noqa: E402
from dataset.tsv import TSVWriter  # noqa: E402

__all__ = ["load_annotations", "phrase_of", "make_tsv", "main"]

DROPPED_IMAGE_FIELDS = ("original_img_id", "original_id", "sentence_id", "dataset_name", "data_source")
DROPPED_ANNO_FIELDS = ("iscrowd", "area")
EMBEDDING_FIELDS = ("text_embedding_before", "text_embedding_after", "image_embedding_before",
                    "image_embedding_after")


# ----------------------------------------------------------------------------- annotations
def _find_span(caption: str, phrase: str):
    start = caption.find(phrase)
    if start < 0:
        start = caption.lower().find(phrase.lower())
    return None if start < 0 else [[start, start + len(phrase)]]


def _clean_anno(anno: dict, data_id, anno_id) -> dict:
    anno = {k: copy.deepcopy(v) for k, v in anno.items() if k not in DROPPED_ANNO_FIELDS}
    anno.pop("image_id", None)
    anno["data_id"] = data_id
    anno.setdefault("id", anno_id)
    return anno


def _from_simple(entries: list, detection: bool) -> list[dict]:
    items, next_anno_id = [], 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("annos", []), list):
            raise ValueError(f"entry {i} must be an object with 'file_name', 'caption' and an 'annos' list")
        if "file_name" not in entry:
            raise ValueError(f"entry {i} has no 'file_name'")
        item = {k: copy.deepcopy(v) for k, v in entry.items() if k not in ("annos", "id") + DROPPED_IMAGE_FIELDS}
        item["data_id"] = entry.get("data_id", entry.get("id", i))
        caption = entry.get("caption")
        annos = []
        for anno in entry.get("annos", []):
            anno = _clean_anno(anno, item["data_id"], next_anno_id)
            next_anno_id += 1
            if detection:
                anno.setdefault("category_name", anno.get("phrase"))
            elif "tokens_positive" not in anno and "phrase" in anno and caption is not None:
                span = _find_span(caption, anno["phrase"])
                if span is not None:
                    anno["tokens_positive"] = span
            annos.append(anno)
        item["annos"] = annos
        items.append(item)
    return items


def _from_coco(js: dict, detection: bool) -> list[dict]:
    images, annotations = js["images"], js.get("annotations", [])
    image_ids = [im["id"] for im in images]
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image ids are not unique")
    anno_ids = [a["id"] for a in annotations]
    if len(set(anno_ids)) != len(anno_ids):
        raise ValueError("annotation ids are not unique")
    categories = {c["id"]: c["name"] for c in js.get("categories", [])}
    by_image = {i: [] for i in image_ids}
    for a in annotations:
        if a["image_id"] not in by_image:
            raise ValueError(f"annotation {a['id']} refers to unknown image_id {a['image_id']}")
        by_image[a["image_id"]].append(a)
    items = []
    for im in images:
        item = {k: copy.deepcopy(v) for k, v in im.items() if k not in ("id",) + DROPPED_IMAGE_FIELDS}
        item["data_id"] = im["id"]
        annos = []
        for a in by_image[im["id"]]:
            anno = _clean_anno(a, im["id"], a["id"])
            if detection and "category_name" not in anno:
                if anno.get("category_id") not in categories:
                    raise ValueError(f"annotation {a['id']}: category_id {anno.get('category_id')} not in 'categories'")
                anno["category_name"] = categories[anno["category_id"]]
            annos.append(anno)
        item["annos"] = annos
        items.append(item)
    return items


def load_annotations(annotations, detection: bool = False) -> list[dict]:
    """Annotation JSON (path or loaded object, any supported format) -> normalised items.

    Item: ``{"data_id", "file_name", "caption" | "is_det": True, "annos": [{"bbox", "id", "data_id",
    "tokens_positive" | "phrase" | "category_name", ...}], ...}`` (``iscrowd``/``area`` removed).
    """
    source = "annotations"
    if isinstance(annotations, (str, os.PathLike)):
        source = os.fspath(annotations)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"annotation file not found: {source}")
        try:
            with open(source, encoding="utf-8") as f:
                annotations = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"annotation file {source} is not valid JSON: {e}") from None
    try:
        if isinstance(annotations, dict) and "images" in annotations:
            items = _from_coco(annotations, detection)
        elif isinstance(annotations, list):
            items = _from_simple(annotations, detection)
        else:
            raise ValueError("unsupported annotation format: expected a list of per-image entries or a "
                             "COCO-style object with 'images' and 'annotations'")
    except (KeyError, TypeError, AttributeError) as e:
        what = f"missing key {e.args[0]!r}" if isinstance(e, KeyError) and e.args else str(e)
        raise ValueError(f"{source}: malformed annotations ({what})") from None
    for item in items:
        if not isinstance(item.get("file_name"), str) or not item["file_name"]:
            raise ValueError(f"{source}: image {item.get('data_id')} has no 'file_name' string")
        if detection:
            item["is_det"] = True
            item.pop("caption", None)
            for anno in item["annos"]:
                if not anno.get("category_name"):
                    raise ValueError(f"image {item['data_id']}: detection annotation without category_name/phrase")
        elif not isinstance(item.get("caption"), str):
            raise ValueError(f"image {item['data_id']} ({item['file_name']}) has no caption "
                             f"(use --detection for detection data)")
        else:
            for anno in item["annos"]:  # every phrase is known before any image is read or file written
                phrase_of(anno, item["caption"], False)
    return items


def phrase_of(anno: dict, caption: str | None, is_det: bool) -> str:
    """Entity text to embed: category name (detection), ``caption[s:e]`` of every
    ``tokens_positive`` span joined by spaces, or the anno's ``phrase``."""
    if is_det:
        return str(anno["category_name"])
    spans = anno.get("tokens_positive")
    if spans:
        ok = isinstance(spans, list) and isinstance(caption, str) and all(
            isinstance(sp, (list, tuple)) and len(sp) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in sp)
            and 0 <= sp[0] < sp[1] <= len(caption) for sp in spans)
        if not ok:
            raise ValueError(f"annotation {anno.get('id')}: 'tokens_positive' must be [[start, end], ...] character "
                             f"spans inside the caption, got {spans!r}")
        return " ".join(caption[s:e] for s, e in spans)
    if isinstance(anno.get("phrase"), str) and anno["phrase"].strip():
        return anno["phrase"]
    raise ValueError(f"annotation {anno.get('id')} (image {anno.get('data_id')}) has no phrase: give 'phrase' or "
                     "'tokens_positive'")


# ----------------------------------------------------------------------------- embeddings
def _embed_pending(pending: list, features, batch_size: int) -> None:
    """Attach the four base64 embeddings to every anno of the pending ``(item, image, annos)``."""
    from ldm.modules.encoders.clip_features import crop_box

    jobs = [(anno, image, phrase) for _, image, annos in pending for anno, phrase in annos]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        t_before, t_after = features.encode_text([p for _, _, p in chunk])
        crops = [crop_box(image, anno["bbox"]) for anno, image, _ in chunk]
        i_before, i_after = features.encode_images(crops, mode="crop_resize")
        for k, (anno, _, _) in enumerate(chunk):
            for field, t in zip(EMBEDDING_FIELDS, (t_before[k], t_after[k], i_before[k], i_after[k])):
                anno[field] = encode_embedding_b64(t)


def _valid_box(bbox) -> bool:
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return False
    return all(map(math.isfinite, (x, y, w, h))) and w > 0 and h > 0


def make_tsv(annotations, image_root: str, out: str, clip: str = "openai/clip-vit-large-patch14",
             detection: bool = False, batch_size: int = 16, device: str = "cpu", features=None,
             chunk_idx: int = 0, total_chunk: int = 1, progress: bool = True) -> dict:
    """Write ``out`` (+ ``<stem>.lineidx``) from images under ``image_root`` and ``annotations``.

    ``features``: a ready ``CLIPGroundingFeatures`` (else one is built from ``clip`` on ``device``).
    Images are processed in annotation order; with ``total_chunk > 1`` only chunk ``chunk_idx``
    (size ``ceil(N / total_chunk)``) is written. Unreadable images are skipped and boxes with
    non-positive width/height dropped (both warned). Returns counts
    ``{"rows", "boxes", "skipped_images", "dropped_boxes"}``.
    """
    from tqdm import tqdm

    items = load_annotations(annotations, detection)
    if not 0 <= chunk_idx < total_chunk:
        raise ValueError(f"chunk_idx must be in [0, {total_chunk})")
    size = math.ceil(len(items) / total_chunk) if items else 0
    items = items[chunk_idx * size:(chunk_idx + 1) * size]
    if features is None:
        from ldm.modules.encoders.clip_features import CLIPGroundingFeatures

        features = CLIPGroundingFeatures(clip, device=device)

    stats = {"rows": 0, "boxes": 0, "skipped_images": 0, "dropped_boxes": 0}
    with TSVWriter(out) as writer:
        pending, n_pending = [], 0

        def flush():
            _embed_pending(pending, features, batch_size)
            for item, image, annos in pending:
                item["annos"] = [anno for anno, _ in annos]
                item["image"] = encode_image_b64(image)
                writer.write(encode_row(item))
                stats["rows"] += 1
                stats["boxes"] += len(annos)
            pending.clear()

        for item in tqdm(items, desc=f"make_tsv {os.path.basename(out)}", disable=not progress):
            path = os.path.join(image_root, item["file_name"])
            try:
                image = open_image(path, "RGB")
            except ImageError as e:
                warnings.warn(f"skipping unreadable image {path}: {e}", RuntimeWarning)
                stats["skipped_images"] += 1
                continue
            annos = []
            for anno in item["annos"]:
                if not _valid_box(anno.get("bbox")):
                    warnings.warn(f"image {item['data_id']}: dropping box {anno.get('bbox')!r} "
                                  f"(not [x, y, w, h] with w, h > 0)", RuntimeWarning)
                    stats["dropped_boxes"] += 1
                    continue
                annos.append((anno, phrase_of(anno, item.get("caption"), detection)))
            pending.append((item, image, annos))
            n_pending += len(annos)
            if n_pending >= batch_size:
                flush()
                n_pending = 0
        flush()
        if items and stats["rows"] == 0:  # raising aborts the writer: an existing output stays as it was
            raise ValueError(f"no row written: none of the {len(items)} images under {image_root} could be read")
    return stats


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> dict:
    """CLI: prints the counts; bad input is ``error: <one line>`` and exit status 1 (the output TSV,
    written to a temporary file and renamed at the end, is left as it was)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image_root", required=True, help="folder the annotation file names are relative to")
    ap.add_argument("--annotations", required=True, help="annotation JSON (simple or COCO-like)")
    ap.add_argument("--out", required=True, help="output .tsv path (the .lineidx is written next to it)")
    ap.add_argument("--clip", default="openai/clip-vit-large-patch14", help="CLIP model id or local dir")
    ap.add_argument("--detection", action="store_true", help="detection data: pseudo captions from class names")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk_idx", type=int, default=0)
    ap.add_argument("--total_chunk", type=int, default=1)
    args = ap.parse_args(argv)
    from ldm.cli import guard

    with guard((ValueError, OSError, KeyError), status=1, others=1) as g:
        if os.path.isdir(args.out):
            raise ValueError(f"--out {args.out} is a folder; give a .tsv file name")
        if not os.path.isdir(args.image_root):
            raise FileNotFoundError(f"image folder not found: {args.image_root}")
        if args.batch_size < 1 or args.total_chunk < 1:
            raise ValueError("--batch_size and --total_chunk must be positive")
        stats = make_tsv(args.annotations, args.image_root, args.out, clip=args.clip, detection=args.detection,
                         batch_size=args.batch_size, device=args.device, chunk_idx=args.chunk_idx,
                         total_chunk=args.total_chunk)
    if g.status:
        raise SystemExit(g.status)
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()
