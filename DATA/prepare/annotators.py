"""Automatic annotators behind small classes, each built with ``from_pretrained(name, device)``.

Models load through transformers' ``from_pretrained`` via :func:`ldm.hub.load_pretrained` (the
Hugging Face cache, ``HF_HUB_OFFLINE`` honoured; a local folder works too). A model that cannot
be loaded is a one-line :class:`~DATA.prepare.inputs.InputError` naming the repo and the flag.
Canny edges are :func:`ldm.imageops.canny`; the open-vocabulary detector is
:class:`ldm.evaluation.detectors.OpenVocabDetector` (this module adds per-phrase NMS).

| class | default model | output |
|---|---|---|
| :class:`Captioner` | ``Salesforce/blip-image-captioning-base`` (BLIP; any image-to-text model) | one caption per image |
| :class:`Detector` | ``google/owlv2-base-patch16-ensemble`` (OWLv2; OWL-ViT and Grounding DINO too) | ``(phrase index, score, xyxy)`` per box |
| :func:`ldm.imageops.canny` | OpenCV ``Canny(100, 200)`` | 0/255 edge map |
| :class:`DepthMap` | ``Intel/dpt-hybrid-midas`` (MiDaS DPT; Depth Anything too) | 8-bit relative inverse depth, near = bright |
| :func:`normal_from_depth` | derived from the depth map | RGB normal map, ``(H, W, 3)`` in [-1, 1] |
| :class:`SemanticMap` | ``nvidia/segformer-b0-finetuned-ade-512-512`` (any 150-class ADE20K segmenter) | ADE20K label map, 0 = unlabeled, 1..150 |
| :class:`PoseEstimator` | ``usyd-community/vitpose-base-simple`` (ViTPose, COCO 17 keypoints) | ``(17, 3)`` x, y, score per person box |
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ldm import hub
from ldm.evaluation.detectors import OpenVocabDetector

from .inputs import InputError

__all__ = ["DEFAULT_CAPTIONER", "DEFAULT_DETECTOR", "DEFAULT_DEPTH", "DEFAULT_SEMANTIC", "DEFAULT_POSE",
           "Captioner", "Detector", "DepthMap", "SemanticMap", "PoseEstimator",
           "normal_from_depth"]

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
DEFAULT_DEPTH = "Intel/dpt-hybrid-midas"
DEFAULT_SEMANTIC = "nvidia/segformer-b0-finetuned-ade-512-512"
DEFAULT_POSE = "usyd-community/vitpose-base-simple"
ADE20K_CLASSES = 150


def _pretrained(loader, name: str, what: str, flag: str):
    """``loader.from_pretrained(name)`` through :func:`ldm.hub.load_pretrained` (download notice;
    failures as one-line :class:`InputError` naming the repo and ``flag``)."""
    return hub.load_pretrained(loader.from_pretrained, name, what, flag=flag, error=InputError)


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

        processor = _pretrained(AutoProcessor, name, "captioning", "--captioner")
        model = _pretrained(AutoModelForImageTextToText, name, "captioning", "--captioner")
        return cls(model, processor, device, **kw)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[str]:
        """images -> one caption each (whitespace folded)."""
        inputs = _to_device(self.processor(images=images, return_tensors="pt"), self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        return [" ".join(t.split()) for t in self.processor.batch_decode(out, skip_special_tokens=True)]


# ----------------------------------------------------------------------------- boxes
class Detector:
    """Boxes for given phrases: :class:`ldm.evaluation.detectors.OpenVocabDetector` (OWLv2, OWL-ViT,
    Grounding DINO) above ``threshold`` / ``text_threshold``, clamped to the image, per-phrase NMS."""

    def __init__(self, detector: OpenVocabDetector, nms_iou: float = 0.5):
        self.detector, self.nms_iou = detector, nms_iou

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_DETECTOR, device="cpu", threshold: float = 0.2,
                        text_threshold: float = 0.25, nms_iou: float = 0.5) -> "Detector":
        return cls(OpenVocabDetector.from_pretrained(name, device, threshold, text_threshold, flag="--detector",
                                                     error=InputError), nms_iou)

    def __call__(self, image: Image.Image, phrases: list[str]) -> list[tuple[int, float, list[float]]]:
        """-> ``[(phrase index, score, [x0, y0, x1, y1] pixels clamped to the image)]``, best first."""
        from torchvision.ops import batched_nms

        boxes, scores, labels = self.detector.predict(image, phrases)
        if not labels:
            return []
        W, H = image.size
        labels_t = torch.tensor(labels)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels_t = boxes[ok], scores[ok], labels_t[ok]
        order = batched_nms(boxes, scores, labels_t, self.nms_iou)  # sorted by decreasing score
        return [(int(labels_t[i]), float(scores[i]), [float(v) for v in boxes[i]]) for i in order]


# ----------------------------------------------------------------------------- maps
class _DenseModel:
    """A per-pixel model run on a batch of images, output resized to each image's size."""

    auto_class = "AutoModel"
    what, flag = "", ""

    def __init__(self, model, processor, device="cpu"):
        self.model, self.processor, self.device = model.to(device).eval(), processor, torch.device(device)

    @classmethod
    def from_pretrained(cls, name: str, device="cpu"):
        import transformers

        processor = _pretrained(transformers.AutoImageProcessor, name, cls.what, cls.flag)
        model = _pretrained(getattr(transformers, cls.auto_class), name, cls.what, cls.flag)
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

        processor = _pretrained(AutoImageProcessor, name, "pose", "--pose_model")
        model = _pretrained(VitPoseForPoseEstimation, name, "pose", "--pose_model")
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
