"""``--preview N``: the first N images annotated as the full run would, drawn to ``ROOT/preview/``
(boxes with their phrases and scores, person keypoints, and each requested map beside the image),
so thresholds and models can be checked before a long run. Nothing else is written."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from .inputs import list_images, read_annotations, read_captions
from .pipeline import Options, Sources, annotate, load_models, read_image

__all__ = ["draw", "preview"]

COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
          (70, 240, 240), (240, 50, 230)]


def _phrase(anno: dict, caption: str) -> str:
    if anno.get("tokens_positive"):
        return " ".join(caption[s:e] for s, e in anno["tokens_positive"])
    return str(anno.get("phrase", ""))


def _map_image(name: str, value, size) -> Image.Image:
    if name == "normal":
        return Image.fromarray(((np.clip(value, -1, 1) * 0.5 + 0.5) * 255).astype(np.uint8))
    if name == "sem":  # a fixed colour per ADE20K class id
        ids = np.asarray(value).astype(np.int64)
        rng = np.random.default_rng(0)
        palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
        palette[0] = 0
        return Image.fromarray(palette[ids])
    return value.convert("RGB").resize(size)


def draw(entry: dict) -> Image.Image:
    """Image with boxes + phrases (+ keypoints) and its maps side by side, caption underneath."""
    image = entry["image"].copy()
    d = ImageDraw.Draw(image)
    for i, a in enumerate(entry.get("annos", [])):
        x, y, w, h = a["bbox"]
        c = COLORS[i % len(COLORS)]
        d.rectangle([x, y, x + w, y + h], outline=c, width=max(1, image.width // 200))
        label = _phrase(a, entry["caption"]) + (f" {a['score']:.2f}" if "score" in a else "")
        d.text((x + 2, y + 1), label, fill=c)
    for p in entry.get("persons", []):
        kps = p["keypoints"]
        for k in range(0, len(kps), 3):
            if kps[k + 2]:
                r = max(2, image.width // 150)
                d.ellipse([kps[k] - r, kps[k + 1] - r, kps[k] + r, kps[k + 1] + r], fill=(255, 0, 0))
    panels = [image] + [_map_image(n, v, image.size) for n, v in entry.get("maps", {}).items()]
    W, H = sum(p.width for p in panels), image.height
    canvas = Image.new("RGB", (W, H + 16), (255, 255, 255))
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width
    ImageDraw.Draw(canvas).text((2, H + 2), entry["caption"][:200], fill=(0, 0, 0))
    return canvas


def preview(opts: Options, n: int) -> list[str]:
    """Annotate the first ``n`` readable images and write ``ROOT/preview/<data_id>.png``; returns the paths."""
    images = list_images(opts.images)
    sources = Sources(read_captions(opts.captions, images) if opts.captions else None,
                      read_annotations(opts.annotations) if opts.annotations else None)
    loaded = []
    for i, rel in enumerate(images):
        image = read_image(os.path.join(opts.images, rel))
        if image is not None:
            loaded.append((i, rel, image))
        if len(loaded) == n:
            break
    models = load_models(opts, need_captioner=any(not sources.caption(r) for _, r, _ in loaded),
                         need_detector=any(sources.boxes(r) is None for _, r, _ in loaded), need_clip=False)
    stats = {"dropped": {}, "boxes_dropped": {"too small": 0, "over --max_boxes": 0}}
    entries = annotate(loaded, opts, models, sources, stats)
    out_dir = os.path.join(opts.out, "preview")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for e in entries:
        path = os.path.join(out_dir, f"{e['data_id']}.png")
        draw(e).save(path)
        paths.append(path)
    for reason, files in stats["dropped"].items():
        print(f"preview: dropped ({reason}): {', '.join(files)}")
    return paths
