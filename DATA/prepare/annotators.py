"""Automatic annotators behind small classes, each built with ``from_pretrained(name, device)``.

Models load through transformers' ``from_pretrained`` (the Hugging Face cache, ``HF_HUB_OFFLINE``
honoured; a local folder works too). A model that cannot be loaded is a one-line
:class:`~DATA.prepare.inputs.InputError` naming the repo and how to get it.

| class | default model | output |
|---|---|---|
| :class:`Captioner` | ``Salesforce/blip-image-captioning-base`` (BLIP; any image-to-text model) | one caption per image |
| :class:`Detector` | ``google/owlv2-base-patch16-ensemble`` (OWLv2; OWL-ViT and Grounding DINO too) | ``(phrase index, score, xyxy)`` per box |
| :class:`CannyMap` | OpenCV ``Canny(100, 200)`` | 0/255 edge map |
| :class:`DepthMap` | ``Intel/dpt-hybrid-midas`` (MiDaS DPT; Depth Anything too) | 8-bit relative inverse depth, near = bright |
| :func:`normal_from_depth` | derived from the depth map | RGB normal map, ``(H, W, 3)`` in [-1, 1] |
| :class:`SemanticMap` | ``nvidia/segformer-b0-finetuned-ade-512-512`` (any 150-class ADE20K segmenter) | ADE20K label map, 0 = unlabeled, 1..150 |
| :class:`PoseEstimator` | ``usyd-community/vitpose-base-simple`` (ViTPose, COCO 17 keypoints) | ``(17, 3)`` x, y, score per person box |
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from .inputs import InputError

__all__ = ["DEFAULT_CAPTIONER", "DEFAULT_DETECTOR", "DEFAULT_DEPTH", "DEFAULT_SEMANTIC", "DEFAULT_POSE",
           "load_pretrained", "Captioner", "Detector", "CannyMap", "DepthMap", "SemanticMap", "PoseEstimator",
           "normal_from_depth"]

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
DEFAULT_DEPTH = "Intel/dpt-hybrid-midas"
DEFAULT_SEMANTIC = "nvidia/segformer-b0-finetuned-ade-512-512"
DEFAULT_POSE = "usyd-community/vitpose-base-simple"
ADE20K_CLASSES = 150


def load_pretrained(loader, name: str, what: str, flag: str):
    """``loader.from_pretrained(name)`` or an :class:`InputError` in one line."""
    try:
        return loader.from_pretrained(name)
    except (OSError, ValueError) as e:
        if os.path.isdir(name):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{what} model folder {name} cannot be loaded ({first})") from e
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") \
            or os.environ.get("TRANSFORMERS_OFFLINE", "0").lower() in ("1", "true", "yes")
        how = (f"offline (HF_HUB_OFFLINE) and not in the Hugging Face cache: run `hf download {name}` on a "
               f"connected machine" if offline else "could not be downloaded")
        raise InputError(f"{what} model {name!r} is {how} (or pass a local folder to {flag})") from e


def _to_device(batch, device):
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------- captions
class Captioner:
    """Image-to-text model (BLIP, GIT, ...), greedy decoding (deterministic)."""

    def __init__(self, model, processor, device="cpu", max_new_tokens: int = 30):
        self.model, self.processor, self.device = model.to(device).eval(), processor, torch.device(device)
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_CAPTIONER, device="cpu", **kw) -> "Captioner":
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = load_pretrained(AutoProcessor, name, "captioning", "--captioner")
        model = load_pretrained(AutoModelForImageTextToText, name, "captioning", "--captioner")
        return cls(model, processor, device, **kw)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[str]:
        """images -> one caption each (whitespace folded)."""
        inputs = _to_device(self.processor(images=images, return_tensors="pt"), self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        return [" ".join(t.split()) for t in self.processor.batch_decode(out, skip_special_tokens=True)]


# ----------------------------------------------------------------------------- boxes
class Detector:
    """Open-vocabulary detector: boxes for given phrases above ``threshold`` (per-phrase NMS)."""

    def __init__(self, model, processor, device="cpu", threshold: float = 0.2, text_threshold: float = 0.25,
                 nms_iou: float = 0.5):
        self.model, self.processor, self.device = model.to(device).eval(), processor, torch.device(device)
        self.threshold, self.text_threshold, self.nms_iou = threshold, text_threshold, nms_iou
        self.kind = model.config.model_type

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_DETECTOR, device="cpu", **kw) -> "Detector":
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        processor = load_pretrained(AutoProcessor, name, "detection", "--detector")
        model = load_pretrained(AutoModelForZeroShotObjectDetection, name, "detection", "--detector")
        return cls(model, processor, device, **kw)

    @torch.no_grad()
    def __call__(self, image: Image.Image, phrases: list[str]) -> list[tuple[int, float, list[float]]]:
        """-> ``[(phrase index, score, [x0, y0, x1, y1] pixels clamped to the image)]``, best first."""
        if not phrases:
            return []
        W, H = image.size
        sizes = torch.tensor([[H, W]], device=self.device)  # on the model's device, like the outputs
        if "grounding" in self.kind:  # Grounding DINO: one prompt "a. b. c."
            text = " ".join(p.strip().lower().rstrip(".") + "." for p in phrases)
            inputs = _to_device(self.processor(images=image, text=text, return_tensors="pt"), self.device)
            res = self.processor.post_process_grounded_object_detection(
                self.model(**inputs), inputs["input_ids"], threshold=self.threshold,
                text_threshold=self.text_threshold, target_sizes=sizes)[0]
            names = res["text_labels"] if "text_labels" in res else res["labels"]
            labels = [_match_phrase(str(n), phrases) for n in names]
        else:  # OWLv2 / OWL-ViT: one query per phrase
            inputs = _to_device(self.processor(text=[phrases], images=image, truncation=True, return_tensors="pt"),
                                self.device)
            res = self.processor.post_process_grounded_object_detection(
                self.model(**inputs), threshold=self.threshold, target_sizes=sizes)[0]
            labels = [int(x) for x in res["labels"]]
        boxes, scores = res["boxes"].float().cpu(), res["scores"].float().cpu()
        keep = [i for i, lab in enumerate(labels) if lab is not None]
        if not keep:
            return []
        boxes, scores = boxes[keep], scores[keep]
        labels_t = torch.tensor([labels[i] for i in keep])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels_t = boxes[ok], scores[ok], labels_t[ok]
        from torchvision.ops import batched_nms

        order = batched_nms(boxes, scores, labels_t, self.nms_iou)  # sorted by decreasing score
        return [(int(labels_t[i]), float(scores[i]), [float(v) for v in boxes[i]]) for i in order]


def _match_phrase(label: str, phrases: list[str]):
    """Grounding DINO label text -> index of the phrase sharing most words (None if none)."""
    words = set(label.lower().replace(".", " ").split())
    best, best_n = None, 0
    for i, p in enumerate(phrases):
        n = len(words & set(p.lower().split()))
        if n > best_n:
            best, best_n = i, n
    return best


# ----------------------------------------------------------------------------- maps
class CannyMap:
    """OpenCV Canny edges of the grey image (0/255), as the original's canny data."""

    def __init__(self, low: int = 100, high: int = 200):
        self.low, self.high = low, high

    def __call__(self, image: Image.Image) -> Image.Image:
        import cv2

        grey = np.asarray(image.convert("L"))
        return Image.fromarray(cv2.Canny(grey, self.low, self.high))


class _DenseModel:
    """A per-pixel model run on a batch of images, output resized to each image's size."""

    auto_class = "AutoModel"
    what, flag = "", ""

    def __init__(self, model, processor, device="cpu"):
        self.model, self.processor, self.device = model.to(device).eval(), processor, torch.device(device)

    @classmethod
    def from_pretrained(cls, name: str, device="cpu"):
        import transformers

        processor = load_pretrained(transformers.AutoImageProcessor, name, cls.what, cls.flag)
        model = load_pretrained(getattr(transformers, cls.auto_class), name, cls.what, cls.flag)
        return cls(model, processor, device)

    #: outputs are upsampled to the image size, but at most this long side (then resized by the caller)
    max_side = None

    @torch.no_grad()
    def _run(self, images: list[Image.Image]) -> list[torch.Tensor]:
        inputs = _to_device(self.processor(images=images, return_tensors="pt"), self.device)
        out = self._raw(self.model(**inputs))  # (B, C, h, w)
        maps = []
        for i, im in enumerate(images):
            scale = min(1.0, self.max_side / max(im.size)) if self.max_side else 1.0
            size = (max(1, round(im.height * scale)), max(1, round(im.width * scale)))
            maps.append(torch.nn.functional.interpolate(out[i:i + 1].float(), size=size, mode="bilinear",
                                                        align_corners=False)[0].cpu())
        return maps


class DepthMap(_DenseModel):
    """Monocular depth (MiDaS DPT, Depth Anything): relative inverse depth, min-max scaled to 0..255."""

    auto_class, what, flag = "AutoModelForDepthEstimation", "depth", "--depth_model"

    @staticmethod
    def _raw(out):
        return out.predicted_depth.unsqueeze(1)

    def __call__(self, images: list[Image.Image]) -> list[Image.Image]:
        maps = []
        for d in self._run(images):
            d = d[0].numpy()
            lo, hi = float(d.min()), float(d.max())
            d = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
            maps.append(Image.fromarray(np.round(d * 255).astype(np.uint8)))
        return maps


class SemanticMap(_DenseModel):
    """ADE20K semantic segmentation (150 classes) -> label map with 0 = unlabeled, class ``k`` -> ``k + 1``
    (the ``ADEChallengeData2016`` convention the semantic dataset reads)."""

    auto_class, what, flag = "AutoModelForSemanticSegmentation", "semantic segmentation", "--sem_model"

    def __init__(self, model, processor, device="cpu"):
        super().__init__(model, processor, device)
        if int(model.config.num_labels) != ADE20K_CLASSES:
            raise InputError(f"semantic model predicts {model.config.num_labels} classes; an ADE20K model "
                             f"(150 classes) is needed")

    max_side = 1024  # 150 logit planes at full size of a large photo would need gigabytes

    @staticmethod
    def _raw(out):
        return out.logits

    def __call__(self, images: list[Image.Image]) -> list[Image.Image]:
        labels = [Image.fromarray((logits.argmax(0) + 1).numpy().astype(np.uint8)) for logits in self._run(images)]
        return [lab if lab.size == im.size else lab.resize(im.size, Image.NEAREST) for lab, im in zip(labels, images)]


def normal_from_depth(depth: Image.Image, background: float = 0.1) -> np.ndarray:
    """Surface normals from a relative inverse-depth map (the approach of ControlNet's MiDaS normal
    annotator): ``n = normalise([-dD/dx, -dD/dy, 1/ (2 pi)])`` with Sobel gradients of the 0..1 map,
    flat (0, 0, 1) where the depth is below ``background``. Returns ``(H, W, 3)`` float32 in [-1, 1]."""
    import cv2

    d = np.asarray(depth, dtype=np.float32) / 255.0
    gx = cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=3)
    gx[d < background] = 0
    gy[d < background] = 0
    n = np.stack([-gx, -gy, np.full_like(d, 1.0 / (2 * np.pi))], axis=-1)
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- keypoints
class PoseEstimator:
    """Top-down human pose (ViTPose, COCO 17 keypoints) inside given person boxes."""

    def __init__(self, model, processor, device="cpu"):
        self.model, self.processor, self.device = model.to(device).eval(), processor, torch.device(device)

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_POSE, device="cpu") -> "PoseEstimator":
        from transformers import AutoImageProcessor, VitPoseForPoseEstimation

        processor = load_pretrained(AutoImageProcessor, name, "pose", "--pose_model")
        model = load_pretrained(VitPoseForPoseEstimation, name, "pose", "--pose_model")
        return cls(model, processor, device)

    @torch.no_grad()
    def __call__(self, image: Image.Image, boxes_xywh: list[list[float]]) -> list[np.ndarray]:
        """-> per box a ``(17, 3)`` array ``[x, y, score]`` (pixels)."""
        if not boxes_xywh:
            return []
        inputs = _to_device(self.processor(image, boxes=[boxes_xywh], return_tensors="pt"), self.device)
        if getattr(self.model.config, "backbone_config", None) is not None and \
                getattr(self.model.config.backbone_config, "num_experts", 1) > 1:
            inputs["dataset_index"] = torch.zeros(inputs["pixel_values"].shape[0], dtype=torch.long,
                                                  device=self.device)  # COCO expert (ViTPose++)
        out = self.model(**inputs)
        res = self.processor.post_process_pose_estimation(out, boxes=[boxes_xywh])[0]
        return [np.concatenate([r["keypoints"].float().cpu().numpy(), r["scores"].float().cpu().numpy()[:, None]], 1)
                for r in res]
