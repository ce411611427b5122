"""Score files: the JSON with every number and its settings, a Markdown table, side-by-side comparison."""
from __future__ import annotations

import json
import os

from ldm.inference.errors import LayoutError
from ldm.inference.saving import write_json

#: metric keys in table order, with how to print them
METRICS = {"FID": "{:.2f}", "KID": "{:.4f}", "KID_std": "{:.4f}", "AP": "{:.3f}", "AP50": "{:.3f}", "AP75": "{:.3f}",
           "mig_success_rate": "{:.3f}", "mig_miou": "{:.3f}", "mig_image_success_rate": "{:.3f}",
           "CLIP": "{:.2f}"}
LOWER_IS_BETTER = {"FID", "KID", "KID_std"}


def read_json(path: str, what: str = "JSON") -> dict:
    """A JSON object from ``path``; :class:`LayoutError` with one line if missing or malformed."""
    if not os.path.isfile(path):
        raise LayoutError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise LayoutError(f"cannot read {what} file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LayoutError(f"{what} file {path} does not hold a JSON object")
    return data


def _fmt(key: str, value) -> str:
    if value is None:
        return "–"
    return METRICS.get(key, "{}").format(value) if isinstance(value, (int, float)) else str(value)


def markdown_table(scores: dict) -> str:
    """``| metric | value |`` rows for the metrics present in ``scores["metrics"]``."""
    m = scores.get("metrics", {})
    rows = [f"| {k} | {_fmt(k, m[k])} |" for k in METRICS if k in m]
    rows += [f"| {k} | {_fmt(k, v)} |" for k, v in m.items() if k not in METRICS]
    return "\n".join(["| metric | value |", "|---|---|", *rows]) + "\n"


def write_scores(path: str, scores: dict) -> tuple[str, str]:
    """Write ``path`` (JSON) and the Markdown table beside it (``.md``); returns both paths."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, scores)
    md = os.path.splitext(path)[0] + ".md"
    tmp = md + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(markdown_table(scores))
    os.replace(tmp, md)
    return path, md


def compare(paths: list[str]) -> str:
    """Markdown table of the metrics of several score files side by side (best value in bold)."""
    if len(paths) < 2:
        raise LayoutError("--compare needs at least two score files")
    runs = [read_json(p).get("metrics", {}) for p in paths]
    keys = [k for k in METRICS if any(k in r for r in runs)]
    keys += sorted({k for r in runs for k in r} - set(keys) - {"metrics"})
    names = [os.path.basename(p) for p in paths]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(paths)]
    for k in keys:
        values = [r.get(k) for r in runs]
        nums = [v for v in values if isinstance(v, (int, float))]
        best = (min(nums) if k in LOWER_IS_BETTER else max(nums)) if nums and k in METRICS else None
        bold = best is not None and len(nums) > 1
        cells = [f"**{_fmt(k, v)}**" if bold and v == best else _fmt(k, v) for v in values]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
