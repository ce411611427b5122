"""The run of ``prepare_data.py``: a folder of images -> sharded training TSVs under ``ROOT``.

Per shard of ``shard_size`` images (sorted by relative path; ``data_id`` = position in that order):

1. images are opened (unreadable ones are dropped and counted);
2. captions: ``--captions``, else the annotation file's, else the captioner's (batched);
3. boxes: ``--annotations``, else the detector's boxes for the caption's noun phrases (or the fixed
   ``--phrases`` vocabulary) above the score threshold; boxes smaller than ``min_box_size`` of the
   image area are dropped, at most ``max_boxes`` kept (best first); images with fewer than
   ``min_boxes`` boxes are dropped;
4. the box TSV is written by ``DATA/make_tsv.py`` (CLIP text/crop embeddings in batches);
5. requested maps: row-aligned TSVs (canny, depth), files (sem, normal) or COCO keypoints;
6. the shard's record is committed (:mod:`.shards`): from then on the shard is never redone.

At the end (also after a rerun that had nothing left to do) ``ROOT/dataset.yaml`` and
``ROOT/summary.json`` are written from the records.

Output layout::

    ROOT/tsv/train-00000.tsv (+ .lineidx)       box rows (DATA/README.md §2.1)
    ROOT/tsv_canny/train-00000.tsv, tsv_depth/   row-aligned maps (DATA/README.md, section 2.2)
    ROOT/sem/{images,labels}/train-00000/        <data_id>.jpg + ADE20K label <data_id>.png, sem/captions.json
    ROOT/normal/{images,normals}/train-00000/    <data_id>.png + <data_id>_normal.npy, normal/captions.json
    ROOT/keypoints/{person_keypoints,captions}.json   COCO files over the original images
    ROOT/shards/train-00000.json, manifest.json  resume state
    ROOT/dataset.yaml, summary.json              ready config entries, counts
    ROOT/train.yaml                              with --config: that config filled with the entries
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from DATA.make_tsv import make_tsv
from dataset.codec import encode_image_b64, encode_row
from dataset.tsv import TSVWriter
from ldm.imageops import ImageError, canny, open_image
from ldm.modules.encoders.clip_features import DEFAULT_CLIP_VERSION as DEFAULT_CLIP

from .annotators import (DEFAULT_CAPTIONER, DEFAULT_DEPTH, DEFAULT_DETECTOR, DEFAULT_POSE, DEFAULT_SEMANTIC,
                         Captioner, DepthMap, Detector, PoseEstimator, SemanticMap, normal_from_depth)
from .inputs import InputError, list_images, read_annotations, read_captions
from .outputs import TSV_FIELDS, dataset_entries, model_ref, summarize, train_config, write_map_files, yaml_text
from .phrases import caption_phrases
from .shards import Manifest, atomic_write_json, shard_name

__all__ = ["Options", "MAPS", "run", "annotate", "load_models", "read_image", "CRASH_ENV", "DEFAULT_CLIP"]

MAPS = ("canny", "depth", "normal", "sem", "keypoints")
UNAVAILABLE_MAPS = {"hed": "HED edges need an HED annotator, which transformers does not provide; use canny"}
#: test hook: exit hard (no clean-up) in the middle of this shard, after its box TSV is written
CRASH_ENV = "GLIGEN_PREPARE_CRASH_IN_SHARD"
PERSON_QUERY = "a person"


@dataclass
class Options:
    """Every setting of a run, with its default (the CLI's flags)."""

    images: str
    out: str
    captions: str | None = None
    annotations: str | None = None
    phrases: list | None = None            # fixed vocabulary instead of caption phrases
    maps: tuple = ()
    captioner: str = DEFAULT_CAPTIONER
    detector: str = DEFAULT_DETECTOR
    clip: str = DEFAULT_CLIP
    depth_model: str = DEFAULT_DEPTH
    sem_model: str = DEFAULT_SEMANTIC
    pose_model: str = DEFAULT_POSE
    box_threshold: float = 0.2
    text_threshold: float = 0.25            # Grounding DINO only
    nms_iou: float = 0.5
    max_phrases: int = 8
    max_boxes: int = 30
    min_box_size: float = 0.001             # fraction of the image area
    min_boxes: int = 1
    canny_low: int = 100
    canny_high: int = 200
    keypoint_threshold: float = 0.3
    max_new_tokens: int = 30
    shard_size: int = 1000
    # do not change the outputs' meaning (not part of the manifest)
    batch_size: int = 16
    device: str = "auto"
    image_size: int = 512                   # dataset.yaml: training resolution
    name: str | None = None                 # dataset.yaml: entry name prefix
    config: str | None = None               # template training config -> ROOT/train.yaml
    overwrite: bool = False
    progress: bool = True

    def settings(self) -> dict:
        """What the outputs depend on (stored in the manifest; a rerun must match)."""
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k not in RUNTIME_KEYS}


#: options that do not change the outputs (a rerun may change them)
RUNTIME_KEYS = ("out", "batch_size", "device", "image_size", "name", "config", "overwrite", "progress")


def _abs(path):
    return None if path is None else os.path.abspath(os.path.expanduser(path))


# ----------------------------------------------------------------------------- models
@dataclass
class Models:
    captioner: Captioner | None = None
    detector: Detector | None = None
    canny: object = None  # image -> edge map ("L"): ldm.imageops.canny with the run's thresholds
    depth: DepthMap | None = None
    sem: SemanticMap | None = None
    pose: PoseEstimator | None = None
    clip: object = None


def load_models(opts: Options, need_captioner: bool, need_detector: bool, need_clip: bool = True) -> Models:
    """Only the models this run needs, all up front (a missing one fails before any work)."""
    import torch

    from ldm.devices import resolve_device

    try:
        device = resolve_device(opts.device)
    except ValueError as e:
        raise InputError(str(e)) from e
    m = Models()
    if need_captioner:
        m.captioner = Captioner.from_pretrained(opts.captioner, device, max_new_tokens=opts.max_new_tokens)
    if need_detector or "keypoints" in opts.maps:
        m.detector = Detector.from_pretrained(opts.detector, device, threshold=opts.box_threshold,
                                              text_threshold=opts.text_threshold, nms_iou=opts.nms_iou)
    if "canny" in opts.maps:
        m.canny = functools.partial(canny, low=opts.canny_low, high=opts.canny_high, mode="L")
    if "depth" in opts.maps or "normal" in opts.maps:
        m.depth = DepthMap.from_pretrained(opts.depth_model, device)
    if "sem" in opts.maps:
        m.sem = SemanticMap.from_pretrained(opts.sem_model, device)
    if "keypoints" in opts.maps:
        m.pose = PoseEstimator.from_pretrained(opts.pose_model, device)
    if need_clip:
        from ldm.modules.encoders.clip_features import CLIPGroundingFeatures

        from ldm.hub import load_pretrained

        m.clip = load_pretrained(lambda name: CLIPGroundingFeatures(name, device=device, dtype=torch.float32),
                                 opts.clip, "CLIP", flag="--clip", error=InputError)
    return m


# ----------------------------------------------------------------------------- annotation
@dataclass
class Sources:
    """Given captions / boxes (``Lookup`` or None)."""

    captions: object = None
    annotations: object = None

    def caption(self, rel: str):
        if self.captions is not None and self.captions.get(rel):
            return self.captions.get(rel)
        ann = self.annotations.get(rel) if self.annotations is not None else None
        return ann.get("caption") if ann else None

    def boxes(self, rel: str):
        return self.annotations.get(rel) if self.annotations is not None else None


def read_image(path: str):
    """Fully loaded RGB image, or None if the file cannot be read as an image (or is too large to
    decode safely: :func:`ldm.imageops.open_image`)."""
    try:
        return open_image(path, "RGB")
    except ImageError:
        return None


def _xywh(xyxy) -> list[float]:
    x0, y0, x1, y1 = xyxy
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _detect_boxes(image, caption: str, opts: Options, detector: Detector) -> list[dict]:
    if opts.phrases:
        queries = [(p, None) for p in opts.phrases]
    else:
        queries = caption_phrases(caption, opts.max_phrases)
    dets = detector(image, [q for q, _ in queries])
    annos = []
    for label, score, xyxy in dets:
        phrase, span = queries[label]
        anno = {"bbox": _xywh(xyxy), "score": round(score, 4)}
        if span is not None:
            anno["tokens_positive"] = span
        else:
            anno["phrase"] = phrase
        annos.append(anno)
    return annos


def _big_enough(bbox, W: int, H: int, min_box_size: float) -> bool:
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return False
    return w > 0 and h > 0 and w * h >= min_box_size * W * H


def annotate(loaded: list, opts: Options, models: Models, sources: Sources, stats: dict, tick=None) -> list[dict]:
    """``loaded``: ``[(data_id, rel_path, PIL image)]`` -> kept entries (simple annotation format of
    ``make_tsv.py`` plus ``image``, ``maps``, ``persons``); drops are counted in ``stats["dropped"]``.
    ``tick()`` is called once per image when its boxes are done (progress)."""
    entries = []
    for data_id, rel, image in loaded:
        entries.append({"data_id": data_id, "file_name": rel, "caption": sources.caption(rel), "image": image,
                        "caption_source": "given"})
    todo = [e for e in entries if not e["caption"]]
    for start in range(0, len(todo), opts.batch_size):
        chunk = todo[start:start + opts.batch_size]
        for e, cap in zip(chunk, models.captioner([e["image"] for e in chunk])):
            e["caption"], e["caption_source"] = cap, "generated"
    kept = []
    for e in entries:
        if tick is not None:
            tick()
        if not e["caption"]:
            stats["dropped"].setdefault("no caption", []).append(e["file_name"])
            continue
        W, H = e["image"].size
        given = sources.boxes(e["file_name"])
        if given is not None:
            annos, e["box_source"] = [dict(a) for a in given["annos"]], "given"
            if given.get("caption") != e["caption"]:  # spans refer to the annotation file's caption
                for a in annos:
                    if "tokens_positive" in a:
                        a["phrase"] = " ".join(given["caption"][s:t] for s, t in a.pop("tokens_positive"))
        else:
            annos, e["box_source"] = _detect_boxes(e["image"], e["caption"], opts, models.detector), "detected"
        n_before = len(annos)
        annos = [a for a in annos if _big_enough(a.get("bbox"), W, H, opts.min_box_size)]
        stats["boxes_dropped"]["too small"] += n_before - len(annos)
        stats["boxes_dropped"]["over --max_boxes"] += max(0, len(annos) - opts.max_boxes)
        annos = annos[:opts.max_boxes]
        if len(annos) < opts.min_boxes:
            stats["dropped"].setdefault("no box" if e["box_source"] == "given" else
                                        f"no box above threshold {opts.box_threshold}", []).append(e["file_name"])
            continue
        e["annos"] = annos
        kept.append(e)
    _add_maps(kept, opts, models)
    return kept


def _add_maps(entries: list, opts: Options, models: Models) -> None:
    for e in entries:
        e["maps"] = {}
        if models.canny is not None:
            e["maps"]["canny"] = models.canny(e["image"])
    for start in range(0, len(entries), opts.batch_size):
        chunk = entries[start:start + opts.batch_size]
        images = [e["image"] for e in chunk]
        if models.depth is not None:
            for e, d in zip(chunk, models.depth(images)):
                e["maps"]["depth"] = d
                if "normal" in opts.maps:
                    e["maps"]["normal"] = normal_from_depth(d)
        if models.sem is not None:
            for e, s in zip(chunk, models.sem(images)):
                e["maps"]["sem"] = s
    if "keypoints" in opts.maps:
        for e in entries:
            boxes = [_xywh(xyxy) for _, _, xyxy in models.detector(e["image"], [PERSON_QUERY])]
            boxes = [b for b in boxes if _big_enough(b, *e["image"].size, opts.min_box_size)][:opts.max_boxes]
            persons = []
            for b, kps in zip(boxes, models.pose(e["image"], boxes)):
                flat = []
                for x, y, s in kps.tolist():
                    flat += [round(x, 2), round(y, 2), 2] if s >= opts.keypoint_threshold else [0, 0, 0]
                if any(flat[2::3]):
                    persons.append({"bbox": b, "keypoints": flat, "num_keypoints": sum(1 for v in flat[2::3] if v)})
            e["persons"] = persons


# ----------------------------------------------------------------------------- one shard
def _write_shard(k: int, rels: list[str], opts: Options, models: Models, sources: Sources, manifest: Manifest,
                 bar) -> dict:
    """Annotate and write shard ``k``. Images are held ``batch_size`` at a time (maps are written as
    they are made), so memory does not grow with the shard size."""
    name, root = shard_name(k), opts.out
    stats = {"images": len(rels), "dropped": {}, "boxes_dropped": {"too small": 0, "over --max_boxes": 0}}
    tmp = manifest.tmp_dir(name)
    folders = [(m, sub) for m, subs in (("sem", ("images", "labels")), ("normal", ("images", "normals")))
               if m in opts.maps for sub in subs]
    for m, sub in folders:
        os.makedirs(os.path.join(tmp, m, sub))
    rows, kept_info = [], []
    with ExitStack() as stack:  # map TSVs: temporary files until the shard is complete, removed on error
        writers = {m: stack.enter_context(TSVWriter(os.path.join(root, f"tsv_{m}", name + ".tsv")))
                   for m in TSV_FIELDS if m in opts.maps}
        for start in range(0, len(rels), opts.batch_size):
            loaded = []
            for j, rel in enumerate(rels[start:start + opts.batch_size], start):
                image = read_image(os.path.join(opts.images, rel))
                if image is None:
                    stats["dropped"].setdefault("unreadable image", []).append(rel)
                    bar.update(1)
                else:
                    loaded.append((k * opts.shard_size + j, rel, image))
            for e in annotate(loaded, opts, models, sources, stats, tick=lambda: bar.update(1)):
                _write_maps(e, writers, tmp)
                rows.append({"data_id": e["data_id"], "file_name": e["file_name"], "caption": e["caption"],
                             "annos": [{kk: v for kk, v in a.items() if kk != "score"} for a in e["annos"]]})
                kept_info.append({"data_id": e["data_id"], "file_name": e["file_name"], "caption": e["caption"],
                                  "caption_source": e["caption_source"], "box_source": e["box_source"],
                                  "boxes": len(e["annos"]), "width": e["image"].width, "height": e["image"].height,
                                  **({"persons": e["persons"]} if "persons" in e else {})})
        make_tsv(rows, opts.images, os.path.join(root, "tsv", name + ".tsv"), features=models.clip,
                 batch_size=opts.batch_size, progress=False)
        if os.environ.get(CRASH_ENV) == str(k):
            os._exit(17)
    for m, sub in folders:
        dst = os.path.join(root, m, sub, name)
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(os.path.join(tmp, m, sub), dst)
    shutil.rmtree(tmp, ignore_errors=True)
    record = {"shard": name, "images": len(rels), "files": rels, "rows": len(rows),
              "boxes_dropped": stats["boxes_dropped"], "dropped": stats["dropped"], "kept": kept_info}
    manifest.commit(name, record)
    return record


def _write_maps(e: dict, writers: dict, tmp: str) -> None:
    """One kept image's maps: a row of each map TSV, files of sem / normal under ``tmp``."""
    for m, w in writers.items():
        w.write(encode_row({"data_id": e["data_id"], TSV_FIELDS[m]: encode_image_b64(e["maps"][m])}))
    i = e["data_id"]
    if "sem" in e["maps"]:
        e["image"].save(os.path.join(tmp, "sem", "images", f"{i}.jpg"), quality=95)
        e["maps"]["sem"].save(os.path.join(tmp, "sem", "labels", f"{i}.png"))
    if "normal" in e["maps"]:
        e["image"].save(os.path.join(tmp, "normal", "images", f"{i}.png"))
        np.save(os.path.join(tmp, "normal", "normals", f"{i}_normal.npy"), e["maps"]["normal"])


def run(opts: Options) -> dict:
    """Run (or resume) the whole preparation; returns the summary."""
    from tqdm import tqdm

    opts = dataclasses.replace(opts, images=_abs(opts.images), out=_abs(opts.out), captions=_abs(opts.captions),
                               annotations=_abs(opts.annotations), maps=tuple(opts.maps),
                               captioner=model_ref(opts.captioner), detector=model_ref(opts.detector),
                               clip=model_ref(opts.clip), depth_model=model_ref(opts.depth_model),
                               sem_model=model_ref(opts.sem_model), pose_model=model_ref(opts.pose_model))
    for m in opts.maps:
        if m in UNAVAILABLE_MAPS:
            raise InputError(f"--maps {m}: {UNAVAILABLE_MAPS[m]}")
        if m not in MAPS:
            raise InputError(f"--maps {m}: unknown map (choose from {', '.join(MAPS)})")
    if opts.shard_size < 1 or opts.batch_size < 1:
        raise InputError("--shard_size and --batch_size must be >= 1")
    images = list_images(opts.images)
    sources = Sources(read_captions(opts.captions, images) if opts.captions else None,
                      read_annotations(opts.annotations) if opts.annotations else None)
    manifest = Manifest(opts.out, opts.settings(), overwrite=opts.overwrite)
    if opts.config:  # a config this data cannot fill fails now, not after the run
        train_config(opts.config, dataset_entries(opts, [], None), _clip_text_dim(opts.clip))
    shards = [images[i:i + opts.shard_size] for i in range(0, len(images), opts.shard_size)]
    _check_finished_shards(manifest, shards, opts.images)
    todo = [k for k in range(len(shards)) if not manifest.done(shard_name(k))]
    if todo:
        rest = [rel for k in todo for rel in shards[k]]
        models = load_models(opts, need_captioner=any(not sources.caption(r) for r in rest),
                             need_detector=any(sources.boxes(r) is None for r in rest))
        manifest.start()
        clip_dim = models.clip.text_dim
        with tqdm(total=len(images), desc="prepare_data", unit="img", disable=not opts.progress) as bar:
            for k, rels in enumerate(shards):
                if k in todo:
                    _write_shard(k, rels, opts, models, sources, manifest, bar)
                else:
                    bar.update(len(rels))
    else:
        clip_dim = None
    records = [manifest.record(shard_name(k)) for k in range(len(shards))]
    if clip_dim is None:
        clip_dim = _clip_text_dim(opts.clip)
    write_map_files(opts, records)
    entries = dataset_entries(opts, records, clip_dim)
    config = train_config(opts.config, entries, clip_dim) if opts.config else None
    _write_text(os.path.join(opts.out, "dataset.yaml"), yaml_text(entries))
    if config is not None:
        from omegaconf import OmegaConf

        _write_text(os.path.join(opts.out, "train.yaml"),
                    f"# {os.path.basename(opts.config)} with train_dataset_names from DATA/prepare_data.py: "
                    f"python main.py --yaml_file {os.path.join(opts.out, 'train.yaml')}\n" + OmegaConf.to_yaml(config))
    summary = summarize(records, len(images), opts)
    atomic_write_json(os.path.join(opts.out, "summary.json"), summary)
    return summary


def _write_text(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _check_finished_shards(manifest: Manifest, shards: list, images_dir: str) -> None:
    """Finished shards must hold the same images as now (the folder must not have changed)."""
    k = len(shards)
    if manifest.done(shard_name(k)):  # the folder lost images: more shards than now
        raise InputError(f"{images_dir} has fewer images than when {manifest.root} was made (shard "
                         f"{shard_name(k)} exists): use another --out or --overwrite")
    for k, rels in enumerate(shards):
        if manifest.done(shard_name(k)) and manifest.record(shard_name(k)).get("files") != rels:
            raise InputError(f"the images in {images_dir} changed since shard {shard_name(k)} was written: "
                             f"use another --out or --overwrite")


def _clip_text_dim(clip: str):
    """CLIP text width from its config (no weights loaded); None if unknown."""
    try:
        from transformers import CLIPConfig

        return int(CLIPConfig.from_pretrained(clip).text_config.hidden_size)
    except (OSError, ValueError):
        return None
