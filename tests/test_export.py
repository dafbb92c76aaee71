"""ONNX bundles of the real backbones: manifest, dynamic axes proven by running other sizes,
validation report, and failed exports that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export import export_bundle
from serve.manifest import read_manifest
from zoo.errors import ExportError, InputError
from zoo.preprocess import load_tokenizer, tokenize
from zoo.reference import synthetic_images
from zoo.registry import get_model


def test_image_bundle_manifest_and_report(bundles: dict[str, Path]) -> None:
    directory = bundles["efficientnet_lite0"]
    manifest = read_manifest(directory)
    assert manifest.inputs[0].name == "pixel_values" and manifest.inputs[0].shape == ["batch", 3, 224, 224]
    assert manifest.outputs[0].shape == ["batch", 1000] and manifest.outputs[0].dtype == "float32"
    assert len(manifest.postprocessing.labels) == 1000 and manifest.postprocessing.labels[985] == "daisy"
    assert manifest.preprocessing.crop == 224 and manifest.preprocessing.interpolation == "bicubic"
    assert manifest.source["files"]["efficientnet-lite0-57934424.pth"].startswith("57934424")
    assert manifest.opset >= 18 and "torch" in manifest.producer and "onnxruntime" in manifest.producer
    report = json.loads((directory / "validation.json").read_text())
    assert report["ok"] and report["max_abs_diff"] <= 1e-4
    assert {c["case"] for c in report["cases"]} >= {"synthetic batch 1", "synthetic batch 5"}
    assert all(c["top1_agreement"] == 1.0 for c in report["cases"])


def test_text_bundle_has_dynamic_batch_and_sequence(bundles: dict[str, Path], torch_models) -> None:
    directory = bundles["all-minilm-l6-v2"]
    manifest = read_manifest(directory)
    assert [i.shape for i in manifest.inputs] == [["batch", "sequence"], ["batch", "sequence"]]
    assert manifest.postprocessing.normalized and manifest.postprocessing.pooling == "mean"
    assert (directory / "tokenizer.json").is_file() and "tokenizer.json" in manifest.files
    entry = get_model("all-minilm-l6-v2")
    tokenizer = load_tokenizer(directory / "tokenizer.json", entry.input)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    for texts in (["a"], ["one two three four five six seven"] * 7, ["x " * 400, "y"]):
        feeds = tokenize(tokenizer, texts)
        with torch.inference_mode():
            expected = torch_models["all-minilm-l6-v2"](**feeds).numpy()
        actual = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() <= 1e-4


def test_image_bundle_runs_at_other_batch_sizes(bundles: dict[str, Path], torch_models) -> None:
    session = ort.InferenceSession(str(bundles["efficientnet_lite0"] / "model.onnx"), providers=["CPUExecutionProvider"])
    spec = get_model("efficientnet_lite0").input
    for batch in (1, 3, 8):
        x = synthetic_images(spec, batch)
        with torch.inference_mode():
            expected = torch_models["efficientnet_lite0"](x).numpy()
        actual = session.run(None, {"pixel_values": x.numpy()})[0]
        assert np.abs(actual - expected).max() <= 1e-4
        assert (actual.argmax(1) == expected.argmax(1)).all()


def test_failed_validation_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match="disagrees with torch; nothing was written") as info:
        export_bundle("efficientnet_lite0", out, atol=1e-12)
    assert "✗ synthetic batch 1" in str(info.value)  # every case is listed
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten_without_force(tmp_path: Path, bundles: dict[str, Path]) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="already exists"):
        export_bundle("efficientnet_lite0", out)
    with pytest.raises(InputError, match="is not a bundle"):
        export_bundle("efficientnet_lite0", out, overwrite=True)
    assert (out / "keep.txt").read_text() == "user data"
