"""Layout files: one or more generation requests (JSON or YAML), parsed and validated.

A layout entry uses the keys of the original ``meta`` dicts::

    {"prompt": "a teddy bear sitting next to a bird",
     "phrases": ["a teddy bear", "a bird"],
     "locations": [[0.0, 0.09, 0.33, 0.76], [0.55, 0.11, 1.0, 0.8]],   # or "boxes"
     "alpha_type": [0.3, 0.0, 0.7], "seed": 1, "save_folder_name": "generation_box_text"}

Keys: ``prompt``, ``phrases``, ``locations`` / ``boxes`` (boxes) or ``locations`` /
``keypoints`` (persons x 17 ``[x, y]``), ``images`` (reference images), ``hed_image``,
``canny_image``, ``depth``, ``normal``, ``sem`` (spatial condition images), ``input_image``
(inpainting), ``alpha_type``, ``text_mask``, ``image_mask``, ``seed``, ``ckpt``,
``save_folder_name``, ``negative_prompt``. Anything else is an error.

A file holds one entry, a list of entries, or ``{"settings": {...}, "generations": [...]}``
where ``settings`` are defaults for the CLI options (what the saved ``<n>.json`` files hold,
so a run can be repeated with ``--layout <n>.json``).

Boxes are normalised ``xyxy`` by default; ``box_format`` ``xywh``, ``xyxy_pixels`` and
``xywh_pixels`` are converted here, pixels being relative to the input image (inpainting) or
to a 512x512 canvas. Relative file paths are looked up next to the layout file, then in the
working directory.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ldm.constants import MAX_OBJS, MAX_PERSONS, NUM_KEYPOINTS  # noqa: F401  (re-exported)

from .errors import LayoutError
from .modes import SPATIAL_LAYOUT_KEYS, Mode

PIXEL_CANVAS = 512
BOX_FORMATS = ("xyxy", "xywh", "xyxy_pixels", "xywh_pixels")

LAYOUT_KEYS = ("prompt", "phrases", "locations", "boxes", "keypoints", "images", *SPATIAL_LAYOUT_KEYS.values(),
               "input_image", "alpha_type", "text_mask", "image_mask", "seed", "ckpt", "save_folder_name",
               "negative_prompt")
FILE_KEYS = ("settings", "generations", "outputs")
_FAMILY_OF_KEY = {v: k for k, v in SPATIAL_LAYOUT_KEYS.items()}


# --------------------------------------------------------------------------------------
# small validators
# --------------------------------------------------------------------------------------
def _where(index: int | None) -> str:
    return "" if index is None else f"generation {index}: "


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number_list(v: Any, n: int | None, what: str, where: str) -> list[float]:
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n) or not all(_is_number(x) for x in v):
        size = f"{n} numbers" if n is not None else "a list of numbers"
        raise LayoutError(f"{where}{what} must be {size}, got {v!r}")
    return [float(x) for x in v]


def check_image_file(path: str, what: str, where: str = "", label_map: bool = False) -> str:
    """Raise :class:`LayoutError` unless ``path`` decodes safely (see :mod:`ldm.imageops`; with
    ``label_map``, as a semantic label map of class ids); returns ``path``."""
    from ldm import imageops

    try:
        if label_map:
            imageops.open_label_map(path, what)
        else:
            imageops.open_image(path, None, what).close()
    except imageops.ImageError as e:
        raise LayoutError(f"{where}{e}") from None
    return path


def resolve_path(path: Any, base_dir: str | None, what: str, where: str = "") -> str:
    """A file path from a layout: relative paths are tried next to the layout file, then in the CWD."""
    if not isinstance(path, str) or not path:
        raise LayoutError(f"{where}{what} must be a file path, got {path!r}")
    path = os.path.expanduser(path)
    if not os.path.isabs(path) and base_dir:
        candidate = os.path.normpath(os.path.join(base_dir, path))
        if os.path.exists(candidate):
            return candidate
    return path


def image_size_of(path: str) -> tuple[int, int]:
    from ldm import imageops

    try:
        return imageops.image_size(path)
    except imageops.ImageError as e:
        raise LayoutError(str(e)) from None


def convert_box(box: Sequence[float], box_format: str, canvas: tuple[int, int]) -> list[float]:
    """A box in ``box_format`` -> normalised ``[x0, y0, x1, y1]`` (``canvas`` = (W, H) for pixels)."""
    if box_format not in BOX_FORMATS:
        raise LayoutError(f"unknown box format {box_format!r} (choose from {', '.join(BOX_FORMATS)})")
    a, b, c, d = (float(v) for v in box)
    if box_format.startswith("xywh"):
        c, d = a + c, b + d
    if box_format.endswith("_pixels"):
        w, h = canvas
        a, c, b, d = a / w, c / w, b / h, d / h
    return [a, b, c, d]


def convert_point(xy: Sequence[float], box_format: str, canvas: tuple[int, int]) -> list[float]:
    x, y = (float(v) for v in xy)
    if box_format.endswith("_pixels"):
        x, y = x / canvas[0], y / canvas[1]
    return [x, y]


def _check_unit(values: Sequence[float], what: str, where: str, eps: float = 1e-6) -> list[float]:
    if any(v < -eps or v > 1 + eps for v in values):
        raise LayoutError(f"{where}{what} {[round(v, 6) for v in values]} lies outside [0, 1] "
                          "(normalised coordinates; see --box-format for pixels / xywh)")
    return [min(max(v, 0.0), 1.0) for v in values]


def _mask_value(v: Any, what: str, where: str):
    if v is None or _is_number(v):
        return v
    if isinstance(v, (list, tuple)) and len(v) <= MAX_OBJS and all(_is_number(x) for x in v):
        return [float(x) for x in v]
    raise LayoutError(f"{where}{what} must be null, a number or a list of at most {MAX_OBJS} numbers, got {v!r}")


# --------------------------------------------------------------------------------------
# one generation request
# --------------------------------------------------------------------------------------
@dataclass
class Generation:
    """One validated generation request (coordinates normalised ``xyxy``, paths resolved).

    Attributes:
        prompt: caption.
        phrases: one entry per box (``None`` = no phrase for that box).
        boxes: normalised ``[x0, y0, x1, y1]`` per object (at most 30).
        images: reference-image path per box (``None`` = none), or empty.
        keypoints: persons x 17 x ``[x, y]`` normalised (``[0, 0]`` = absent point), at most 8.
        condition: ``{family: path}`` of the spatial condition image (at most one).
        input_image: image to inpaint (switches inpainting on), or None.
        alpha_type: ``[a0, a1, a2]`` gate schedule, or None (all steps at 1).
        text_mask, image_mask: multipliers of the per-object text / image masks.
        seed, ckpt, save_folder_name, negative_prompt: per-generation overrides.
        entry: the entry as written in the layout (for the saved settings).
    """

    prompt: str
    phrases: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    images: list = field(default_factory=list)
    keypoints: list = field(default_factory=list)
    condition: dict = field(default_factory=dict)
    input_image: str | None = None
    alpha_type: list | None = None
    text_mask: Any = None
    image_mask: Any = None
    seed: int | None = None
    ckpt: str | None = None
    save_folder_name: str | None = None
    negative_prompt: str | None = None
    entry: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- parsing
    @classmethod
    def from_dict(cls, entry: Any, base_dir: str | None = None, box_format: str = "xyxy",
                  index: int | None = None, canvas: tuple[int, int] | None = None) -> "Generation":
        """Validate one layout entry; raises :class:`LayoutError` with a one-line message.
        ``canvas``: (W, H) that pixel coordinates refer to without an input image (default 512x512)."""
        where = _where(index)
        if not isinstance(entry, dict):
            raise LayoutError(f"{where}a layout entry must be a mapping, got {type(entry).__name__}")
        unknown = [k for k in entry if k not in LAYOUT_KEYS]
        if unknown:
            raise LayoutError(f"{where}unknown layout key {unknown[0]!r} (allowed: {', '.join(LAYOUT_KEYS)})")
        if box_format not in BOX_FORMATS:
            raise LayoutError(f"unknown box format {box_format!r} (choose from {', '.join(BOX_FORMATS)})")
        prompt = entry.get("prompt")
        if not isinstance(prompt, str):
            raise LayoutError(f"{where}'prompt' must be a string, got {prompt!r}")
        gen = cls(prompt=prompt, entry=dict(entry))

        # files first: pixel coordinates are relative to the input image
        if entry.get("input_image") is not None:
            gen.input_image = check_image_file(resolve_path(entry["input_image"], base_dir, "input_image", where),
                                               "input_image", where)
        canvas = image_size_of(gen.input_image) if gen.input_image else (canvas or (PIXEL_CANVAS, PIXEL_CANVAS))
        spatial = [k for k in SPATIAL_LAYOUT_KEYS.values() if entry.get(k) is not None]
        if len(spatial) > 1:
            raise LayoutError(f"{where}only one spatial condition per generation, got {spatial}")
        for key in spatial:
            gen.condition[_FAMILY_OF_KEY[key]] = check_image_file(resolve_path(entry[key], base_dir, key, where),
                                                                  key, where, label_map=key == "sem")

        # locations: boxes (4 numbers each) or keypoints (persons x 17 pairs)
        boxes, keypoints = entry.get("boxes"), entry.get("keypoints")
        locations = entry.get("locations")
        if locations is not None:
            if boxes is not None or keypoints is not None:
                raise LayoutError(f"{where}give either 'locations' or 'boxes'/'keypoints', not both")
            if not isinstance(locations, (list, tuple)):
                raise LayoutError(f"{where}'locations' must be a list, got {locations!r}")
            looks_like_persons = bool(locations) and all(
                isinstance(p, (list, tuple)) and p and all(isinstance(q, (list, tuple)) for q in p) for p in locations)
            if looks_like_persons:
                keypoints = locations
            else:
                boxes = locations
        if boxes is not None:
            gen.boxes = gen._parse_boxes(boxes, box_format, canvas, where)
        if keypoints is not None:
            gen.keypoints = gen._parse_keypoints(keypoints, box_format, canvas, where)

        phrases, images = entry.get("phrases"), entry.get("images")
        if phrases is not None:
            if not isinstance(phrases, (list, tuple)) or not all(p is None or isinstance(p, str) for p in phrases):
                raise LayoutError(f"{where}'phrases' must be a list of strings (or nulls), got {phrases!r}")
            gen.phrases = list(phrases)
        if images is not None:
            if not isinstance(images, (list, tuple)):
                raise LayoutError(f"{where}'images' must be a list of image paths (or nulls), got {images!r}")
            gen.images = [None if p is None else check_image_file(resolve_path(p, base_dir, "reference image", where),
                                                                  "reference image", where) for p in images]
        gen._check_counts(where)

        if entry.get("alpha_type") is not None:
            a = _number_list(entry["alpha_type"], 3, "'alpha_type'", where)
            if any(v < 0 for v in a) or not math.isclose(sum(a), 1.0, abs_tol=1e-6):
                raise LayoutError(f"{where}'alpha_type' must be three non-negative fractions summing to 1, got {a}")
            gen.alpha_type = a
        gen.text_mask = _mask_value(entry.get("text_mask"), "'text_mask'", where)
        gen.image_mask = _mask_value(entry.get("image_mask"), "'image_mask'", where)
        seed = entry.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63):
            raise LayoutError(f"{where}'seed' must be an integer in 0..2**63-1, got {seed!r}")
        gen.seed = seed
        for key in ("ckpt", "save_folder_name", "negative_prompt"):
            v = entry.get(key)
            if v is not None and not isinstance(v, str):
                raise LayoutError(f"{where}'{key}' must be a string, got {v!r}")
        if entry.get("ckpt"):
            ck = entry["ckpt"]
            local = resolve_path(ck, base_dir, "ckpt", where)
            gen.ckpt = local if os.path.exists(local) else ck
        name = entry.get("save_folder_name")
        if name is not None and (not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/")
                                 or any(ord(c) < 32 for c in name)):
            raise LayoutError(f"{where}'save_folder_name' must be a relative folder name, got {name!r}")
        gen.save_folder_name = name
        gen.negative_prompt = entry.get("negative_prompt")
        return gen

    @staticmethod
    def _parse_boxes(boxes: Any, box_format: str, canvas, where: str) -> list:
        if not isinstance(boxes, (list, tuple)):
            raise LayoutError(f"{where}boxes must be a list of [x0, y0, x1, y1], got {boxes!r}")
        if len(boxes) > MAX_OBJS:
            raise LayoutError(f"{where}{len(boxes)} objects given, at most {MAX_OBJS} are supported")
        out = []
        for i, b in enumerate(boxes):
            b = convert_box(_number_list(b, 4, f"box {i}", where), box_format, canvas)
            b = _check_unit(b, f"box {i}", where)
            if b[2] < b[0] or b[3] < b[1]:
                raise LayoutError(f"{where}box {i} {b} has x1 < x0 or y1 < y0 (boxes are [x0, y0, x1, y1])")
            out.append(b)
        return out

    @staticmethod
    def _parse_keypoints(persons: Any, box_format: str, canvas, where: str) -> list:
        if not isinstance(persons, (list, tuple)):
            raise LayoutError(f"{where}keypoints must be a list of persons, got {persons!r}")
        if len(persons) > MAX_PERSONS:
            raise LayoutError(f"{where}{len(persons)} persons given, at most {MAX_PERSONS} are supported")
        out = []
        for i, person in enumerate(persons):
            if not isinstance(person, (list, tuple)) or len(person) != NUM_KEYPOINTS:
                raise LayoutError(f"{where}person {i} must have {NUM_KEYPOINTS} [x, y] keypoints (COCO order)")
            pts = []
            for j, xy in enumerate(person):
                xy = convert_point(_number_list(xy, 2, f"keypoint {j} of person {i}", where), box_format, canvas)
                pts.append(_check_unit(xy, f"keypoint {j} of person {i}", where))
            out.append(pts)
        return out

    def _check_counts(self, where: str) -> None:
        nb, np_, ni = len(self.boxes), len(self.phrases), len(self.images)
        if np_ and np_ != nb:
            raise LayoutError(f"{where}{np_} phrases but {nb} boxes: give one box per phrase")
        if ni and ni != nb:
            raise LayoutError(f"{where}{ni} reference images but {nb} boxes: give one box per image")
        if nb and not (np_ or ni):
            raise LayoutError(f"{where}{nb} boxes but no phrases or images to ground in them")
        if self.keypoints and nb:
            raise LayoutError(f"{where}give either boxes or keypoints, not both")

    # ---------------------------------------------------------------- modes
    def implied_mode(self) -> Mode:
        """The checkpoint kind this request asks for (used to pick a released checkpoint)."""
        inpaint = self.input_image is not None
        if self.condition:
            family = next(iter(self.condition))
        elif self.keypoints:
            family = "keypoint"
        elif any(p is not None for p in self.images):
            family = "text_image"
        else:
            family = "text"
        if inpaint and family not in ("text", "text_image"):
            raise LayoutError(f"inpainting is only available for box+text and box+text+image, not {family}")
        return Mode(family, inpaint)

    def check_compatible(self, mode: Mode, ckpt_name: str = "the checkpoint") -> None:
        """Raise :class:`LayoutError` if this request names something ``mode`` cannot do."""
        if mode.inpaint and self.input_image is None:
            raise LayoutError(f"{ckpt_name} is an inpainting model ({mode.name}); the layout needs an 'input_image'")
        if not mode.inpaint and self.input_image is not None:
            raise LayoutError(f"'input_image' given, but {ckpt_name} is a generation model ({mode.name}), "
                              "not an inpainting one")
        has = []
        if self.boxes or self.phrases:
            has.append(("boxes/phrases", ("text", "text_image")))
        if any(p is not None for p in self.images):
            has.append(("reference 'images'", ("text_image",)))
        if self.keypoints:
            has.append(("keypoints", ("keypoint",)))
        for fam in self.condition:
            has.append((f"'{SPATIAL_LAYOUT_KEYS[fam]}'", (fam,)))
        for what, families in has:
            if mode.family not in families:
                raise LayoutError(f"the layout gives {what}, which {ckpt_name} ({mode.name}) does not support")
        if mode.is_spatial and mode.family not in self.condition:
            raise LayoutError(f"{ckpt_name} ({mode.name}) needs a '{SPATIAL_LAYOUT_KEYS[mode.family]}' image")

    def to_entry(self) -> dict:
        """The normalised request as a layout entry (normalised xyxy, resolved absolute paths)."""
        e: dict = {"prompt": self.prompt}
        if self.phrases:
            e["phrases"] = list(self.phrases)
        if self.boxes:
            e["boxes"] = [list(b) for b in self.boxes]
        if self.images:
            e["images"] = [None if p is None else os.path.abspath(p) for p in self.images]
        if self.keypoints:
            e["keypoints"] = [[list(p) for p in person] for person in self.keypoints]
        for fam, p in self.condition.items():
            e[SPATIAL_LAYOUT_KEYS[fam]] = os.path.abspath(p)
        if self.input_image:
            e["input_image"] = os.path.abspath(self.input_image)
        for key in ("alpha_type", "text_mask", "image_mask", "seed", "ckpt", "save_folder_name", "negative_prompt"):
            v = getattr(self, key)
            if v is not None:
                e[key] = os.path.abspath(v) if key == "ckpt" and os.path.exists(v) else v
        return e


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def read_layout_file(path: str) -> tuple[dict, list]:
    """Read a JSON / YAML layout file -> ``(settings, raw entries)``."""
    if not os.path.isfile(path):
        raise LayoutError(f"layout file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise LayoutError(f"cannot read layout file {path}: {e.strerror if isinstance(e, OSError) else 'not UTF-8 text'}") \
            from None
    try:
        if path.lower().endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LayoutError(f"cannot parse layout file {path}: {msg}") from None
    settings: dict = {}
    if isinstance(data, dict) and any(k in data for k in FILE_KEYS) and "prompt" not in data:
        unknown = [k for k in data if k not in FILE_KEYS]
        if unknown:
            raise LayoutError(f"unknown top-level key {unknown[0]!r} in {path} (allowed: {', '.join(FILE_KEYS)})")
        settings = data.get("settings") or {}
        if not isinstance(settings, dict):
            raise LayoutError(f"'settings' in {path} must be a mapping")
        data = data.get("generations")
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise LayoutError(f"{path} holds no generations (expected an entry, a list of entries, or 'generations')")
    return settings, data


def load_layout(path: str, box_format: str | None = None,
                canvas: tuple[int, int] | None = None) -> tuple[dict, list[Generation]]:
    """Read and validate every generation of a layout file -> ``(settings, generations)``.

    ``box_format`` None: the file's ``settings.box_format``, else ``xyxy``. ``canvas``: (W, H) for
    pixel coordinates without an input image (``--width/--height``; default 512x512).
    """
    settings, entries = read_layout_file(path)
    box_format = box_format or settings.get("box_format") or "xyxy"
    base_dir = os.path.dirname(os.path.abspath(path))
    multi = len(entries) > 1
    gens = [Generation.from_dict(e, base_dir, box_format, i if multi else None, canvas) for i, e in enumerate(entries)]
    return settings, gens
