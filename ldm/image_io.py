"""The one safe way to open an image given by a user or read from a data file.

Images come from layouts, TSV rows and annotation folders, i.e. from anyone. ``open_image`` reads
the header first and refuses a picture whose pixel count would take too much memory to decode
(a decompression bomb: a few KB of PNG that inflate to gigabytes), then decodes with Pillow's own
bomb check turned into an error. Every failure is an :class:`ImageError` with one line naming the
file and the problem.
"""
from __future__ import annotations

import io
import os
import warnings

from PIL import Image, UnidentifiedImageError

#: largest picture decoded (pixels): 64 MP, e.g. 8192 x 8192; Pillow only warns up to ~179 MP
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


class ImageError(ValueError):
    """An image that is missing, unreadable, or too large to decode safely."""


def _name(source) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image data"


def _open(source, what: str) -> Image.Image:
    """Open lazily (header only), with the size check applied."""
    name = _name(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise ImageError(f"{what} file not found: {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{what} {name} is too large to decode safely (over {MAX_IMAGE_PIXELS} pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{what} is not a readable image: {name} ({type(e).__name__})") from None
    w, h = im.size
    if w <= 0 or h <= 0 or w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise ImageError(f"{what} {name} is {w}x{h} pixels: too large to decode safely "
                         f"(limit {MAX_IMAGE_PIXELS} pixels)")
    return im


def image_size(source, what: str = "image") -> tuple[int, int]:
    """``(W, H)`` from the header, after the same checks as :func:`open_image` (nothing decoded)."""
    im = _open(source, what)
    try:
        return im.size
    finally:
        im.close()


def image_mode(source, what: str = "image") -> str:
    """Pillow mode of the stored picture (``"L"``, ``"P"``, ``"RGB"``, ...), nothing decoded."""
    im = _open(source, what)
    try:
        return im.mode
    finally:
        im.close()


def open_image(source, mode: str | None = "RGB", what: str = "image") -> Image.Image:
    """Decode ``source`` (a path, or encoded bytes) fully into memory, converted to ``mode`` (None:
    as stored). Raises :class:`ImageError`."""
    im = _open(source, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
            return im.convert(mode) if mode and im.mode != mode else im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{what} {_name(source)} is too large to decode safely") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise ImageError(f"{what} is not a readable image: {_name(source)} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        im.close()


#: ADE20K label maps hold class ids 0..150 (150 classes + "other")
MAX_LABEL_ID = 150


def open_label_map(source, what: str = "semantic map", max_id: int = MAX_LABEL_ID) -> Image.Image:
    """A semantic label map -> "L" image of class ids, refusing colour pictures and ids above ``max_id``.

    A label map is single-channel (or grey: every pixel has R == G == B) with values 0..``max_id``;
    a colourised map or a photo is refused with a hint instead of being read as nonsense ids.
    """
    import numpy as np

    im = open_image(source, None, what)
    if im.mode in ("L", "I", "I;16", "I;16B", "I;16L", "1"):
        arr = np.asarray(im)
    elif im.mode in ("F",):
        raise ImageError(f"{what} {_name(source)} is a floating-point image; a label map holds integer class ids")
    else:
        rgb = np.asarray(im.convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise ImageError(f"{what} {_name(source)} is a colour picture, not a label map: give a single-channel "
                             f"PNG whose pixel values are class ids 0..{max_id} (ADE20K annotations), not a "
                             "colourised visualisation")
        arr = rgb[..., 0]
    top = int(arr.max()) if arr.size else 0
    if top > max_id:
        raise ImageError(f"{what} {_name(source)} has class index {top}; class ids must be 0..{max_id}")
    return Image.fromarray(arr.astype(np.uint8), mode="L")
