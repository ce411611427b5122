"""Pluggable object detectors for the layout metrics (AP, COCO-MIG).

A detector maps images plus, per image, the phrases of its layout to :class:`Detections`::

    detector.detect(images: list[PIL.Image], queries: list[list[str]]) -> list[Detections]

* :class:`TorchvisionDetector` -- a closed-set COCO detector from torchvision (Faster R-CNN
  ResNet-50 FPN v2 by default, BSD licence); ``queries`` are ignored, labels are COCO names.
* :class:`OpenVocabDetector` -- an open-vocabulary detector from transformers (OWLv2 or
  Grounding DINO) queried with the layout's phrases; labels are those phrases. For LVIS-style
  and phrase-level AP. It is also the detector behind ``DATA/prepare_data.py``'s boxes.

:func:`load_detector` builds one from a spec: ``torchvision[:<model name>]``,
``owlv2[:<repo or folder>]`` or ``grounding-dino[:<repo or folder>]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ldm.hub import load_pretrained
from ldm.inference.errors import LayoutError, ResolveError

from .weights import load_state_dict, torch_hub_file

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
    OWL-ViT, Grounding DINO), queried with phrases; every box belongs to one phrase.

    The one wrapper of these models: the evaluation's phrase-level detection (:meth:`detect`) and
    ``DATA/prepare_data.py``'s boxes (its ``Detector`` adds clamping and per-phrase NMS on top of
    :meth:`predict`). The two model families differ only here: OWL takes one text query per
    phrase and labels a box with the query's index; Grounding DINO takes one prompt ``"a. b. c."``,
    keeps a box whose text token scores pass ``text_threshold`` and labels it with the matched
    span, mapped back to a phrase by :func:`match_phrase`.
    """

    closed_set = False

    def __init__(self, model, processor, device="cpu", score_threshold: float = 0.05,
                 text_threshold: float | None = None):
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = torch.device(device)
        self.threshold = score_threshold
        self.text_threshold = score_threshold if text_threshold is None else text_threshold
        self.is_grounding_dino = "grounding" in str(getattr(model.config, "model_type", "")).lower()

    @classmethod
    def from_pretrained(cls, repo: str, device="cpu", score_threshold: float = 0.05,
                        text_threshold: float | None = None, *, flag: str | None = None,
                        error: type[Exception] = ResolveError):
        """Model and processor from a Hub repo or local folder (:func:`ldm.hub.load_pretrained`)."""
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        processor = load_pretrained(AutoProcessor.from_pretrained, repo, "detector", flag=flag, error=error)
        model = load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained, repo, "detector", flag=flag,
                                error=error)
        return cls(model, processor, device, score_threshold, text_threshold)

    def _inputs(self, image, text):
        batch = self.processor(images=image, text=text, return_tensors="pt", **(
            {} if self.is_grounding_dino else {"truncation": True}))
        return {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}

    @torch.no_grad()
    def predict(self, image, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """One image -> ``boxes (N, 4)`` xyxy pixels, ``scores (N,)`` (float32, CPU) and, per box,
        the index of its phrase in ``phrases``. Boxes above the score threshold, unsorted."""
        if not phrases:
            return torch.zeros(0, 4), torch.zeros(0), []
        sizes = torch.tensor([[image.height, image.width]], device=self.device)  # like the outputs
        if self.is_grounding_dino:
            inputs = self._inputs(image, " ".join(p.strip().lower().rstrip(".") + "." for p in phrases))
            r = self.processor.post_process_grounded_object_detection(
                self.model(**inputs), inputs["input_ids"], threshold=self.threshold,
                text_threshold=self.text_threshold, target_sizes=sizes)[0]
            spans = r["text_labels"] if "text_labels" in r else r["labels"]  # transformers < 4.51: labels
            labels = [match_phrase(str(t), phrases) for t in spans]
        else:
            inputs = self._inputs(image, [list(phrases)])
            r = self.processor.post_process_grounded_object_detection(
                self.model(**inputs), threshold=self.threshold, target_sizes=sizes)[0]
            labels = [int(i) for i in r["labels"]]
        keep = [i for i, lab in enumerate(labels) if lab is not None]
        return (r["boxes"][keep].float().cpu().reshape(-1, 4), r["scores"][keep].float().cpu().reshape(-1),
                [labels[i] for i in keep])

    def detect(self, images, queries) -> list[Detections]:
        """Per image, boxes labelled with its (unique) phrases."""
        out = []
        for image, phrases in zip(images, queries):
            phrases = list(dict.fromkeys(phrases))  # unique, in order
            boxes, scores, labels = self.predict(image, phrases)
            out.append(Detections(boxes, scores, [phrases[i] for i in labels]))
        return out


def match_phrase(text: str, phrases: list[str]) -> int | None:
    """Index of the query phrase a Grounding DINO span belongs to: an exact match, else the phrase
    sharing most words (the first on ties); None when no word is shared."""
    t = normalise_name(text.replace(".", " "))
    names = [normalise_name(p.replace(".", " ")) for p in phrases]
    if t in names:
        return names.index(t)
    words = set(t.split())
    shared = [len(words & set(n.split())) for n in names]
    best = max(range(len(phrases)), key=lambda i: (shared[i], -i), default=None)
    return best if best is not None and shared[best] else None


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
    return OpenVocabDetector.from_pretrained(name, device, score_threshold, flag=f"--detector {kind}:<folder>")
