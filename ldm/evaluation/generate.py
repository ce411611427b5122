"""Stage 1 of ``evaluate.py``: one image per layout (``per_image`` per layout), sharded and resumable.

Every sample is a job ``(image, k)`` written to ``<out>/<image_id>_<k>.png``, with its own seed
derived from ``(seed, image_id, k)`` (:func:`job_seed`). Under ``torchrun`` (``RANK`` /
``WORLD_SIZE`` in the environment) rank ``r`` takes jobs ``r, r + W, r + 2W, ...``; because the
seed belongs to the job, a sharded run writes exactly the files of an unsharded one. Images are
written to a temporary name and renamed, so a crash never leaves a partial PNG, and a rerun skips
every image already on disk.

``<out>/layouts.json`` (written by rank 0) records the protocol, the generation settings and, per
sample, the layout entry (a valid ``gligen_inference.py`` layout entry) with the source image
and category ids; :mod:`ldm.evaluation.metrics` scores against it.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass

from ldm.inference.errors import LayoutError
from ldm.inference.layout import Generation
from ldm.inference.saving import to_uint8, write_json

from .coco_layouts import EvalImage, Protocol

LAYOUTS_FILE = "layouts.json"


@dataclass
class Job:
    """One sample to generate: ``image`` (its layout), sample index ``k``, ``seed``, output ``file``."""

    image: EvalImage
    k: int
    seed: int
    file: str

    def entry(self, alpha_type=None) -> dict:
        """The ``Generation`` layout entry (normalised xyxy boxes)."""
        e = {"prompt": self.image.caption(self.k), "phrases": list(self.image.phrases),
             "boxes": [list(b) for b in self.image.boxes], "seed": self.seed}
        if alpha_type is not None:
            e["alpha_type"] = list(alpha_type)
        return e

    def record(self, alpha_type=None) -> dict:
        return {"file": self.file, "image_id": self.image.image_id, "sample": self.k,
                "source_file": self.image.file_name, "source_size": [self.image.width, self.image.height],
                "category_ids": list(self.image.category_ids), "entry": self.entry(alpha_type)}


def job_seed(seed: int, image_id, k: int) -> int:
    """Seed of sample ``k`` of ``image_id``: a CRC32 of ``"seed/image_id/k"`` (31 bits), the same on every rank."""
    return zlib.crc32(f"{seed}/{image_id}/{k}".encode()) & 0x7FFFFFFF


def plan_jobs(images: list[EvalImage], per_image: int = 1, seed: int = 0) -> list[Job]:
    """All jobs in a fixed order (layout order, then sample index)."""
    if per_image < 1:
        raise LayoutError(f"--per-image must be at least 1, got {per_image}")
    safe = lambda v: "".join(c if c.isalnum() or c in "-_." else "_" for c in str(v))  # noqa: E731
    return [Job(im, k, job_seed(seed, im.image_id, k), f"{safe(im.image_id)}_{k}.png")
            for im in images for k in range(per_image)]


def dist_env() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` when absent)."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise LayoutError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise LayoutError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def shard(jobs: list, rank: int, world: int) -> list:
    """This rank's slice: every ``world``-th job starting at ``rank``."""
    return jobs[rank::world]


def pin_local_gpu() -> None:
    """Under torchrun on a CUDA machine, give each process its own GPU (``LOCAL_RANK``) by narrowing
    ``CUDA_VISIBLE_DEVICES`` before CUDA is initialised (the pipeline then uses ``cuda:0``)."""
    local = os.environ.get("LOCAL_RANK")
    if local is None or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else None
    if ids is None:
        import subprocess

        try:  # count GPUs without initialising CUDA in this process
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
            ids = [str(i) for i in range(len([line for line in out.splitlines() if line.startswith("GPU")]))]
        except (OSError, subprocess.SubprocessError):
            ids = []
    if ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[int(local) % len(ids)]


def _write_png_atomic(array, path: str) -> None:
    from PIL import Image

    tmp = f"{path}.tmp{os.getpid()}.png"
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)


def check_layouts(out_dir: str, jobs: list[Job], protocol: Protocol, settings: dict, categories: dict,
                  alpha_type=None, write: bool = True) -> dict:
    """The ``layouts.json`` record for ``jobs`` (merged with the samples already listed there),
    written when ``write`` (rank 0). A folder whose layouts were made with other settings is refused.
    ``categories``: ``{category_id: name}`` of the annotations (so scoring needs no annotations file).
    """
    path = os.path.join(out_dir, LAYOUTS_FILE)
    record = {"protocol": asdict(protocol), "settings": settings,
              "categories": {str(k): v for k, v in categories.items()},
              "samples": [j.record(alpha_type) for j in jobs]}
    if os.path.isfile(path):
        from .report import read_json

        old = read_json(path)
        if old.get("settings") != settings or old.get("protocol") != record["protocol"]:
            diff = sorted(k for k in set(settings) | set(old.get("settings", {}))
                          if settings.get(k) != old.get("settings", {}).get(k))
            raise LayoutError(f"{out_dir} holds images generated with other settings ({', '.join(diff) or 'protocol'});"
                              " use another --out")
        known = {s["file"] for s in old.get("samples", [])}
        record["samples"] = old["samples"] + [s for s in record["samples"] if s["file"] not in known]
        if record == old:
            return record  # nothing new: leave the file untouched
    if write:
        os.makedirs(out_dir, exist_ok=True)
        write_json(path, record)
    return record


def generate(jobs: list[Job], out_dir: str, runner, alpha_type=None, progress: bool = True) -> list[str]:
    """Generate the jobs whose PNG is missing; returns the paths written.

    ``runner``: a :class:`ldm.inference.pipeline.Runner` with ``batch_size=1`` and ``seed=None`` (each
    job's layout entry carries its seed).
    """
    from tqdm.auto import tqdm

    os.makedirs(out_dir, exist_ok=True)
    todo = [j for j in jobs if not os.path.isfile(os.path.join(out_dir, j.file))]
    written = []
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="generate", unit="img", disable=not progress)
    for job in todo:
        gen = Generation.from_dict(job.entry(alpha_type))
        result = runner.generate(gen)
        path = os.path.join(out_dir, job.file)
        _write_png_atomic(to_uint8(result.images[:1])[0], path)
        written.append(path)
        bar.update(1)
    bar.close()
    return written
