"""Training-step speed work: checkpointing skips frozen blocks with nothing to differentiate (exact
gradients either way), and bench/bench_train.py runs on the toy preset (no timing assertions)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ldm.modules.diffusionmodules import util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_trainable(use_checkpoint: bool):
    from ldm.tiny import build_tiny
    from ldm.training.state import is_trainable_name
    from ldm.util import instantiate_from_config

    parts = build_tiny("text")
    model = parts["model"].train()
    model.grounding_tokenizer_input = instantiate_from_config(parts["config"]["grounding_tokenizer_input"])
    for n, p in model.named_parameters():
        p.requires_grad_(is_trainable_name(n, False))
    for m in model.modules():
        if hasattr(m, "use_checkpoint"):
            m.use_checkpoint = use_checkpoint
    return model


def _loss(model):
    g = torch.Generator().manual_seed(0)
    B = 2
    batch = dict(boxes=torch.rand(B, 30, 4, generator=g), masks=torch.ones(B, 30),
                 text_embeddings=torch.randn(B, 30, 24, generator=g))
    inp = dict(x=torch.randn(B, 4, 8, 8, generator=g), timesteps=torch.tensor([10, 700]),
               context=torch.randn(B, 77, 16, generator=g),
               grounding_input=model.grounding_tokenizer_input.prepare(batch))
    return model(inp).square().mean()


def test_checkpointing_skips_blocks_without_anything_to_differentiate(monkeypatch):
    import random

    calls = []
    real = util._torch_checkpoint

    def counting(fn, *args, **kw):
        calls.append(type(fn.__self__).__name__)
        return real(fn, *args, **kw)

    monkeypatch.setattr(util, "_torch_checkpoint", counting)
    model = _tiny_trainable(True)
    random.seed(1)  # no grounding dropout in this call
    _loss(model).backward()
    # the first ResBlock runs before any trainable layer: its input needs no gradient -> not checkpointed;
    # every transformer block (trainable fuser) and every ResBlock after the first fuser is
    n_res = sum(type(m).__name__ == "ResBlock" for m in model.modules())
    n_tr = sum(type(m).__name__ == "BasicTransformerBlock" for m in model.modules())
    assert calls.count("BasicTransformerBlock") == n_tr
    assert calls.count("ResBlock") == n_res - 1


def test_checkpointing_gives_the_same_gradients():
    import random

    grads = []
    for ck in (False, True):
        torch.manual_seed(0)  # same initial weights
        model = _tiny_trainable(ck)
        random.seed(1)
        _loss(model).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)  # no work on frozen weights
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


def test_bench_train_tiny_preset_writes_json(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "train.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_train.py"), "--preset", "tiny",
                        "--repeats", "1", "--warmup", "1", "--threads", "1", "--dtypes", "fp32",
                        "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["trainable_params"]["ours"] == r["trainable_params"]["diffusers"] > 0  # the same trainable set
    assert r["max_abs_diff_forward"] < 1e-4  # the same function
    names = {f"{m}/{d}/ckpt_{c}" for m in ("ours", "diffusers") for d in ("fp32",) for c in ("off", "on")}
    assert set(r["iterations"]) == names == set(r["memory"])
    assert all(v["saved_bytes"] > 0 and v["peak_iteration_bytes"] > 0 for v in r["memory"].values())
    # checkpointing saves fewer activations, in both implementations
    for m in ("ours", "diffusers"):
        assert r["memory"][f"{m}/fp32/ckpt_on"]["saved_bytes"] < r["memory"][f"{m}/fp32/ckpt_off"]["saved_bytes"]
    assert r["ratios"]["time_fp32/ckpt_off"] > 0
    from importlib import util as iu

    spec = iu.spec_from_file_location("gpu_summary", os.path.join(ROOT, "bench", "gpu_summary.py"))
    summary = iu.module_from_spec(spec)
    spec.loader.exec_module(summary)
    rows = summary.rows(str(tmp_path))
    assert len(rows) == 2 and all(row[0].startswith("train iter") for row in rows)
