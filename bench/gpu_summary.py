#!/usr/bin/env python
"""One table from the JSON files gpu_check.sh wrote (UNet step, training iteration, half-precision sanity).

    python bench/gpu_summary.py bench/results/gpu
"""
from __future__ import annotations

import glob
import json
import os
import sys


def rows(folder: str) -> list:
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        r = json.load(open(path))
        name = os.path.basename(path)[:-5]
        if "steps" in r and isinstance(r.get("steps"), dict):  # bench_unet.py
            st, ra = r["steps"], r.get("ratios", {})
            o, d = st.get("ours", {}).get("ms_median"), st.get("diffusers", {}).get("ms_median")
            extra = f"compile {r['compile_seconds_first_call']:.0f} s" if "compile_seconds_first_call" in r else ""
            out.append((f"unet step {name}", f"{o:.1f} ms" if o else "-", f"{d:.1f} ms" if d else "-",
                        f"{ra['step_ours_over_diffusers']:.3f}" if "step_ours_over_diffusers" in ra else "-", extra))
        elif "iterations" in r:  # bench_train.py
            it, mem = r["iterations"], r.get("memory", {})
            for n, v in it.items():
                if not n.startswith("ours/"):
                    continue
                key = n.split("/", 1)[1]
                d = it.get("diffusers/" + key, {}).get("ms_median")
                mo, md = mem.get(n, {}), mem.get("diffusers/" + key, {})
                pk = (f"peak {mo.get('peak_iteration_bytes', 0) / 2**20:.0f} / {md.get('peak_iteration_bytes', 0) / 2**20:.0f} MiB"
                      if mo.get("peak_iteration_bytes") and md.get("peak_iteration_bytes") else "")
                out.append((f"train iter {key} {r['resolution']}px b{r['batch']}", f"{v['ms_median']:.0f} ms",
                            f"{d:.0f} ms" if d else "-", f"{v['ms_median'] / d:.3f}" if d else "-", pk))
        elif "results" in r and "ok" in r:  # gpu_sanity.py
            for n, v in r["results"].items():
                rel = v.get("rel_to_fp32")
                out.append((f"sanity {n}", "finite" if v["finite"] else "NOT FINITE", "-",
                            f"{rel:.4f} rel to fp32" if rel is not None else "-", "ok" if v.get("ok", True) else "FAIL"))
    return out


def main(argv=None) -> int:
    folder = (argv or sys.argv[1:] or [os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "gpu")])[0]
    table = rows(folder)
    w = max([len(t[0]) for t in table] + [10])
    print(f"\n{'check':{w}s} | {'ours':>12s} | {'diffusers':>12s} | {'ratio':>18s} | note")
    print("-" * (w + 70))
    for t in table:
        print(f"{t[0]:{w}s} | {t[1]:>12s} | {t[2]:>12s} | {t[3]:>18s} | {t[4]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
