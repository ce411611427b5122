"""Smoke test of bench/bench_unet.py on the toy-width preset (seconds; no timing assertions)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_script_tiny_preset_writes_json(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_unet.py"), "--preset", "tiny",
                        "--device", "cpu", "--steps", "4", "--repeats", "2", "--memory", "profiler",
                        "--threads", "1", "--json", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["steps"]) == {"ours", "ours_tokens_once", "ours_scale0", "diffusers", "diffusers_fuser_off"}
    assert all(s["ms_median"] > 0 and len(s["ms"]) == 2 for s in r["steps"].values())
    # same weights in both implementations -> same noise prediction
    assert r["max_abs_diff_ours_vs_diffusers"] <= 1e-4 * max(1.0, r["max_abs_eps"])
    assert r["max_abs_diff_gates_off"] <= 1e-4 * max(1.0, r["max_abs_eps"])
    assert r["max_abs_diff_tokens_once"] == 0.0
    assert r["max_abs_diff_ours_gates_on_vs_off"] > 0  # the gated layers are really active
    assert {"ours_grounding_all_steps", "ours_scheduled_0.3", "diffusers_grounding_all_steps",
            "diffusers_scheduled_0.3"} == set(r["e2e"])
    assert all(e["finite"] and e["unet_calls"] == 5 for e in r["e2e"].values())  # PLMS: S + 1 UNet calls
    assert r["memory"]["ours"]["profiler_peak_tensor_bytes"] > 0
    for key in ("step_ours_over_diffusers", "step_scale0_over_ours", "e2e_scheduled_over_all_steps_ours"):
        assert r["ratios"][key] > 0
    assert "step_ours_over_diffusers" in p.stdout and "wrote" in p.stdout


def test_state_dict_conversion_covers_the_full_architecture():
    """The LDM -> diffusers renaming used by the bench loads the full-size model strictly (meta tensors)."""
    pytest.importorskip("diffusers")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import torch

    import bench_unet

    with torch.device("meta"):
        ours = bench_unet.build_ours("full", 0, init=False)
        theirs = bench_unet.build_theirs("full", 32)
    sd = bench_unet.ours_to_diffusers_state(ours.state_dict(), len(ours.channel_mult), ours.num_res_blocks)
    ref = theirs.state_dict()
    assert set(sd) == set(ref)
    assert all(tuple(sd[k].shape) == tuple(ref[k].shape) for k in ref)
