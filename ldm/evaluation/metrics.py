"""The numbers layout-to-image papers report, each a function over images and layouts.

* :func:`fid_kid` -- FID and KID between real and generated images (torchmetrics, on features of
  torch-fidelity's Inception v3 with the standard TF-FID weights, which resizes to 299 itself);
* :func:`detection_ap` -- YOLO-score-style AP / AP50 / AP75 (pycocotools ``COCOeval``): a detector
  runs on the generated images and is scored against the layout boxes as ground truth;
* :func:`mig_scores` -- COCO-MIG-style instance success rate and mIoU: for every layout box, the
  best IoU of a detection of its phrase (0 if none); success when that IoU >= 0.5;
* :func:`clip_scores` -- CLIP score of image against caption, ``100 * max(cos, 0)`` averaged.

Shared conventions: a *sample* is one entry of ``layouts.json`` (``entry`` holds ``phrases`` and
normalised xyxy ``boxes``, plus ``category_ids``); detections are
:class:`ldm.evaluation.detectors.Detections` in pixels of the generated image.
"""
from __future__ import annotations

import contextlib
import io

import torch

from .detectors import Detections, normalise_name

# ------------------------------------------------------------------------------- layout ground truth


def layout_boxes(sample: dict, width: int, height: int) -> torch.Tensor:
    """A sample's layout boxes in pixels of a ``width x height`` image: ``(N, 4)`` xyxy."""
    b = torch.tensor(sample["entry"].get("boxes") or [], dtype=torch.float32).reshape(-1, 4)
    return b * torch.tensor([width, height, width, height], dtype=torch.float32)


def detection_category(label: str, sample: dict, names: dict[str, int], closed_set: bool) -> int | None:
    """Category id of a detection label: by category name for a closed-set detector, by the sample's
    own phrase -> category mapping for an open-vocabulary one (queried with those phrases)."""
    if not closed_set:
        for p, c in zip(sample["entry"].get("phrases") or [], sample["category_ids"]):
            if p == label:
                return c
    return names.get(normalise_name(label))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes ``a (N, 4)`` and ``b (M, 4)`` -> ``(N, M)``."""
    import torchvision

    return torchvision.ops.box_iou(a, b)


# ------------------------------------------------------------------------------- AP (pycocotools)


def detection_ap(samples: list[dict], detections: list[Detections], sizes: list[tuple[int, int]],
                 categories: dict[int, str], closed_set: bool) -> dict:
    """AP, AP50, AP75 (COCO's 101-point interpolated AP over IoU 0.50:0.95, at 0.5, at 0.75) of
    ``detections`` against the layout boxes, one COCO image per sample; ``sizes``: ``(W, H)`` per sample.

    Detections whose label maps to no category of the annotations are dropped.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = {normalise_name(n): c for c, n in categories.items()}
    images, gts, dets = [], [], []
    for i, (s, d, (W, H)) in enumerate(zip(samples, detections, sizes)):
        images.append({"id": i, "width": W, "height": H})
        for box, cat in zip(layout_boxes(s, W, H).tolist(), s["category_ids"]):
            w, h = box[2] - box[0], box[3] - box[1]
            gts.append({"id": len(gts) + 1, "image_id": i, "category_id": cat, "bbox": [box[0], box[1], w, h],
                        "area": w * h, "iscrowd": 0})
        for box, score, label in zip(d.boxes.tolist(), d.scores.tolist(), d.labels):
            cat = detection_category(label, s, names, closed_set)
            if cat is not None:
                dets.append({"image_id": i, "category_id": cat, "score": score,
                             "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    result = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "ap_ground_truth_boxes": len(gts), "ap_detections": len(dets)}
    if not gts or not dets:  # pycocotools cannot load an empty result list; no detection = AP 0
        return result
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gts,
                      "categories": [{"id": c, "name": n} for c, n in categories.items()]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    result.update(AP=max(float(ev.stats[0]), 0.0), AP50=max(float(ev.stats[1]), 0.0),
                  AP75=max(float(ev.stats[2]), 0.0))
    return result


# ------------------------------------------------------------------------------- COCO-MIG style


def mig_scores(samples: list[dict], detections: list[Detections], sizes: list[tuple[int, int]],
               categories: dict[int, str], closed_set: bool, iou_threshold: float = 0.5,
               score_threshold: float = 0.3) -> dict:
    """Instance success rate, mIoU and image success rate.

    For layout box ``j`` of category ``c``: ``iou_j`` = the largest IoU between box ``j`` and a
    detection of category ``c`` scoring at least ``score_threshold`` (0 if there is none);
    instance success ``iou_j >= iou_threshold``. ``mig_success_rate`` = mean success over all
    boxes, ``mig_miou`` = mean ``iou_j``, ``mig_image_success_rate`` = share of images whose boxes
    all succeed.
    """
    names = {normalise_name(n): c for c, n in categories.items()}
    ious, images_ok = [], []
    for s, d, (W, H) in zip(samples, detections, sizes):
        gt = layout_boxes(s, W, H)
        if not len(gt):
            continue
        cats = torch.tensor([detection_category(lab, s, names, closed_set) or -1 for lab in d.labels],
                            dtype=torch.long)
        keep = d.scores >= score_threshold
        iou = box_iou(gt, d.boxes) if len(d.boxes) else torch.zeros(len(gt), 0)
        per_box = []
        for j, c in enumerate(s["category_ids"]):
            match = keep & (cats == c)
            per_box.append(float(iou[j][match].max()) if bool(match.any()) else 0.0)
        ious += per_box
        images_ok.append(all(v >= iou_threshold for v in per_box))
    n = max(len(ious), 1)
    return {"mig_success_rate": sum(v >= iou_threshold for v in ious) / n, "mig_miou": sum(ious) / n,
            "mig_image_success_rate": sum(images_ok) / max(len(images_ok), 1), "mig_instances": len(ious)}


# ------------------------------------------------------------------------------- FID / KID


class PrecomputedFeatures(torch.nn.Module):
    """Passes precomputed ``(N, D)`` features through, so FID and KID share one Inception pass."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def inception_extractor(weights_path: str | None = None) -> torch.nn.Module:
    """torch-fidelity's Inception v3 (TF-FID weights ``pt_inception-2015-12-05``), 2048-d pool features,
    taking uint8 ``(N, 3, H, W)`` images of any size. ``weights_path``: a local copy of the weights
    (otherwise torch's hub cache, downloaded on first use)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    from torchmetrics.image.fid import NoTrainInceptionV3

    from .weights import load_state_dict, torch_hub_file

    path = weights_path or torch_hub_file(URL_INCEPTION_V3, "FID/KID Inception v3")
    load_state_dict(path, "Inception v3")  # refuse anything but a plain state dict before torch-fidelity loads it
    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=path)


@torch.no_grad()
def extract_features(extractor: torch.nn.Module, batches, device="cpu") -> torch.Tensor:
    """Concatenated ``extractor`` outputs ``(N, D)`` float64 over uint8 image batches ``(B, 3, H, W)``."""
    feats = [extractor(b.to(device)).double().reshape(len(b), -1).cpu() for b in batches]
    return torch.cat(feats) if feats else torch.zeros(0, 1, dtype=torch.float64)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, want_fid: bool = True, want_kid: bool = True,
            kid_subsets: int = 100, kid_subset_size: int = 1000) -> dict:
    """FID and KID (mean, std) from features ``real (N, D)`` and ``fake (M, D)`` through torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    out = {}
    ident = PrecomputedFeatures(real.shape[1])
    if want_fid:
        fid = FrechetInceptionDistance(feature=ident)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        out["FID"] = float(fid.compute())
    if want_kid:
        import warnings

        size = min(kid_subset_size, len(real), len(fake))
        with warnings.catch_warnings():  # "KID keeps all features in memory": here they are 2048-d vectors
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(feature=ident, subsets=kid_subsets, subset_size=size)
        kid.update(real, real=True)
        kid.update(fake, real=False)
        mean, std = kid.compute()
        out.update(KID=float(mean), KID_std=float(std), kid_subset_size=size)
    out.update(real_images=len(real), generated_images=len(fake))
    return out


# ------------------------------------------------------------------------------- CLIP score


@torch.no_grad()
def clip_scores(features, images, captions: list[str]) -> torch.Tensor:
    """``(N,)`` CLIP scores ``100 * max(cos(image, caption), 0)`` of one batch, with a
    :class:`CLIPGroundingFeatures` (projected, L2-normalised embeddings; torchmetrics' ``CLIPScore``
    definition). Average them over the set for the reported CLIP score."""
    img = features.image_after(list(images))
    txt = features.text_after(list(captions)).to(img.device)
    return (100 * (img * txt).sum(-1).clamp(min=0)).cpu()
