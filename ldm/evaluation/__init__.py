"""Evaluation of grounded generation (``evaluate.py``), one idea per module.

* :mod:`.coco_layouts` -- layouts from COCO-format annotations (the paper's protocol);
* :mod:`.generate` -- sharded, resumable generation of one image per layout;
* :mod:`.detectors` -- pluggable detectors (torchvision closed-set, transformers open-vocabulary);
* :mod:`.metrics` -- FID / KID, AP (pycocotools), COCO-MIG success rate and mIoU, CLIP score;
* :mod:`.score` -- the score stage over a generated folder;
* :mod:`.report` -- scores JSON, Markdown table, side-by-side comparison;
* :mod:`.weights` -- evaluation weights through the libraries' caches (offline errors in one line).
"""
