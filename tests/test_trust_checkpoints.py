"""A downloaded checkpoint is data: embedded configs resolve only through ldm.registry, pickled code is
refused with the object named, mismatching state dicts are described in one line.

The code-execution cases run the real entry points in subprocesses with a marker command that
must never run."""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from _trust_helpers import REPO, error_line, run, snapshot, temporary_files
from ldm import registry
from ldm.checkpoint import (CheckpointError, UntrustedCheckpointError, build_from_checkpoint, load_checkpoint_file,
                            make_config_dict, save_checkpoint)
from ldm.tiny import tiny_config, write_tiny_checkpoint

TRUST_HINT = "GLIGEN_TRUST_CHECKPOINTS=1"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust_ckpt")
    return str(write_tiny_checkpoint(d / "clean.pth", "text"))


def _payload(kind: str, marker: str) -> dict:
    if kind == "os.system":
        return {"target": "os.system", "params": {"command": f"touch {marker}"}}
    return {"target": "subprocess.call", "params": {"args": ["touch", marker]}}


def _evil_checkpoint(clean: str, folder, kind: str, suffix: str, where: str = "model") -> tuple[str, str]:
    """A tiny checkpoint whose embedded config names ``kind`` with a marker command."""
    marker = os.path.join(str(folder), f"MARKER_{kind.replace('.', '_')}_{suffix.strip('.')}_{where}")
    ckpt = load_checkpoint_file(clean)
    config = tiny_config("text")
    if where == "model":
        config["model"] = _payload(kind, marker)
    elif where == "nested":
        config["model"]["params"]["grounding_tokenizer"] = _payload(kind, marker)
    elif where == "top":
        config = _payload(kind, marker)
    ckpt["config_dict"] = make_config_dict(config)
    path = os.path.join(str(folder), f"evil_{kind.replace('.', '_')}_{where}{suffix}")
    save_checkpoint(ckpt, path)
    return path, marker


def _layout(folder) -> str:
    path = os.path.join(str(folder), "layout.json")
    with open(path, "w") as f:
        json.dump({"prompt": "a cat", "phrases": ["a cat"], "locations": [[0.1, 0.1, 0.5, 0.5]]}, f)
    return path


# ------------------------------------------------------------------------------------ registry
def test_registry_resolves_every_released_target_without_alias_modules():
    import yaml

    targets = set()

    def walk(node):
        if isinstance(node, dict):
            if "target" in node:
                targets.add(node["target"])
            for v in node.values():
                walk(v)

    for path in glob.glob(os.path.join(REPO, "configs", "*.yaml")):
        with open(path) as f:
            walk(yaml.safe_load(f))
    model_targets = {t for t in registry.REGISTRY if not t.startswith("dataset.")}
    assert len(targets) == 30 and targets == model_targets
    # our own checkpoints also embed the training config: every dataset class the catalog names is registered
    with open(os.path.join(REPO, "dataset", "catalog.py")) as f:
        catalog_targets = set(re.findall(r'"(dataset\.\w+\.\w+)"', f.read()))
    assert catalog_targets and catalog_targets <= set(registry.REGISTRY)
    for t in set(registry.REGISTRY):
        assert callable(registry.resolve(t)), t
    # the one-line alias modules are gone: the registry is the one place those paths live
    assert not glob.glob(os.path.join(REPO, "grounding_input", "*_input.py"))
    assert not glob.glob(os.path.join(REPO, "ldm", "modules", "diffusionmodules", "*_grounding_*.py"))


def test_user_yaml_may_name_any_importable_class_and_original_paths():
    from ldm.util import instantiate_from_config

    assert isinstance(instantiate_from_config({"target": "torch.nn.Identity"}), torch.nn.Identity)
    sem = instantiate_from_config({"target": "ldm.modules.diffusionmodules.sem_grounding_net.PositionNet",
                                   "params": {"resize_input": 64, "out_dim": 8, "backbone_depths": [1, 1, 1, 1],
                                              "backbone_dims": [8, 8, 8, 8]}})
    assert sem.map_key == "sem" and sem.in_conv.in_channels == 152
    ds = instantiate_from_config({"target": "grounding_input.canny_grounding_downsampler_input.GroundingDSInput"})
    assert ds.prepare({"canny_edge": torch.ones(1)}).item() == 1


def test_user_yaml_errors_are_one_line_value_errors():
    from ldm.util import ConfigTargetError, instantiate_from_config

    with pytest.raises(ValueError, match="cannot resolve config target 'no_such_pkg.Model'"):
        instantiate_from_config({"target": "no_such_pkg.Model"})
    with pytest.raises(ConfigTargetError, match="do not fit it: .*'ddconfig'"):
        instantiate_from_config({"target": "ldm.models.autoencoder.AutoencoderKL", "params": {"embed_dim": 4}})


def test_find_untrusted_names_target_and_non_data():
    assert registry.find_untrusted(tiny_config("sem")) is None
    assert registry.find_untrusted({"a": [{"target": "os.system"}]}) == ("target", "os.system")
    assert registry.find_untrusted({"model": {"target": "ldm.models.autoencoder.AutoencoderKL",
                                              "params": {"x": torch.zeros(1)}}})[0] == "value"


# ------------------------------------------------------------------------------------ in-process refusals
@pytest.mark.parametrize("where", ["model", "nested", "top"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_embedded_config_target_refused_before_import(clean, tmp_path, where, suffix):
    path, marker = _evil_checkpoint(clean, tmp_path, "os.system", suffix, where)
    with pytest.raises(UntrustedCheckpointError, match="os.system") as e:
        build_from_checkpoint(path)
    assert TRUST_HINT in str(e.value) and "\n" not in str(e.value) and isinstance(e.value, CheckpointError)
    assert not os.path.exists(marker)


def test_omegaconf_config_dict_is_checked_too(clean, tmp_path):
    """Released files pickle ``config_dict`` as an OmegaConf DictConfig: the same check applies."""
    from omegaconf import OmegaConf

    marker = tmp_path / "OMEGA_RAN"
    ckpt = load_checkpoint_file(clean)
    config = tiny_config("text")
    config["diffusion"] = {"target": "os.system", "params": {"command": f"touch {marker}"}}
    ckpt["config_dict"] = OmegaConf.create(config)
    torch.save(ckpt, tmp_path / "omega.pth")
    with pytest.raises(UntrustedCheckpointError, match="naming the target os.system"):
        build_from_checkpoint(tmp_path / "omega.pth")
    assert not marker.exists()


def test_unknown_target_module_is_never_imported(clean, tmp_path, monkeypatch):
    canary_marker = tmp_path / "IMPORTED"
    (tmp_path / "trust_canary_mod.py").write_text(f"open({str(canary_marker)!r}, 'w').close()\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = load_checkpoint_file(clean)
    config = tiny_config("text")
    config["grounding_tokenizer_input"] = {"target": "trust_canary_mod.Thing"}
    ckpt["config_dict"] = make_config_dict(config)
    save_checkpoint(ckpt, tmp_path / "canary.pth")
    with pytest.raises(UntrustedCheckpointError, match="trust_canary_mod.Thing"):
        load_checkpoint_file(tmp_path / "canary.pth")
    assert "trust_canary_mod" not in sys.modules and not canary_marker.exists()
    # the opt-in lifts it for files the user trusts
    assert load_checkpoint_file(tmp_path / "canary.pth", trust=True)["config_dict"]


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Call:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.call, (["touch", self.marker],)


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_payload_named_from_the_opcodes(tmp_path, protocol):
    for cls, name in ((_System, "posix.system" if os.name == "posix" else "nt.system"), (_Call, "subprocess.call")):
        marker = tmp_path / f"M_{cls.__name__}_{protocol}"
        path = tmp_path / f"p_{cls.__name__}_{protocol}.pth"
        torch.save({"model": {"w": torch.zeros(1)}, "x": cls(str(marker))}, path, pickle_protocol=protocol)
        with pytest.raises(UntrustedCheckpointError) as e:
            load_checkpoint_file(path)
        msg = str(e.value)
        assert msg.startswith(f"refused: {path} needs the Python object {name}, which is not on the allow-list")
        assert TRUST_HINT in msg and not marker.exists()


def test_corrupted_file_is_not_called_a_refusal(clean, tmp_path):
    data = open(clean, "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as e:
        load_checkpoint_file(tmp_path / "cut.pth")
    assert not isinstance(e.value, UntrustedCheckpointError)


def test_state_dict_mismatch_names_counts_and_keys(clean, tmp_path):
    ckpt = load_checkpoint_file(clean)
    for k in list(ckpt["model"])[:5]:
        del ckpt["model"][k]
    ckpt["model"]["bogus.weight"] = torch.zeros(1)
    ckpt["model"]["out.2.bias"] = torch.zeros(7)
    save_checkpoint(ckpt, tmp_path / "mismatch.pth")
    with pytest.raises(CheckpointError) as e:
        build_from_checkpoint(tmp_path / "mismatch.pth")
    msg = str(e.value)
    assert "\n" not in msg and "5 missing key(s): " in msg and "(2 more)" in msg
    assert "1 unexpected key(s): bogus.weight" in msg and "out.2.bias (file [7], model [4])" in msg


# ------------------------------------------------------------------------------------ entry points (subprocess)
@pytest.mark.parametrize("kind,suffix", [("os.system", ".pth"), ("subprocess.call", ".pth"),
                                         ("os.system", ".safetensors"), ("subprocess.call", ".safetensors")])
def test_gligen_inference_refuses_config_payload(clean, tmp_path, kind, suffix):
    path, marker = _evil_checkpoint(clean, tmp_path, kind, suffix)
    before = snapshot(tmp_path)
    p = run("gligen_inference.py", "--ckpt", path, "--layout", _layout(tmp_path), "--folder", tmp_path / "out",
            "--device", "cpu", "--steps", "2", "--batch_size", "1", "--no-progress", cwd=str(tmp_path))
    err = error_line(p)
    assert err.startswith(f"error: refused: {path} has an embedded config naming the target {kind},") and TRUST_HINT in err
    assert not os.path.exists(marker) and not (tmp_path / "out").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before


@pytest.mark.parametrize("kind,suffix", [("os.system", ".pth"), ("subprocess.call", ".safetensors")])
def test_convert_ckpt_refuses_config_payload(clean, tmp_path, kind, suffix):
    path, marker = _evil_checkpoint(clean, tmp_path, kind, suffix)
    before = snapshot(tmp_path)
    p = run("convert_ckpt.py", "--ckpt_path", path, "--new_ckpt_path", tmp_path / "new.pth", cwd=str(tmp_path))
    err = error_line(p)
    assert f"naming the target {kind}" in err and TRUST_HINT in err
    assert not os.path.exists(marker) and snapshot(tmp_path) == before and not temporary_files(tmp_path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from _train_helpers import shared_tiny_root

    return shared_tiny_root(tmp_path_factory)


def _main_args(data_root, tmp_path, ckpt):
    from _train_helpers import SD_NAME

    return ("--yaml_file", os.path.join(REPO, "configs", "tiny_text_box.yaml"), "--DATA_ROOT", data_root,
            "--official_ckpt_name", SD_NAME, "--OUTPUT_ROOT", tmp_path / "runs", "--name", "t", "--ckpt", ckpt,
            "--device", "cpu", "--workers", "0", "--batch_size", "2", "--total_iters", "1",
            "--disable_inference_in_training", "True")


@pytest.mark.parametrize("kind,suffix", [("subprocess.call", ".pth"), ("os.system", ".safetensors")])
def test_main_ckpt_refuses_config_payload(clean, data_root, tmp_path, kind, suffix):
    """main.py loads ``--ckpt`` through ldm.checkpoint: the refusal is its one-line CheckpointError."""
    path, marker = _evil_checkpoint(clean, tmp_path, kind, suffix)
    p = run("main.py", *_main_args(data_root, tmp_path, path), cwd=str(tmp_path))
    err = error_line(p)
    assert f"naming the target {kind}" in err and TRUST_HINT in err
    assert not os.path.exists(marker)


def test_pickle_payload_through_every_entry_point(data_root, tmp_path):
    marker = tmp_path / "PICKLE_RAN"
    path = tmp_path / "payload.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "config_dict": {}, "x": _System(str(marker))}, path)
    name = "posix.system" if os.name == "posix" else "nt.system"
    expected = f"error: refused: {path} needs the Python object {name}, which is not on the allow-list"
    runs = [run("gligen_inference.py", "--ckpt", path, "--layout", _layout(tmp_path), "--folder", tmp_path / "out",
                "--device", "cpu", cwd=str(tmp_path)),
            run("convert_ckpt.py", "--ckpt_path", path, "--new_ckpt_path", tmp_path / "n.pth", cwd=str(tmp_path)),
            run("main.py", *_main_args(data_root, tmp_path, path), cwd=str(tmp_path))]
    for p in runs:
        assert error_line(p).startswith(expected), p.stderr
    assert not marker.exists()
