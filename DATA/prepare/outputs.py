"""What is written once every shard is finished (and again on every rerun, from the shard records):
``ROOT/dataset.yaml`` (ready ``train_dataset_names`` entries), ``ROOT/summary.json``, and the caption /
keypoint JSON files of the file-based modalities."""
from __future__ import annotations

import os

from .inputs import InputError
from .shards import atomic_write_json

__all__ = ["DATASET_CLASSES", "TSV_FIELDS", "dataset_entries", "model_ref", "write_map_files", "summarize", "yaml_text",
           "train_config"]

TSV_FIELDS = {"canny": "canny_edge", "depth": "depth"}
DATASET_CLASSES = {"canny": "dataset.dataset_canny.CannyDataset", "depth": "dataset.dataset_depth.DepthDataset",
                   "sem": "dataset.dataset_sem.SemanticDataset", "normal": "dataset.dataset_normal.NormalDataset",
                   "keypoints": "dataset.dataset_kp.KeypointDataset"}
#: catalog names of the original configs -> the modality they train on
CATALOG_MODALITY = {"CC3MGroundingHed": "hed", "CC3MGroundingCanny": "canny", "CC3MGroundingDepth": "depth",
                    "ADESemantic": "sem", "DIODENormal": "normal", "COCO2017Keypoint": "keypoints"}
#: dataset kwargs that describe the data (ours win over a template's)
DATA_KEYS = ("clip_version", "embedding_len")


def model_ref(name: str) -> str:
    """A local folder as an absolute path (so the manifest and dataset.yaml do not depend on the cwd)."""
    return os.path.abspath(name) if os.path.isdir(name) else name


def dataset_entries(opts, records: list[dict], clip_dim: int | None) -> dict:
    """``dataset.yaml`` content: box entries (``train_dataset_names``) and one section per map."""
    root = opts.out
    prefix = opts.name or os.path.basename(os.path.normpath(root)) or "mydata"
    shards = [r["shard"] for r in records if r["rows"]]
    boxes = {}
    for s in shards:
        params = {"tsv_path": os.path.join(root, "tsv", s + ".tsv"), "which_layer_text": "before",
                  "which_layer_image": "after_reproject", "clip_version": model_ref(opts.clip),
                  "image_size": opts.image_size, "max_boxes_per_data": 30, "prob_use_caption": 0.5,
                  "random_crop": False, "random_flip": True}
        if clip_dim is not None:
            params["embedding_len"] = clip_dim
        boxes[f"{prefix}_{s}"] = {"target": "dataset.tsv_dataset.TSVDataset", "params": params}
    out = {"train_dataset_names": boxes}
    for m in opts.maps:
        entries = {}
        common = {"prob_use_caption": 1, "image_size": opts.image_size, "random_flip": True}
        if m in TSV_FIELDS:
            for s in shards:
                entries[f"{prefix}_{m}_{s}"] = {"target": DATASET_CLASSES[m], "params": {
                    "tsv_path": os.path.join(root, "tsv", s + ".tsv"),
                    f"{m}_tsv_path": os.path.join(root, f"tsv_{m}", s + ".tsv"), **common}}
        elif m == "sem":
            entries[f"{prefix}_sem"] = {"target": DATASET_CLASSES[m], "params": {
                "image_rootdir": os.path.join(root, "sem", "images"),
                "sem_rootdir": os.path.join(root, "sem", "labels"),
                "caption_path": os.path.join(root, "sem", "captions.json"), **common}}
        elif m == "normal":
            entries[f"{prefix}_normal"] = {"target": DATASET_CLASSES[m], "params": {
                "image_rootdir": os.path.join(root, "normal", "images"),
                "normal_rootdir": os.path.join(root, "normal", "normals"),
                "caption_path": os.path.join(root, "normal", "captions.json"), **common}}
        elif m == "keypoints":
            entries[f"{prefix}_keypoints"] = {"target": DATASET_CLASSES[m], "params": {
                "image_root": opts.images,
                "keypoints_json_path": os.path.join(root, "keypoints", "person_keypoints.json"),
                "caption_json_path": os.path.join(root, "keypoints", "captions.json"), "prob_real_caption": 1,
                "image_size": opts.image_size, "max_persons_per_image": 8, "random_flip": True}}
        out[m] = {"train_dataset_names": entries}
    return out


def write_map_files(opts, records: list[dict]) -> None:
    kept = [e for r in records for e in r["kept"]]
    for m, ext in (("sem", "jpg"), ("normal", "png")):
        if m in opts.maps:
            atomic_write_json(os.path.join(opts.out, m, "captions.json"),
                              {f"{e['data_id']}.{ext}": e["caption"] for e in kept})
    if "keypoints" in opts.maps:
        images = [{"id": e["data_id"], "file_name": e["file_name"], "width": e["width"], "height": e["height"]}
                  for e in kept]
        annos, caps = [], []
        for e in kept:
            for p in e.get("persons", []):
                annos.append({"id": len(annos), "image_id": e["data_id"], "category_id": 1, **p})
            caps.append({"id": len(caps), "image_id": e["data_id"], "caption": e["caption"]})
        kp_dir = os.path.join(opts.out, "keypoints")
        atomic_write_json(os.path.join(kp_dir, "person_keypoints.json"), {
            "images": images, "annotations": annos, "categories": [{"id": 1, "name": "person"}]})
        atomic_write_json(os.path.join(kp_dir, "captions.json"), {"images": images, "annotations": caps})


def summarize(records: list[dict], n_images: int, opts) -> dict:
    kept = [e for r in records for e in r["kept"]]
    counts = [e["boxes"] for e in kept]
    dropped: dict = {}
    for r in records:
        for reason, files in r["dropped"].items():
            dropped.setdefault(reason, []).extend(files)
    hist: dict = {}
    for c in counts:
        hist[str(c)] = hist.get(str(c), 0) + 1
    out = {
        "images_found": n_images, "rows": len(kept), "shards": len(records), "boxes": sum(counts),
        "boxes_per_image": {"mean": round(sum(counts) / len(counts), 3) if counts else 0,
                            "min": min(counts, default=0), "max": max(counts, default=0),
                            "histogram": dict(sorted(hist.items(), key=lambda kv: int(kv[0])))},
        "boxes_dropped": {k: sum(r["boxes_dropped"][k] for r in records) for k in ("too small", "over --max_boxes")},
        "captions": {s: sum(e["caption_source"] == s for e in kept) for s in ("given", "generated")},
        "box_sources": {s: sum(e["box_source"] == s for e in kept) for s in ("given", "detected")},
        "images_dropped": {reason: len(files) for reason, files in sorted(dropped.items())},
        "dropped_files": {reason: sorted(files)[:50] for reason, files in sorted(dropped.items())},
        "maps": list(opts.maps),
    }
    if "keypoints" in opts.maps:
        out["persons"] = sum(len(e.get("persons", [])) for e in kept)
    return out


def yaml_text(entries: dict) -> str:
    from omegaconf import OmegaConf

    head = ("# Written by DATA/prepare_data.py. Paste `train_dataset_names` (boxes) into a training config\n"
            "# (e.g. a copy of configs/flickr_text.yaml), or a map section's `train_dataset_names` into the\n"
            "# matching config (cc3m_canny.yaml, cc3m_depth.yaml, ade_sem.yaml, diode_normal.yaml, coco2017K.yaml).\n"
            "# Paths are absolute; `image_size` is the training resolution (--image_size).\n")
    return head + OmegaConf.to_yaml(OmegaConf.create(entries))


def train_config(template: str, entries: dict, embedding_len: int | None = None):
    """A training config from ``template`` (e.g. ``configs/flickr_text.yaml``) whose
    ``train_dataset_names`` are this run's entries of the template's modality (read from its first
    entry: catalog name or ``target``). The template entry's training kwargs (``image_size``,
    ``prob_use_caption``, ``which_layer_image``, ...) are kept; paths, ``clip_version`` and
    ``embedding_len`` come from the data (``embedding_len``: the CLIP text width, checked against the
    template's). Returns an OmegaConf config."""
    from omegaconf import OmegaConf

    from dataset.concat_dataset import PATH_KEY_SUFFIXES

    if not os.path.isfile(template):
        raise InputError(f"--config {template}: no such file")
    cfg = OmegaConf.load(template)
    names = OmegaConf.to_container(cfg.get("train_dataset_names") or {})
    if isinstance(names, (list, str)):
        names = {n: None for n in ([names] if isinstance(names, str) else names)}
    if not names:
        raise InputError(f"--config {template}: no train_dataset_names to take the dataset settings from")
    name, spec = next(iter(names.items()))
    spec = spec or {}
    target, kwargs = (spec["target"], spec.get("params") or {}) if "target" in spec else (None, spec)
    modality = CATALOG_MODALITY.get(name) or {v: k for k, v in DATASET_CLASSES.items()}.get(target) or "boxes"
    section = entries if modality == "boxes" else entries.get(modality, {})
    ours = section.get("train_dataset_names")
    if ours is None:
        raise InputError(f"--config {template} trains on {modality} maps: add --maps {modality}")
    if modality == "boxes" and embedding_len is not None:
        want, have = int(kwargs.get("embedding_len", 768)), int(embedding_len)
        if have != want:
            raise InputError(f"--config {template} expects phrase embeddings of width {want} (embedding_len) but "
                             f"--clip gives {have}: use the CLIP the model was built for")
    keep = {k: v for k, v in kwargs.items() if not k.endswith(PATH_KEY_SUFFIXES) and k not in DATA_KEYS}
    cfg.train_dataset_names = {n: {"target": e["target"], "params": {**e["params"], **keep}} for n, e in ours.items()}
    if "train_dataset_repeats" in cfg:
        del cfg["train_dataset_repeats"]
    return cfg
