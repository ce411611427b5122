"""Image operations used by inference, the datasets and the data tools, one function per idea.

* :func:`open_image` -- the one safe way to open an image given by a user or read from a data file:
  the header is read first and a picture whose pixel count would take too much memory to decode (a
  decompression bomb: a few KB of PNG that inflate to gigabytes) is refused, then Pillow decodes with
  its own bomb check turned into an error; :func:`image_size` / :func:`image_mode` read the header only;
* :func:`open_label_map` -- a semantic label map (class ids 0..150), refusing colour pictures;
* :func:`to_m11` / :func:`from_m11` -- PIL image <-> (C, H, W) float tensor in [-1, 1];
* :func:`center_crop` -- centre crop, with the two offset roundings the original uses;
* :func:`one_hot` -- integer label map -> one-hot channels (ADE20K semantic maps);
* :func:`canny` -- OpenCV Canny edges, the canny grounding input (data tool and demo).
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ldm.constants import MAX_SEM_LABEL, SEM_CHANNELS


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


def open_image(source, mode: str | None = "RGB", what: str = "image",
               error: type[Exception] | None = None) -> Image.Image:
    """Decode ``source`` (a path, or encoded bytes) fully into memory, converted to ``mode`` (None:
    as stored), the file closed.

    The header is read first and a picture too large to decode safely (a decompression bomb) is
    refused before any pixel is decoded. Every failure is one line naming the file: an
    :class:`ImageError`, or ``error(message)`` when the caller wants its own exception (inference:
    ``LayoutError``; datasets: ``CorruptSampleError``, which skips the sample).
    """
    try:
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
    except ImageError as e:
        if error is None or isinstance(e, error):
            raise
        raise error(str(e)) from None

#: ADE20K label maps hold class ids 0..150 (150 classes + "other")
MAX_LABEL_ID = MAX_SEM_LABEL


def open_label_map(source, what: str = "semantic map", max_id: int = MAX_LABEL_ID,
                   error: type[Exception] | None = None) -> Image.Image:
    """A semantic label map -> "L" image of class ids (see :func:`_label_map`); failures raise
    :class:`ImageError`, or ``error(message)``."""
    try:
        return _label_map(source, what, max_id)
    except ImageError as e:
        if error is None or isinstance(e, error):
            raise
        raise error(str(e)) from None


def _label_map(source, what: str, max_id: int) -> Image.Image:
    """A semantic label map -> "L" image of class ids, refusing colour pictures and ids above ``max_id``.

    A label map is single-channel (or grey: every pixel has R == G == B) with values 0..``max_id``;
    a colourised map or a photo is refused with a hint instead of being read as nonsense ids.
    """
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


def to_m11(im: Image.Image) -> torch.Tensor:
    """PIL image (H, W) with C bands -> (C, H, W) float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5``
    (the original's ``ToTensor`` + ``Normalize(0.5, 0.5)``)."""
    x = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True))
    if x.dim() == 2:
        x = x[:, :, None]
    return (x.permute(2, 0, 1).float() / 255 - 0.5) / 0.5


def from_m11(x: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [-1, 1] -> PIL RGB (clamped, rounded to uint8)."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5) * 255).round().byte()
    return Image.fromarray(arr.permute(1, 2, 0).numpy())


def center_crop(im: Image.Image, size: int | None = None, rounding: str = "round") -> Image.Image:
    """Centre crop to ``size`` x ``size`` (default: the short side).

    ``rounding="round"``: offsets ``round((W - size) / 2)`` (torchvision's ``center_crop``, used by
    the original's spatial-map datasets and inference); ``"floor"``: ``(W - size) // 2`` (the
    original's box/keypoint datasets and CLIP's preprocessing).
    """
    w, h = im.size
    size = min(w, h) if size is None else int(size)
    if rounding == "round":
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    elif rounding == "floor":
        left, top = (w - size) // 2, (h - size) // 2
    else:
        raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    return im.crop((left, top, left + size, top + size))


def one_hot(labels: torch.Tensor, num_classes: int = SEM_CHANNELS) -> torch.Tensor:
    """(H, W) integer label map -> (num_classes, H, W) float32 one-hot.

    Raises ``ValueError`` for a label outside ``[0, num_classes)`` (ADE20K maps hold 0..150).
    """
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"label values must lie in [0, {num_classes}), got [{int(labels.min())}, "
                         f"{int(labels.max())}] (ADE20K class indices 0..150 expected)")
    return torch.zeros(num_classes, *labels.shape).scatter_(0, labels[None], 1.0)


def canny(image, low: int = 100, high: int = 200, mode: str = "RGB") -> Image.Image:
    """OpenCV ``Canny(grey, low, high)`` edges (0 / 255) of a PIL image or an image file, as a PIL
    ``mode`` image ("RGB": three equal channels, the canny model's input; "L": one channel).
    100 / 200 are the thresholds of the original's canny annotator."""
    import cv2

    grey = image.convert("L") if isinstance(image, Image.Image) else open_image(image, "L", "canny source")
    return Image.fromarray(cv2.Canny(np.asarray(grey), int(low), int(high))).convert(mode)
