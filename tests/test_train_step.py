"""Training pieces in-process: trainable-parameter rules, the loss of one step (golden parity),
gradients only on trainable parameters, LR schedule, EMA / resume order, data stream determinism,
CLI/config helpers, strict loads and run folders."""
from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import FIXTURES, ROOT

from ldm.util import instantiate_from_config
import trainer as T
from ldm.training.build import Models, build_train_state
from ldm.training.config import TrainConfig, merged_config, parse_args
from ldm.training.loss import get_input, loss


# ----------------------------------------------------------------------------- trainables
def _full_model_config(name: str, inpaint: bool = False):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / f"{name}.yaml"), resolve=True)
    cfg["model"]["params"]["inpaint_mode"] = inpaint
    return cfg["model"]


def _meta_model(name: str, inpaint: bool = False):
    torch.hub.load_state_dict_from_url = lambda *a, **k: {"model": {}}  # no downloads (spatial configs)
    with torch.device("meta"):
        return instantiate_from_config(_full_model_config(name, inpaint))


def _input_conv_train(model) -> bool:
    return model.additional_channel_from_downsampler > 0 or model.inpaint_mode


@pytest.mark.parametrize("inpaint,ref", [(False, "trainable_params_flickr_text.json"),
                                         (True, "trainable_params_inpainting_flickr_text.json")])
def test_trainable_parameters_match_reference(reference_dir, inpaint, ref):
    model = _meta_model("flickr_text", inpaint)
    expected = json.load(open(reference_dir / "state_dicts" / ref))
    sd_keys = json.load(open(reference_dir / "state_dicts" / "flickr_text.json"))["keys"]
    original = [k for k in sd_keys if not T.is_trainable_name(k, False)]  # what sd-v1-4.ckpt provides
    trainable, frozen = T.select_trainable_parameters(model, _input_conv_train(model), original)
    names = [n for n, _ in trainable]
    assert len(names) == len(set(names)) == len(expected) and set(names) == set(expected)
    assert "input_blocks.0.0.bias" in [n for n, _ in frozen]
    assert len(trainable) + len(frozen) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["cc3m_hed", "ade_sem", "coco2017K"])
def test_trainable_parameters_other_configs(name):
    model = _meta_model(name)
    trainable, _ = T.select_trainable_parameters(model, _input_conv_train(model))
    names = [n for n, _ in trainable]
    spatial = name != "coco2017K"
    assert ("input_blocks.0.0.weight" in names) == spatial
    ds_params = [n for n, _ in model.named_parameters() if n.startswith("downsample_net.")]
    assert set(ds_params) <= set(names) and (bool(ds_params) == (name == "ade_sem"))  # hed's is parameter-free
    assert "input_blocks.0.0.bias" not in names
    assert all(("fuser" in n and "transformer_blocks" in n) or n.startswith(("position_net.", "downsample_net."))
               or n == "input_blocks.0.0.weight" for n in names)


def test_unknown_new_parameter_is_caught():
    model = torch.nn.Module()
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="extra.weight"):
        T.select_trainable_parameters(model, False, original_params_names=[])


# ----------------------------------------------------------------------- one step (golden)
def _load_fixture(golden_dir, name):
    from ldm.checkpoint import build_from_checkpoint

    fdir = golden_dir / name
    meta = json.load(open(fdir / "fixture.json"))
    inputs = torch.load(fdir / "inputs.pt", map_location="cpu", weights_only=False)
    outputs = torch.load(fdir / "outputs.pt", map_location="cpu", weights_only=False)
    models = build_from_checkpoint(fdir / "checkpoint.pth", trust=True)
    return meta, inputs, outputs, models


def _close(got, ref, tol):
    err = float((got.detach().float() - ref.float()).abs().max())
    return err <= tol["atol"] + tol["rtol"] * float(ref.abs().max()), err


@pytest.mark.parametrize("name", FIXTURES)
def test_loss_matches_golden(in_golden_dir, name):
    meta, inputs, outputs, m = _load_fixture(in_golden_dir, name)
    models = Models(m.model, m.autoencoder, m.text_encoder, m.diffusion, m.grounding_tokenizer_input,
                    m.grounding_downsampler_input, inpaint_mode=meta["inpaint"])
    trainable, frozen = T.select_trainable_parameters(m.model, meta["inpaint"])
    for _, p in frozen:
        p.requires_grad_(False)
    m.model.train()
    batch = dict(inputs["train_batch"])
    tol = meta["tolerances"]
    torch.manual_seed(meta["encode_seed_train"])  # first torch draw of the step: the VAE posterior sample
    random.seed(meta["train_py_seed"])  # the UNet's grounding-dropout draw (no drop for this seed)
    x_start = get_input(models, batch, timesteps=inputs["train_timesteps"])[0]
    ok, err = _close(x_start, outputs["train_x_start"], tol["train_x_noisy"] | {"atol": 2e-5})
    assert ok, f"x_start err {err}"

    torch.manual_seed(meta["encode_seed_train"])
    random.seed(meta["train_py_seed"])
    out = loss(models, batch, timesteps=inputs["train_timesteps"], noise=inputs["train_noise"])
    assert set(out) == {"loss"} and out["loss"].shape == ()
    ok, err = _close(out["loss"], outputs["train_loss"], tol["train_loss"])
    assert ok, f"loss err {err}"
    out["loss"].backward()
    params = dict(m.model.named_parameters())
    for k, ref in outputs["train_grads"].items():
        ok, err = _close(params[k].grad, ref, tol["train_grads"])
        assert ok, f"grad {k} err {err}"
    # only the trainable parameters received gradients
    got = {n for n, p in m.model.named_parameters() if p.grad is not None}
    assert got == {n for n, _ in trainable}
    if meta["inpaint"]:
        assert params["input_blocks.0.0.weight"].grad is not None and params["input_blocks.0.0.bias"].grad is None


def test_inpaint_masks_follow_latent_size():
    from ldm.tiny import build_tiny

    parts = build_tiny("text", inpaint=True)
    from grounding_input.base import BoxTextInput as GroundingNetInput

    models = Models(parts["model"], parts["autoencoder"], parts["text_encoder"], parts["diffusion"],
                    GroundingNetInput(), inpaint_mode=True)
    boxes = torch.zeros(2, 30, 4)
    boxes[:, 0] = torch.tensor([0.0, 0.0, 0.5, 0.5])
    batch = {"image": torch.zeros(2, 3, 16, 16), "caption": ["a", ""], "boxes": boxes, "masks": torch.ones(2, 30),
             "text_embeddings": torch.zeros(2, 30, 24)}
    z, t, ctx, extra, g = get_input(models, batch)
    assert extra.shape == (2, 5, 8, 8) and g is None and t.shape == (2,) and ctx.shape == (2, 77, 16)
    mask = extra[:, 4]
    assert mask[:, :4, :4].eq(0).all() and mask.sum() == 2 * (64 - 16)
    torch.testing.assert_close(extra[:, :4], z * extra[:, 4:])


# ----------------------------------------------------------------------------- schedule
def _sched(kind, warmup, total=100):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return opt, T.make_scheduler(opt, kind, warmup, total)


def test_lr_schedule_constant_and_cosine():
    opt, s = _sched("constant", 4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert lrs == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]  # lr 0 at the first step, as the original
    opt, s = _sched("cosine", 2, total=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert lrs[:3] == [0.0, 0.5, 1.0] and lrs[7] == pytest.approx(0.5) and lrs[-1] < 0.03
    with pytest.raises(ValueError):
        _sched("linear", 1)


def test_update_ema():
    t, s = [torch.ones(3)], [torch.zeros(3)]
    T.update_ema(t, s, rate=0.75)
    torch.testing.assert_close(t[0], torch.full((3,), 0.75))


# ----------------------------------------------------------------------------- data stream
class _Toy(torch.utils.data.Dataset):
    """Each sample records its index and the RNG draws the augmentation would see."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        import numpy as np

        return {"i": torch.tensor(i), "py": torch.tensor(random.random()), "np": torch.tensor(np.random.rand()),
                "t": torch.rand(())}


def _stream(n_batches, epoch=0, batches=0, workers=0, rank=0, world=1, seed=3):
    ds = T.SeededSamples(_Toy())
    sampler = T.ResumableDistributedSampler(ds, num_replicas=world, rank=rank, seed=seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0)
    it = T.InfiniteLoader(loader, sampler, epoch, batches)
    out = [next(it) for _ in range(n_batches)]
    return out, it.state()


def test_data_stream_resumes_exactly_and_ignores_workers():
    full, state = _stream(9)
    assert state == {"epoch": 2, "batches": 1}  # 4 batches per epoch (10 samples, last batch of 1)
    first, mid = _stream(5)
    rest, _ = _stream(4, **mid)
    for a, b in zip(full, first + rest):
        for k in a:
            torch.testing.assert_close(a[k], b[k])
    # epochs are reshuffled (set_epoch) and augmentation RNG differs per epoch
    e0 = torch.cat([b["i"] for b in full[:4]])
    e1 = torch.cat([b["i"] for b in full[4:8]])
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(10)) and e0.tolist() != e1.tolist()
    # the caller's RNG is untouched by the (seeded) sample loading
    random.seed(1)
    torch.manual_seed(1)
    _stream(2)
    assert random.random() == random.Random(1).random()
    assert torch.rand(()) == torch.rand((), generator=torch.Generator().manual_seed(1))


def test_data_stream_same_with_worker_processes():
    a, _ = _stream(5)
    b, _ = _stream(5, workers=2)
    for x, y in zip(a, b):
        for k in x:
            torch.testing.assert_close(x[k], y[k])


def test_ranks_get_disjoint_shards():
    r0, _ = _stream(2, world=2, rank=0)
    r1, _ = _stream(2, world=2, rank=1)
    i0 = torch.cat([b["i"] for b in r0]).tolist()
    i1 = torch.cat([b["i"] for b in r1]).tolist()
    assert not set(i0) & set(i1) and len(set(i0 + i1)) == 10


def test_rng_state_round_trip_is_weights_only_loadable(tmp_path):
    from ldm.checkpoint import load_checkpoint_file, save_checkpoint

    dev = torch.device("cpu")
    state = T.capture_rng_state(dev)
    save_checkpoint({"rng": [state]}, tmp_path / "r.pth")
    a = (random.random(), float(torch.rand(())), __import__("numpy").random.rand())
    T.restore_rng_state(load_checkpoint_file(tmp_path / "r.pth")["rng"][0], dev)
    b = (random.random(), float(torch.rand(())), __import__("numpy").random.rand())
    assert a == b


# ----------------------------------------------------------------------------- CLI / config
def test_cli_converters_and_config(tmp_path):
    a = parse_args(["--inpaint_mode", "TRUE", "--enable_ema", "yes", "--ckpt", "None", "--local-rank", "3",
                    "--yaml_file", str(tmp_path / "absent.yaml")])
    assert a.inpaint_mode is True and a.enable_ema is False and a.ckpt is None and a.local_rank == 3
    assert a.gradient_checkpointing is None and a.precision == "fp32" and a.device == "auto"
    assert a.fabric_precision == "32-true" and a.devices == "auto" and a.strategy == "auto"
    a = parse_args(["--yaml_file", str(ROOT / "configs" / "tiny_text_box.yaml"), "--gradient_checkpointing", "false",
                    "--inpaint_mode", "true", "--batch_size", "3", "--gradient_accumulation_steps", "2"])
    cfg = merged_config(a, world_size=2)
    assert cfg.model.params.use_checkpoint is False and cfg.model.params.inpaint_mode is True
    assert cfg.inpaint_mode is True and cfg.distributed is True and cfg.total_batch_size == 12
    assert cfg.batch_size == 3 and "train_dataset_names" in cfg
    with pytest.raises(ValueError, match="--batch_size must be >= 1"):
        parse_args(["--batch_size", "0"])


def test_defaults_reproduce_the_original():
    d = TrainConfig()
    assert (d.DATA_ROOT, d.OUTPUT_ROOT, d.name, d.seed, d.local_rank) == ("DATA", "OUTPUT", "test", 123, 0)
    assert (d.base_learning_rate, d.weight_decay, d.warmup_steps, d.scheduler_type) == (5e-5, 0.0, 10000, "constant")
    assert (d.batch_size, d.workers, d.official_ckpt_name, d.ckpt) == (2, 1, "sd-v1-4.ckpt", None)
    assert not any((d.inpaint_mode, d.randomize_fg_mask, d.random_add_bg_mask, d.enable_ema,
                    d.disable_inference_in_training))
    assert (d.ema_rate, d.total_iters, d.save_every_iters) == (0.9999, 500000, 5000)
    assert (d.precision, d.gradient_accumulation_steps, d.gradient_checkpointing) == ("fp32", 1, None)
    # the parser's help names every default; each field is one flag
    import dataclasses

    from ldm.training.config import build_parser

    help_text = build_parser().format_help()
    assert "(default: 5e-05)" in help_text and "--local-rank" in help_text
    assert all(f"--{f.name}" in help_text for f in dataclasses.fields(TrainConfig))


def test_yaml_keys_fill_defaults_and_flags_win(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(open(ROOT / "configs" / "tiny_text_box.yaml").read()
                         + "batch_size: 6\nenable_ema: true\ntotal_iters: 77\n")
    cfg = parse_args(["--yaml_file", str(yaml_file), "--total_iters", "5"])
    assert cfg.batch_size == 6 and cfg.enable_ema is True and cfg.total_iters == 5 and cfg.seed == 123
    merged = merged_config(cfg)
    assert merged.batch_size == 6 and merged.total_iters == 5


def test_yaml_syntax_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  target: x\n   params: [1, 2\n")
    with pytest.raises(ValueError) as e:
        parse_args(["--yaml_file", str(bad)])
    msg = str(e.value)
    assert "bad.yaml" in msg and "YAML syntax error" in msg and "line" in msg and "\n" not in msg


def _tiny_models():
    from grounding_input.base import BoxTextInput as GroundingNetInput
    from ldm.tiny import build_tiny

    torch.manual_seed(0)
    parts = build_tiny("text")
    models = Models(parts["model"], parts["autoencoder"], parts["text_encoder"], parts["diffusion"],
                    GroundingNetInput())
    trainable, frozen = T.select_trainable_parameters(models.unet, False)
    for _, p in frozen:
        p.requires_grad_(False)
    return models, [n for n, _ in trainable]


def test_ema_starts_from_the_resumed_weights():
    models, names = _tiny_models()
    cfg = TrainConfig(enable_ema=True, warmup_steps=0)
    donor = build_train_state(models, cfg, verbose=False)
    resumed_weights = {k: v.clone() for k, v in models.unet.state_dict().items()}
    for n in names:
        resumed_weights[n] += 1.0  # what the run had learnt
    resume = {"model": resumed_weights, "opt": donor.opt.state_dict(), "scheduler": donor.scheduler.state_dict(),
              "iters": 7}  # a checkpoint written without EMA
    with pytest.warns(UserWarning, match="no 'ema'"):
        state = build_train_state(models, cfg, resume, verbose=False)
    assert state.iters == 7 and state.trainable_names == names
    ema = state.ema.state_dict()
    for n in names:
        assert torch.equal(ema[n], resumed_weights[n]), n
    # with an 'ema' entry, the EMA is that one
    resume["ema"] = {k: v - 2.0 if k in names else v for k, v in resumed_weights.items()}
    state = build_train_state(models, cfg, resume, verbose=False)
    assert torch.equal(state.ema.state_dict()[names[0]], resume["ema"][names[0]])
    # the optimizer holds exactly the trainable parameters
    assert len(state.params) == len(names) and all(p.requires_grad for p in state.params)


def test_load_strict_names_counts_and_keys():
    from ldm.checkpoint import CheckpointError
    from ldm.checkpoint import load_strict

    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    sd = m.state_dict()
    bad = {k: v for k, v in sd.items() if k != "1.bias"} | {"2.weight": torch.zeros(1), "x.y": torch.zeros(1)}
    bad["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(CheckpointError) as e:
        load_strict(m, bad, "--ckpt a.pth")
    msg = str(e.value)
    assert msg.startswith("--ckpt a.pth: state dict does not match the configured architecture")
    assert "1 missing key(s): 1.bias" in msg and "2 unexpected key(s): 2.weight, x.y" in msg
    assert "0.weight (file [4, 2], model [3, 2])" in msg and "\n" not in msg
    load_strict(m, sd, "fine")


def test_config_differences_names_keys():
    a = {"target": "x", "params": {"model_channels": 32, "channel_mult": [1, 1], "use_checkpoint": True,
                                   "grounding_tokenizer": {"params": {"in_dim": 24}}}}
    b = {"target": "x", "params": {"model_channels": 64, "channel_mult": [1, 1], "use_checkpoint": False,
                                   "grounding_tokenizer": {"params": {"in_dim": 24, "out_dim": 4}}}}
    diffs = T.config_differences(a, b)
    assert len(diffs) == 2
    assert diffs[0].startswith("params.grounding_tokenizer.params.out_dim") and "params.model_channels" in diffs[1]


def test_auto_resume_folder(tmp_path):
    run, resume = T.create_expt_folder_with_auto_resuming(str(tmp_path), "exp")
    assert run == str(tmp_path / "exp" / "tag00") and resume is None
    (tmp_path / "exp" / "tag00").mkdir(parents=True)
    (tmp_path / "exp" / "tag00" / "checkpoint_latest.pth").write_bytes(b"x")
    (tmp_path / "exp" / "tag01").mkdir()  # a launch that died before its first checkpoint
    run, resume = T.create_expt_folder_with_auto_resuming(str(tmp_path), "exp")
    assert run == str(tmp_path / "exp" / "tag02")
    assert resume == str(tmp_path / "exp" / "tag00" / "checkpoint_latest.pth")
    # newest by number: tag100 comes after tag99
    for tag in ("tag99", "tag100"):
        (tmp_path / "exp" / tag).mkdir()
        (tmp_path / "exp" / tag / "checkpoint_latest.pth").write_bytes(b"x")
    run, resume = T.create_expt_folder_with_auto_resuming(str(tmp_path), "exp")
    assert resume == str(tmp_path / "exp" / "tag100" / "checkpoint_latest.pth")
    assert run == str(tmp_path / "exp" / "tag04")


def test_batch_helpers():
    b = {"x": torch.arange(4), "c": ["a", "b", "c", "d"]}
    assert T.sub_batch(b, 0)["c"] == ["a"] and T.sub_batch(b, 2)["x"].tolist() == [0, 1]
    assert T.batch_to_device(dict(b), "cpu")["c"] == b["c"]


def test_resolve_device():
    assert T.resolve_device("cpu").type == "cpu"
    assert T.resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            T.resolve_device("cuda")
    with pytest.raises(ValueError):
        T.resolve_device("tpu")
