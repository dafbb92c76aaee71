"""Builders: architecture equivalence with an independent implementation, strict key mapping,
and weights loading that never executes pickle."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch

import zoo
from zoo.builders.efficientnet_lite import EfficientNetLite
from zoo.builders.state_dict import load_state_dict_strict, read_state_dict
from zoo.errors import BuildError
from zoo.registry import get_model
from zoo.schema import SourceSpec


def test_efficientnet_lite_matches_timm_on_random_weights() -> None:
    """Our static-'same'-padding network equals timm's tf_efficientnet_lite0 (dynamic padding) given
    identical random weights: the two share no code."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ours = EfficientNetLite("lite0", num_classes=1000, image_size=224).eval()
    with torch.no_grad():
        for module in ours.modules():  # non-trivial BN statistics, so a mapping slip cannot hide
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    target = reference.state_dict()
    assert len(target) == len(ours.state_dict())
    reference.load_state_dict({name: value for name, value in zip(target, ours.state_dict().values())}, strict=True)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff < 1e-5


def test_missing_key_is_an_error_not_a_warning() -> None:
    model = EfficientNetLite("lite0")
    state = model.state_dict()
    state.pop("_fc.bias")
    state["_fc.extra"] = torch.zeros(1)
    with pytest.raises(BuildError, match=r"missing keys: _fc.bias.*unexpected keys: _fc.extra"):
        load_state_dict_strict(model, state, "test")


def test_shape_mismatch_is_reported() -> None:
    model = EfficientNetLite("lite0", num_classes=10)
    with pytest.raises(BuildError, match=r"_fc.weight: checkpoint \(1000, 1280\) vs model \(10, 1280\)"):
        load_state_dict_strict(model, EfficientNetLite("lite0").state_dict(), "test")


class _Payload:
    """Unpickling this writes a marker file: the classic malicious-checkpoint shape."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_pickle_payload_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    weights = tmp_path / "evil.pth"
    with open(weights, "wb") as handle:
        pickle.dump({"_fc.weight": _Payload(marker)}, handle)
    with pytest.raises(BuildError, match="refused to load"):
        read_state_dict(weights, "torch-state-dict")
    assert not marker.exists()


def test_build_refuses_a_malicious_file_end_to_end(tmp_path: Path) -> None:
    """A registry entry whose pinned file is a pickle payload: hash verified, load refused, no code run."""
    import hashlib

    marker = tmp_path / "marker.txt"
    folder = tmp_path / "src"
    folder.mkdir()
    weights = folder / "evil.pth"
    with open(weights, "wb") as handle:
        pickle.dump(_Payload(marker), handle)
    entry = get_model("efficientnet_lite0")
    from zoo.schema import FileSpec

    evil = dataclasses.replace(entry, id="evil", sources=(SourceSpec(kind="path", path=str(folder)),), files=(
        FileSpec(name="evil.pth", role="weights", sha256=hashlib.sha256(weights.read_bytes()).hexdigest()),))
    with pytest.raises(BuildError, match="never unpickles"):  # refused for being a pickle, not by accident
        zoo.build(evil)
    assert not marker.exists()


def test_build_returns_eval_mode_with_verified_weights() -> None:
    model = zoo.build("efficientnet_lite0")
    assert not model.training
    state = torch.load(zoo.fetch(get_model("efficientnet_lite0")).files["efficientnet-lite0-57934424.pth"],
                       weights_only=True)
    assert torch.equal(model.state_dict()["_fc.weight"], state["_fc.weight"])


def test_text_encoder_with_wrong_weights_fails_loudly(tmp_path: Path) -> None:
    """all-MiniLM config with BERT-base-shaped weights: mismatch is an error naming the keys."""
    from safetensors.torch import save_file

    entry = get_model("all-minilm-l6-v2")
    fetched = zoo.fetch(entry)
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_bytes(fetched.files["config.json"].read_bytes())
    state = zoo.build(entry).encoder.state_dict()
    state.pop("encoder.layer.5.output.dense.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    from zoo.builders.hf_encoder import build_hf_encoder

    with pytest.raises(BuildError, match="encoder.layer.5.output.dense.weight"):
        build_hf_encoder(entry, folder / "model.safetensors")
