"""Inputs of ``prepare_data.py``: the image folder, optional captions and optional boxes.

Everything is keyed by the image's path relative to ``--images`` with ``/`` separators
(``"sub/0001.jpg"``); caption and annotation files may also name an image by its base name or its
name without extension, as long as that is unambiguous.
"""
from __future__ import annotations

import json
import os

__all__ = ["InputError", "IMAGE_EXTENSIONS", "list_images", "read_captions", "read_annotations", "Lookup"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class InputError(ValueError):
    """Bad user input; the CLI prints its message as one ``error:`` line."""


def list_images(folder: str) -> list[str]:
    """Sorted relative paths (``/``-separated) of the image files under ``folder`` (recursive,
    by extension; hidden files and folders skipped)."""
    if not os.path.isdir(folder):
        raise InputError(f"--images {folder}: not a folder")
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                out.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    if not out:
        raise InputError(f"no images found in {folder} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(out)


class Lookup:
    """Values keyed by image, found by relative path, base name, or name without extension."""

    def __init__(self, values: dict):
        self.values = dict(values)
        self._by_alias: dict = {}
        for key in values:
            base = key.replace("\\", "/").rsplit("/", 1)[-1]
            for alias in {base, os.path.splitext(base)[0], os.path.splitext(key)[0]}:
                self._by_alias.setdefault(alias, []).append(key)

    def get(self, rel_path: str):
        if rel_path in self.values:
            return self.values[rel_path]
        base = rel_path.rsplit("/", 1)[-1]
        for alias in (os.path.splitext(rel_path)[0], base, os.path.splitext(base)[0]):
            keys = self._by_alias.get(alias, [])
            if len(keys) == 1:
                return self.values[keys[0]]
        return None

    def __len__(self) -> int:
        return len(self.values)


def _load_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from e


def read_captions(path: str, images: list[str] | None = None) -> Lookup:
    """Captions from ``path``:

    * a folder: ``<relative path without extension>.txt`` per image (the whole file, whitespace
      folded to single spaces);
    * ``.jsonl``: one ``{"file_name": ..., "caption": ...}`` per line (``image``/``text`` also accepted);
    * ``.json``: COCO captions (``images`` + ``annotations`` with ``image_id``/``caption``; the first
      caption of each image is used) or a mapping ``{file_name: caption}`` (the ADE/DIODE caption files).
    """
    if not os.path.exists(path):
        raise InputError(f"--captions {path}: no such file or folder")
    out = {}
    if os.path.isdir(path):
        for rel in images or []:
            txt = os.path.join(path, os.path.splitext(rel)[0] + ".txt")
            if os.path.isfile(txt):
                with open(txt, encoding="utf-8") as f:
                    out[rel] = " ".join(f.read().split())
        return Lookup(out)
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from e
                name = rec.get("file_name", rec.get("image")) if isinstance(rec, dict) else None
                cap = rec.get("caption", rec.get("text")) if isinstance(rec, dict) else None
                if not isinstance(name, str) or not isinstance(cap, str):
                    raise InputError(f"{path}:{n}: expected {{\"file_name\": ..., \"caption\": ...}}")
                out.setdefault(name, " ".join(cap.split()))
        return Lookup(out)
    js = _load_json(path)
    if isinstance(js, dict) and "images" in js and "annotations" in js:
        names = {im["id"]: im["file_name"] for im in js["images"]}
        for a in js["annotations"]:
            if "caption" in a and a.get("image_id") in names:
                out.setdefault(names[a["image_id"]], " ".join(str(a["caption"]).split()))
    elif isinstance(js, dict) and all(isinstance(v, str) for v in js.values()):
        out = {k: " ".join(v.split()) for k, v in js.items()}
    else:
        raise InputError(f"{path}: unsupported caption file (COCO captions JSON, {{file_name: caption}} JSON, "
                         f"a .jsonl or a folder of .txt files)")
    return Lookup(out)


def read_annotations(path: str) -> Lookup:
    """Boxes from ``path``, any format of ``DATA/make_tsv.py`` or COCO instances (``categories``):
    ``{file_name: {"caption": str | None, "annos": [{"bbox": [x, y, w, h], "phrase" | "tokens_positive"}]}}``
    (a category name becomes the box's phrase)."""
    from DATA.make_tsv import load_annotations

    if not os.path.isfile(path):
        raise InputError(f"--annotations {path}: no such file")
    js = _load_json(path)
    detection = isinstance(js, dict) and bool(js.get("categories")) and not any(
        "caption" in im for im in js.get("images", []))
    if isinstance(js, list):
        detection = not all(isinstance(e, dict) and isinstance(e.get("caption"), str) for e in js)
    try:
        items = load_annotations(js, detection=detection)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"--annotations {path}: {e}") from e
    out = {}
    for item in items:
        caption = item.get("caption")
        annos = []
        for a in item["annos"]:
            anno = {"bbox": a["bbox"]}
            if detection:
                anno["phrase"] = str(a["category_name"])
            elif a.get("tokens_positive"):
                anno["tokens_positive"] = a["tokens_positive"]
            else:
                anno["phrase"] = str(a.get("phrase", ""))
            annos.append(anno)
        # an image listed several times (one entry per caption, as the original's grounding files):
        # the first entry wins, since its boxes' spans refer to its own caption
        out.setdefault(item["file_name"], {"caption": caption, "annos": annos})
    return Lookup(out)
