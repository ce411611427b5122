"""Pluggable object detectors for the layout metrics (AP, COCO-MIG).

A detector maps images plus, per image, the phrases of its layout to :class:`Detections`::

    detector.detect(images: list[PIL.Image], queries: list[list[str]]) -> list[Detections]

* :class:`TorchvisionDetector` -- a closed-set COCO detector from torchvision (Faster R-CNN
  ResNet-50 FPN v2 by default, BSD licence); ``queries`` are ignored, labels are COCO names.
* :class:`OpenVocabDetector` -- an open-vocabulary detector from transformers (OWLv2 or
  Grounding DINO) queried with the layout's phrases; labels are those phrases. For LVIS-style
  and phrase-level AP.

:func:`load_detector` builds one from a spec: ``torchvision[:<model name>]``,
``owlv2[:<repo or folder>]`` or ``grounding-dino[:<repo or folder>]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ldm.inference.errors import LayoutError

from .weights import hf_pretrained, load_state_dict, torch_hub_file

DEFAULTS = {"torchvision": "fasterrcnn_resnet50_fpn_v2", "owlv2": "google/owlv2-base-patch16-ensemble",
            "grounding-dino": "IDEA-Research/grounding-dino-tiny"}


@dataclass
class Detections:
    """One image's detections: ``boxes (N, 4)`` xyxy pixels, ``scores (N,)``, ``labels`` (N names)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: list

    def __post_init__(self):
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float32).reshape(-1, 4).cpu()
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1).cpu()
        self.labels = [str(v) for v in self.labels]
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError("boxes, scores and labels must have the same length")


def normalise_name(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


def _to_tensor(image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [0, 1]."""
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


class TorchvisionDetector:
    """Closed-set COCO detector from ``torchvision.models.detection``.

    ``model``: a built detection model (eval mode) returning ``[{boxes, scores, labels}]``;
    ``categories``: label index -> name (torchvision's COCO list, 91 entries with ``N/A`` gaps).
    """

    closed_set = True

    def __init__(self, model: torch.nn.Module, categories, device="cpu", batch_size: int = 4):
        self.model = model.eval().to(device)
        self.categories = list(categories)
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_name(cls, name: str = DEFAULTS["torchvision"], device="cpu", score_threshold: float = 0.05):
        import torchvision.models as tvm
        import torchvision.models.detection as tvd

        try:
            builder = getattr(tvd, name)
            weights_enum = tvm.get_model_weights(builder)
        except (AttributeError, ValueError):
            raise LayoutError(f"unknown torchvision detector {name!r} (e.g. fasterrcnn_resnet50_fpn_v2, "
                              "retinanet_resnet50_fpn_v2, fcos_resnet50_fpn)") from None
        weights = weights_enum.DEFAULT
        kwargs = {"box_score_thresh": score_threshold} if "rcnn" in name else {"score_thresh": score_threshold}
        model = builder(weights=None, weights_backbone=None, num_classes=len(weights.meta["categories"]), **kwargs)
        model.load_state_dict(load_state_dict(torch_hub_file(weights.url, f"detector {name}"), f"detector {name}"))
        return cls(model, weights.meta["categories"], device)

    @torch.no_grad()
    def detect(self, images, queries=None) -> list[Detections]:
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [_to_tensor(im).to(self.device) for im in images[i:i + self.batch_size]]
            for r in self.model(batch):
                out.append(Detections(r["boxes"], r["scores"], [self.categories[int(c)] for c in r["labels"]]))
        return out


class OpenVocabDetector:
    """Open-vocabulary detector from transformers (``AutoModelForZeroShotObjectDetection``: OWLv2,
    Grounding DINO), queried with each image's phrases; every box is labelled with one phrase."""

    closed_set = False

    def __init__(self, model, processor, device="cpu", score_threshold: float = 0.05):
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = torch.device(device)
        self.threshold = score_threshold
        self.is_grounding_dino = "groundingdino" in type(model).__name__.lower()

    @classmethod
    def from_pretrained(cls, repo: str, device="cpu", score_threshold: float = 0.05):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        model = hf_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained, repo, "detector")
        processor = hf_pretrained(AutoProcessor.from_pretrained, repo, "detector processor")
        return cls(model, processor, device, score_threshold)

    @torch.no_grad()
    def detect(self, images, queries) -> list[Detections]:
        out = []
        for image, phrases in zip(images, queries):
            phrases = list(dict.fromkeys(phrases))  # unique, in order
            if not phrases:
                out.append(Detections(torch.zeros(0, 4), torch.zeros(0), []))
                continue
            size = [(image.height, image.width)]
            if self.is_grounding_dino:
                text = ". ".join(p.lower() for p in phrases) + "."
                inputs = self.processor(images=image, text=text, return_tensors="pt").to(self.device)
                outputs = self.model(**inputs)
                r = self.processor.post_process_grounded_object_detection(
                    outputs, inputs["input_ids"], threshold=self.threshold, text_threshold=self.threshold,
                    target_sizes=size)[0]
                labels = [match_phrase(t, phrases) for t in r["text_labels"]]
            else:
                inputs = self.processor(images=image, text=[phrases], return_tensors="pt").to(self.device)
                outputs = self.model(**inputs)
                r = self.processor.post_process_grounded_object_detection(
                    outputs, threshold=self.threshold, target_sizes=size, text_labels=[phrases])[0]
                labels = r["text_labels"]
            keep = [i for i, lab in enumerate(labels) if lab is not None]
            out.append(Detections(r["boxes"][keep], r["scores"][keep], [labels[i] for i in keep]))
        return out


def match_phrase(text: str, phrases: list[str]) -> str | None:
    """The query phrase a Grounding DINO span belongs to: exact match, else most shared words."""
    t = normalise_name(text)
    for p in phrases:
        if normalise_name(p) == t:
            return p
    words = set(t.split())
    best = max(phrases, key=lambda p: len(words & set(normalise_name(p).split())))
    return best if words & set(normalise_name(best).split()) else None


def load_detector(spec: str, device="cpu", score_threshold: float = 0.05):
    """A detector from ``kind[:name]`` (see the module docstring)."""
    kind, _, name = spec.partition(":")
    kind = kind.lower()
    if kind not in DEFAULTS:
        raise LayoutError(f"unknown detector {spec!r} "
                          "(choose torchvision[:model], owlv2[:repo], grounding-dino[:repo])")
    name = name or DEFAULTS[kind]
    if kind == "torchvision":
        return TorchvisionDetector.from_name(name, device, score_threshold)
    return OpenVocabDetector.from_pretrained(name, device, score_threshold)
