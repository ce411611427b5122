"""UI state <-> layout entries for the web demo (``demo/app.py``); no Gradio here, so it is unit-tested.

The page holds boxes drawn on an ``image_annotator`` (pixel ``xmin, ymin, xmax, ymax`` on its
background image), a table of ``[box, phrase, reference image]`` rows, keypoints drawn as small
boxes labelled ``p<person> <keypoint>`` on a second annotator, and file paths of uploaded images.
:func:`entry_from_ui` turns that into a layout entry of ``gligen_inference.py --layout`` (normalised
``xyxy``), which :meth:`ldm.inference.layout.Generation.from_dict` validates with the CLI's messages;
:func:`annotation_boxes` and :func:`keypoint_boxes` go the other way when a layout is loaded. The output
size (height x width controls, :func:`size_choices`) becomes the layout's ``settings.height/width``
(:func:`options_from_ui`); the blank canvas has its aspect (:func:`canvas_size`), so boxes stay normalised.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Sequence

from ldm.inference.errors import LayoutError
from ldm.inference.layout import NUM_KEYPOINTS

CANVAS = 512  # long side of the blank drawing canvas of the generation modes (its aspect is the output's)
STYLE_BOX = [0.0, 1.0, 0.0, 1.0]  # the original's "style image" box (a degenerate box grounding only an image)
POINT_BOX = 14  # side in canvas pixels of the small box that stands for one keypoint
TABLE_HEADERS = ["box", "phrase", "reference image"]

#: COCO-17 keypoint names (the order of the keypoint checkpoint)
KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
#: a standing person facing the viewer, in a unit box (x, y); "left" is the person's left
POSE_TEMPLATE = ((.50, .08), (.54, .06), (.46, .06), (.58, .08), (.42, .08), (.68, .22), (.32, .22), (.76, .38),
                 (.24, .38), (.80, .52), (.20, .52), (.62, .55), (.38, .55), (.63, .76), (.37, .76), (.64, .96),
                 (.36, .96))
_POINT_LABEL = re.compile(r"^p(\d+)\s+(\w+)$")


# ------------------------------------------------------------------ output size
def size_choices(resolution: int = 512, step: int = 64) -> list[int]:
    """Output sizes offered for a checkpoint generating ``resolution`` pixels whose UNet needs multiples of
    ``step`` (and the pipeline multiples of 8): half to twice its resolution in eighths of it, or in the
    smallest step allowed (256..1024 by 64 for SD-1.x's 512 and 64)."""
    unit = math.lcm(int(step), 8)
    inc = max(unit, resolution // 8 // unit * unit)
    lo = -(-(resolution // 2) // inc) * inc
    return list(range(lo, 2 * resolution + 1, inc))


def canvas_size(height: int, width: int) -> tuple[int, int]:
    """(W, H) of the blank drawing canvas for an output of ``height`` x ``width``: same aspect, long side CANVAS."""
    scale = CANVAS / max(int(height), int(width))
    return max(1, round(int(width) * scale)), max(1, round(int(height) * scale))


def options_from_ui(*, sampler: str, steps, guidance_scale, batch_size, negative_prompt: str | None,
                    height, width) -> dict:
    """The page's sampling and size controls -> a layout's ``settings`` block (the CLI's keys and values)."""
    return dict(sampler=sampler, steps=int(steps), guidance_scale=float(guidance_scale), batch_size=int(batch_size),
                negative_prompt=negative_prompt or "", height=int(height), width=int(width))


# ------------------------------------------------------------------ boxes
def image_size(image: Any) -> tuple[int, int]:
    """(W, H) of an annotator background: numpy (H, W, C), PIL image or file path."""
    if image is None:
        return CANVAS, CANVAS
    if hasattr(image, "shape"):
        return int(image.shape[1]), int(image.shape[0])
    if hasattr(image, "size") and not callable(image.size):
        return tuple(image.size)
    from ldm.imageops import image_size as header_size

    return header_size(image)  # from the header, size-checked


def normalised_boxes(annotation: dict | None) -> list[list[float]]:
    """Annotator value -> normalised ``[x0, y0, x1, y1]`` per box, in drawing order (clamped to [0, 1])."""
    if not annotation or not annotation.get("boxes"):
        return []
    w, h = image_size(annotation.get("image"))
    out = []
    for b in annotation["boxes"]:
        x0, x1 = sorted((float(b["xmin"]) / w, float(b["xmax"]) / w))
        y0, y1 = sorted((float(b["ymin"]) / h, float(b["ymax"]) / h))
        out.append([round(min(max(v, 0.0), 1.0), 4) for v in (x0, y0, x1, y1)])
    return out


def annotation_boxes(boxes: Sequence[Sequence[float]], size: tuple[int, int], labels: Sequence[str] = ()) -> list:
    """Normalised ``xyxy`` boxes -> annotator boxes in pixels of an image of ``size`` (W, H)."""
    w, h = size
    out = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        label = labels[i] if i < len(labels) and labels[i] else str(i + 1)
        out.append({"xmin": round(x0 * w), "ymin": round(y0 * h), "xmax": round(x1 * w), "ymax": round(y1 * h),
                    "label": label})
    return out


def sync_rows(boxes: Sequence, rows: Sequence[Sequence] | None, labels: Sequence[str] = ()) -> list[list[str]]:
    """Table rows after the boxes changed: one row per box, existing phrases / images kept by position.

    A new box's phrase is its label on the canvas when that is not the default number.
    """
    rows = [list(r) + [""] * (3 - len(r)) for r in (rows or []) if any(str(c or "").strip() for c in r)]
    out = []
    for i in range(len(boxes)):
        if i < len(rows):
            phrase, image = str(rows[i][1] or ""), str(rows[i][2] or "")
        else:
            label = labels[i] if i < len(labels) else ""
            phrase, image = ("" if not label or label.isdigit() else label), ""
        out.append([str(i + 1), phrase, image])
    return out


# ------------------------------------------------------------------ keypoints
def pose_person(slot: int) -> list[list[float]]:
    """The template pose (17 normalised points) for a new person in one of three side-by-side slots."""
    x0, y0, w, h = 0.05 + 0.32 * (slot % 3), 0.1, 0.26, 0.8
    return [[round(x0 + x * w, 4), round(y0 + y * h, 4)] for x, y in POSE_TEMPLATE]


def keypoint_boxes(persons: Sequence[Sequence[Sequence[float]]], size: tuple[int, int] = (CANVAS, CANVAS)) -> list:
    """Persons x 17 normalised points -> small annotator boxes labelled ``p<n> <name>`` (absent points skipped)."""
    w, h = size
    r = POINT_BOX / 2
    out = []
    for p, person in enumerate(persons):
        for name, (x, y) in zip(KEYPOINT_NAMES, person):
            if (x, y) == (0, 0):
                continue
            cx, cy = x * w, y * h
            out.append({"xmin": round(cx - r), "ymin": round(cy - r), "xmax": round(cx + r), "ymax": round(cy + r),
                        "label": f"p{p + 1} {name}"})
    return out


def persons_from_annotation(annotation: dict | None) -> list[list[list[float]]]:
    """Keypoint annotator value -> persons x 17 normalised ``[x, y]`` (``[0, 0]`` where a point was removed)."""
    if not annotation or not annotation.get("boxes"):
        return []
    w, h = image_size(annotation.get("image"))
    persons: dict[int, list] = {}
    for b in annotation["boxes"]:
        m = _POINT_LABEL.match(str(b.get("label", "")).strip())
        if not m or m.group(2) not in KEYPOINT_NAMES:
            raise LayoutError(f"keypoint box labelled {b.get('label')!r}: labels are 'p<person> <keypoint>', "
                              "e.g. 'p1 nose' (use 'Add person')")
        person = persons.setdefault(int(m.group(1)), [[0.0, 0.0] for _ in range(NUM_KEYPOINTS)])
        cx, cy = (b["xmin"] + b["xmax"]) / 2 / w, (b["ymin"] + b["ymax"]) / 2 / h
        person[KEYPOINT_NAMES.index(m.group(2))] = [round(min(max(cx, 0.0), 1.0), 4), round(min(max(cy, 0.0), 1.0), 4)]
    return [persons[k] for k in sorted(persons)]


# ------------------------------------------------------------------ the layout entry
def alpha_type(beta: float) -> list[float]:
    """Scheduled sampling: grounding on for a fraction ``beta`` of the steps, then off (``[beta, 0, 1 - beta]``)."""
    beta = round(min(max(float(beta), 0.0), 1.0), 4)
    return [beta, 0.0, round(1.0 - beta, 4)]


def _reference(name: str, files: Sequence[str], where: str) -> str | None:
    """A table cell naming an uploaded reference image (its file name or 1-based number) -> its path."""
    name = str(name or "").strip()
    if not name:
        return None
    for i, path in enumerate(files):
        if name == os.path.basename(path) or name == str(i + 1):
            return path
    known = ", ".join(os.path.basename(p) for p in files) or "none uploaded"
    raise LayoutError(f"{where}reference image {name!r} is not among the uploaded images ({known})")


def entry_from_ui(family: str, *, prompt: str, boxes: Sequence = (), rows: Sequence = (), reference_files=(),
                  style_image: str | None = None, persons: Sequence = (), condition: str | None = None,
                  input_image: str | None = None, negative_prompt: str | None = None, beta: float = 0.3,
                  seed: int | None = None, ckpt: str | None = None) -> dict:
    """The page's state for a checkpoint of ``family`` -> one layout entry (``--layout`` format).

    ``rows`` are ``[box, phrase, reference image]``; every row is a phrase, so a table with more
    rows than boxes fails validation with the CLI's message. Empty phrases become ``null``.
    """
    from ldm.inference.modes import SPATIAL_LAYOUT_KEYS

    entry: dict = {"prompt": prompt or ""}
    if negative_prompt:
        entry["negative_prompt"] = negative_prompt
    if family in ("text", "text_image"):
        rows = [list(r) + [""] * (3 - len(r)) for r in rows if any(str(c or "").strip() for c in r)]
        phrases = [str(r[1]).strip() or None for r in rows]
        images = [_reference(r[2], reference_files, f"box {i + 1}: ") for i, r in enumerate(rows)] \
            if family == "text_image" else []
        for i, phrase in enumerate(phrases):
            if phrase is None and not (images and images[i]):
                what = "phrase or reference image" if family == "text_image" else "phrase"
                raise LayoutError(f"box {i + 1} has no {what} (fill in its row of the table)")
        boxes = [list(b) for b in boxes]
        if family == "text_image" and style_image:
            boxes.append(list(STYLE_BOX))
            phrases.append(None)
            images.append(style_image)
        entry.update(boxes=boxes, phrases=phrases)
        if any(images):
            entry["images"] = images
    elif family == "keypoint":
        entry["keypoints"] = [list(map(list, p)) for p in persons]
    elif family in SPATIAL_LAYOUT_KEYS and condition:
        entry[SPATIAL_LAYOUT_KEYS[family]] = condition
    if input_image:
        entry["input_image"] = input_image
    entry["alpha_type"] = alpha_type(beta)
    if seed is not None and int(seed) >= 0:
        entry["seed"] = int(seed)
    if ckpt:
        entry["ckpt"] = ckpt
    return entry


def canny_map(path: str, low: int = 100, high: int = 200):
    """Canny edges of a photo (the thresholds of the original's annotator) -> PIL "RGB" image
    (:func:`ldm.imageops.canny`; the photo is opened with the size-checked opener)."""
    from ldm.imageops import canny

    return canny(path, int(low), int(high))
