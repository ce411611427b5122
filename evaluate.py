#!/usr/bin/env python
"""Evaluate a GLIGEN checkpoint the way layout-to-image papers do: generate, then score.

    python evaluate.py generate --annotations instances_val2014.json --captions captions_val2014.json \\
        --ckpt CKPT --out runs/coco14                      # one image per annotated image (resumable)
    torchrun --nproc_per_node 8 evaluate.py generate ...   # sharded: each rank its slice
    python evaluate.py score --generated runs/coco14 --real val2014/ --metrics fid,kid,ap,mig,clip \\
        --out runs/coco14/scores.json                      # JSON + Markdown table
    python evaluate.py --compare a/scores.json b/scores.json

Layouts are built from the COCO-format file (``ldm/evaluation/coco_layouts.py``) and written to
``<out>/layouts.json`` beside the images; see README "Evaluation" for the protocol and metrics.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


def _alpha_type(text: str):
    try:
        v = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated fractions, got {text!r}") from None
    if len(v) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated fractions, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from ldm.inference.pipeline import DEFAULT_CLIP, DEVICES, DTYPES, SAMPLERS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--compare", nargs="+", metavar="SCORES.json", help="print score files side by side and exit")
    sub = p.add_subparsers(dest="stage")

    g = sub.add_parser("generate", help="generate one image per annotated image (sharded, resumable)")
    g.add_argument("--annotations", required=True, help="COCO-format instances file (COCO 2014/2017 val, LVIS)")
    g.add_argument("--captions", help="COCO captions file (default: category names joined by ', ')")
    g.add_argument("--ckpt", help="checkpoint file or Hub repo id (default: the released box+text checkpoint)")
    g.add_argument("--out", required=True, help="output folder for <image_id>_<k>.png and layouts.json")
    g.add_argument("--per-image", type=int, default=1, help="samples per annotated image (default 1)")
    g.add_argument("--limit", type=int, help="only the first N layouts (quick runs)")
    g.add_argument("--seed", type=int, default=0, help="base seed; sample k of image i uses crc32(seed/i/k)")
    g.add_argument("--sampler", choices=SAMPLERS, default="plms")
    g.add_argument("--steps", type=int, help="default 50 (PLMS) / 250 (DDIM)")
    g.add_argument("--guidance-scale", type=float, default=7.5)
    g.add_argument("--negative-prompt", default=None, help="default: the original's negative prompt")
    g.add_argument("--alpha-type", type=_alpha_type, default=None,
                   help="scheduled sampling a,b,c (default: grounding at every step, 1,0,0)")
    g.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP for phrase features")
    g.add_argument("--device", choices=DEVICES, default="auto")
    g.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    g.add_argument("--image-size", type=int, default=512, help="side of the square crop the boxes refer to")
    g.add_argument("--min-box-size", type=float, default=0.01, help="drop boxes under this fraction of the crop")
    g.add_argument("--max-boxes", type=int, default=30, help="keep the largest N boxes (at most 30)")
    g.add_argument("--min-objects", type=int, default=1, help="skip images with fewer boxes")
    g.add_argument("--max-objects", type=int, default=None, help="skip images with more boxes (e.g. 8)")
    g.add_argument("--no-progress", dest="progress", action="store_false")

    s = sub.add_parser("score", help="score a generated folder")
    s.add_argument("--generated", required=True, help="folder written by `generate`")
    s.add_argument("--annotations", help="COCO-format file for the category names (default: those in layouts.json)")
    s.add_argument("--real", help="folder of the real images (FID / KID)")
    s.add_argument("--real-all", action="store_true", help="use every image in --real, not only the layouts' sources")
    s.add_argument("--metrics", default="fid,kid,ap,mig,clip", help="comma-separated subset of fid,kid,ap,mig,clip")
    s.add_argument("--out", default=None, help="scores JSON (default <generated>/scores.json; .md beside it)")
    s.add_argument("--detector", default="torchvision",
                   help="torchvision[:model] (closed-set COCO), owlv2[:repo] or grounding-dino[:repo] "
                        "(open vocabulary)")
    s.add_argument("--detector-threshold", type=float, default=0.05, help="detections kept for AP")
    s.add_argument("--mig-iou", type=float, default=0.5, help="IoU for a successful instance")
    s.add_argument("--mig-score-threshold", type=float, default=0.3, help="detections considered for MIG")
    s.add_argument("--inception-weights", help="local pt_inception-2015-12-05 state dict (default: torch hub cache)")
    s.add_argument("--kid-subset-size", type=int, default=1000)
    s.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model for the CLIP score")
    s.add_argument("--device", choices=DEVICES, default="auto")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def run_generate(args) -> list[str]:
    from ldm.evaluation.coco_layouts import Protocol, build_layouts, load_categories
    from ldm.evaluation.generate import check_layouts, dist_env, generate, pin_local_gpu, plan_jobs, shard
    from ldm.inference.errors import LayoutError

    rank, world = dist_env()
    if args.limit is not None and args.limit < 1:
        raise LayoutError(f"--limit must be positive, got {args.limit}")
    protocol = Protocol(args.image_size, args.min_box_size, args.max_boxes, args.min_objects, args.max_objects)
    images = build_layouts(args.annotations, args.captions, protocol, args.limit)
    jobs = plan_jobs(images, args.per_image, args.seed)
    ckpt = args.ckpt
    record_ckpt = os.path.abspath(ckpt) if ckpt and os.path.exists(ckpt) else (ckpt or "released box+text")
    steps = args.steps if args.steps is not None else (50 if args.sampler == "plms" else 250)
    settings = {"ckpt": record_ckpt, "sampler": args.sampler, "steps": steps, "guidance_scale": args.guidance_scale,
                "negative_prompt": args.negative_prompt, "alpha_type": args.alpha_type, "seed": args.seed,
                "dtype": args.dtype, "clip": args.clip}
    categories = load_categories(args.annotations)
    check_layouts(args.out, jobs, protocol, settings, categories, args.alpha_type, write=False)  # refuse early
    mine = shard(jobs, rank, world)
    todo = [j for j in mine if not os.path.isfile(os.path.join(args.out, j.file))]
    runner = None
    if todo:
        pin_local_gpu()  # before anything initialises CUDA
        from ldm.inference.layout import Generation
        from ldm.inference.pipeline import Runner, Settings

        extra = {} if args.negative_prompt is None else {"negative_prompt": args.negative_prompt}
        runner = Runner(Settings(sampler=args.sampler, steps=args.steps, guidance_scale=args.guidance_scale,
                                 batch_size=1, seed=None, device=args.device, dtype=args.dtype, clip=args.clip,
                                 ckpt=ckpt, progress=False, **extra))
        runner.checkpoint_for(Generation.from_dict(todo[0].entry(args.alpha_type)))  # resolve / download it first
    check_layouts(args.out, jobs, protocol, settings, categories, args.alpha_type, write=rank == 0)
    print(f"rank {rank}/{world}: {len(mine)} of {len(jobs)} samples, {len(mine) - len(todo)} already done",
          file=sys.stderr, flush=True)
    if runner is None:
        return []
    return generate(mine, args.out, runner, args.alpha_type, args.progress)


def run_score(args) -> dict:
    from ldm.evaluation.coco_layouts import load_categories
    from ldm.evaluation.report import markdown_table, write_scores
    from ldm.evaluation.score import ScoreOptions, parse_metrics, score

    opts = ScoreOptions(metrics=parse_metrics(args.metrics), real=args.real, real_all=args.real_all,
                        detector=args.detector, detector_threshold=args.detector_threshold, mig_iou=args.mig_iou,
                        mig_score_threshold=args.mig_score_threshold, inception_weights=args.inception_weights,
                        kid_subset_size=args.kid_subset_size, clip=args.clip, device=args.device,
                        batch_size=args.batch_size, progress=args.progress)
    categories = load_categories(args.annotations) if args.annotations else None
    scores = score(args.generated, opts, categories)
    json_path, md_path = write_scores(args.out or os.path.join(args.generated, "scores.json"), scores)
    print(markdown_table(scores), end="")
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return scores


def main(argv=None) -> int:
    """CLI entry point: ``error: <one line>`` and exit status 2 for bad input or missing resources."""
    from ldm.checkpoint import CheckpointError
    from ldm.cli import guard
    from ldm.inference.errors import LayoutError, ResolveError

    parser = build_parser()
    args = parser.parse_args(argv)
    with guard((LayoutError, ResolveError, CheckpointError), status=2, interrupted="interrupted") as g:
        if args.compare:
            from ldm.evaluation.report import compare

            print(compare(args.compare), end="")
        elif args.stage == "generate":
            run_generate(args)
        elif args.stage == "score":
            run_score(args)
        else:
            parser.error("choose a stage (generate or score) or --compare A.json B.json")
    return g.status


if __name__ == "__main__":
    sys.exit(main())
