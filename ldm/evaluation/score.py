"""Stage 2 of ``evaluate.py``: score a folder written by :mod:`ldm.evaluation.generate`.

Reads ``<generated>/layouts.json`` and the PNGs it lists (missing ones are skipped and counted),
computes the requested metrics (:mod:`ldm.evaluation.metrics`) and returns a dict with every
number and the settings that produced it (see :func:`score`).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

from ldm.inference.errors import LayoutError, ResolveError

from .detectors import normalise_name
from .generate import LAYOUTS_FILE
from .report import read_json

ALL_METRICS = ("fid", "kid", "ap", "mig", "clip")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class ScoreOptions:
    """Settings of the score stage (all recorded in the scores JSON)."""

    metrics: tuple = ALL_METRICS
    real: str | None = None
    real_all: bool = False
    detector: str = "torchvision"
    detector_threshold: float = 0.05
    mig_iou: float = 0.5
    mig_score_threshold: float = 0.3
    inception_weights: str | None = None
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    clip: str = "openai/clip-vit-large-patch14"
    device: str = "auto"
    batch_size: int = 16
    progress: bool = True

    def __post_init__(self):
        bad = [m for m in self.metrics if m not in ALL_METRICS]
        if bad or not self.metrics:
            raise LayoutError(f"unknown metric {bad[0] if bad else '(none)'!r} (choose from {', '.join(ALL_METRICS)})")
        if ("fid" in self.metrics or "kid" in self.metrics) and not self.real:
            raise LayoutError("FID / KID need the real images: pass --real DIR")
        if self.real and not os.path.isdir(self.real):
            raise LayoutError(f"--real folder not found: {self.real}")


def parse_metrics(text: str) -> tuple:
    return tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))


def load_generated(gen_dir: str) -> tuple[dict, list[dict], int]:
    """``(layouts record, samples whose PNG exists, number missing)``."""
    path = os.path.join(gen_dir, LAYOUTS_FILE)
    if not os.path.isfile(path):
        raise LayoutError(f"{gen_dir} has no {LAYOUTS_FILE} (run `evaluate.py generate --out {gen_dir}` first)")
    record = read_json(path)
    samples = record.get("samples") or []
    present = [s for s in samples if os.path.isfile(os.path.join(gen_dir, s["file"]))]
    if not present:
        raise LayoutError(f"no generated image of {path} exists in {gen_dir}")
    return record, present, len(samples) - len(present)


def open_rgb(path: str):
    """RGB image through the one size-checked opener (:func:`ldm.imageops.open_image`)."""
    from ldm.imageops import open_image

    return open_image(path, "RGB", error=LayoutError)


def uint8_tensor(image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) uint8."""
    import numpy as np

    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def real_uint8(path: str, size: int) -> torch.Tensor:
    """A real image as the model sees its training images: short side to ``size``, centre crop
    (``dataset.transforms.transform_image``, no flip) -> (3, size, size) uint8."""
    from dataset.transforms import transform_image

    x, _ = transform_image(open_rgb(path), size, random_flip=False)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def real_paths(opts: ScoreOptions, samples: list[dict]) -> list[str]:
    """Real images for FID/KID: the source images of the scored layouts (each once), or with
    ``real_all`` every image file in ``opts.real``."""
    if opts.real_all:
        paths = sorted(os.path.join(opts.real, f) for f in os.listdir(opts.real) if f.lower().endswith(IMAGE_EXTS))
    else:
        names = list(dict.fromkeys(s["source_file"] for s in samples))
        paths = [os.path.join(opts.real, n) for n in names]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise LayoutError(f"real image {missing[0]} not found ({len(missing)} of {len(paths)} missing; "
                              "--real-all uses every image in the folder instead)")
    if len(paths) < 2:
        raise LayoutError(f"FID / KID need at least 2 real images, {opts.real} gives {len(paths)}")
    return paths


def _warn_unknown_categories(detector, samples: list[dict], categories: dict[int, str]) -> None:
    """A closed-set detector (one with ``categories``) cannot find categories it has no name for."""
    known = {normalise_name(c) for c in getattr(detector, "categories", [])}
    unknown = sorted({c for s in samples for c in s["category_ids"]
                      if known and normalise_name(categories.get(c, "")) not in known})
    if unknown:
        print(f"warning: {len(unknown)} layout categories are unknown to the closed-set detector "
              f"(e.g. {categories.get(unknown[0])!r}); their boxes count as missed. For LVIS or free phrases use "
              "--detector owlv2 or grounding-dino", file=sys.stderr)


def score(gen_dir: str, opts: ScoreOptions, categories: dict[int, str] | None = None, detector=None,
          feature_extractor=None, clip_features=None) -> dict:
    """Every requested metric for ``gen_dir``.

    ``categories`` (id -> name) default to those recorded in ``layouts.json``; ``detector``,
    ``feature_extractor`` (uint8 ``(B, 3, H, W)`` -> ``(B, D)``) and ``clip_features`` (a
    :class:`CLIPGroundingFeatures`) are built from ``opts`` when not given.
    Returns ``{"metrics": {...}, "settings": {...}, "generation": {...}}``.
    """
    from tqdm.auto import tqdm

    from ldm.devices import resolve_device

    from . import metrics as M

    t0 = time.time()
    record, samples, missing = load_generated(gen_dir)
    if categories is None:
        categories = {int(k): v for k, v in (record.get("categories") or {}).items()}
    try:
        device = resolve_device(opts.device)
    except ValueError as e:
        raise ResolveError(str(e)) from None
    files = [os.path.join(gen_dir, s["file"]) for s in samples]
    want = set(opts.metrics)

    # everything that can fail (files, downloads) before any long computation
    reals = real_paths(opts, samples) if want & {"fid", "kid"} else []
    if want & {"fid", "kid"} and len(files) < 2:
        raise LayoutError("FID / KID need at least 2 generated images")
    if want & {"fid", "kid"} and feature_extractor is None:
        feature_extractor = M.inception_extractor(opts.inception_weights).to(device)
    if want & {"ap", "mig"}:
        if not categories:
            raise LayoutError("AP / MIG need the category names: pass --annotations")
        if detector is None:
            from .detectors import load_detector

            detector = load_detector(opts.detector, device, opts.detector_threshold)
        _warn_unknown_categories(detector, samples, categories)
    if "clip" in want and clip_features is None:
        from ldm.modules.encoders.clip_features import CLIPGroundingFeatures

        from ldm.hub import load_pretrained

        clip_features = load_pretrained(lambda r: CLIPGroundingFeatures(r, device=device), opts.clip, "CLIP score",
                                        flag="--clip")

    out: dict = {}
    bar = lambda n, what: tqdm(range(0, n, opts.batch_size), desc=what, disable=not opts.progress)  # noqa: E731
    if want & {"fid", "kid"}:
        size = open_rgb(files[0]).size[0]
        fake = M.extract_features(feature_extractor, (torch.stack([uint8_tensor(open_rgb(p)) for p in
                                                                   files[i:i + opts.batch_size]])
                                                      for i in bar(len(files), "inception (generated)")), device)
        real = M.extract_features(feature_extractor, (torch.stack([real_uint8(p, size) for p in
                                                                   reals[i:i + opts.batch_size]])
                                                      for i in bar(len(reals), "inception (real)")), device)
        out.update(M.fid_kid(real, fake, "fid" in want, "kid" in want, opts.kid_subsets, opts.kid_subset_size))

    if want & {"ap", "mig"}:
        dets, sizes = [], []
        for i in bar(len(files), "detect"):
            images = [open_rgb(p) for p in files[i:i + opts.batch_size]]
            queries = [s["entry"].get("phrases") or [] for s in samples[i:i + opts.batch_size]]
            dets += detector.detect(images, queries)
            sizes += [im.size for im in images]
        if "ap" in want:
            out.update(M.detection_ap(samples, dets, sizes, categories, detector.closed_set))
        if "mig" in want:
            out.update(M.mig_scores(samples, dets, sizes, categories, detector.closed_set, opts.mig_iou,
                                    opts.mig_score_threshold))

    if "clip" in want:
        per_image = [M.clip_scores(clip_features, [open_rgb(p) for p in files[i:i + opts.batch_size]],
                                   [s["entry"]["prompt"] for s in samples[i:i + opts.batch_size]])
                     for i in bar(len(files), "clip")]
        out["CLIP"] = float(torch.cat(per_image).mean())

    settings = {k: v for k, v in asdict(opts).items() if k != "progress"}
    settings["metrics"] = list(opts.metrics)
    settings["detector_kind"] = None if detector is None else type(detector).__name__
    return {"metrics": out,
            "counts": {"scored_images": len(samples), "missing_images": missing},
            "settings": settings, "generated": os.path.abspath(gen_dir),
            "generation": {"settings": record.get("settings"), "protocol": record.get("protocol")},
            "seconds": round(time.time() - t0, 1)}
