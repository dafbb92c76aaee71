"""OpenVINO (serve.openvino_engine) against onnxruntime on one bundle: every output of the model on the same
feeds (real photos through the bundle's preprocessing, texts through its tokenizer), within the fp32
export tolerance. Shared by each task's test module, on the bundle that module already exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import serve
from serve.preprocess import preprocess_images
from serve.providers import SessionConfig
from zoo.tolerances import EXPORT_ATOL

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = [str(ROOT / "zoo" / "assets" / name) for name in ("flower.jpg", "china.jpg")]
TEXTS = ["Dana lives in Berlin and works for Siemens.", "Where does Dana live?", "a short one"]


def assert_openvino_matches_onnxruntime(bundle: Path) -> float:
    """The largest |difference| of any output between the two engines (asserted within EXPORT_ATOL)."""
    pytest.importorskip("openvino", reason="the `openvino` extra is not installed")
    reference = serve.load(bundle, config=SessionConfig(device="cpu", engine="onnxruntime"))
    openvino = serve.load(bundle, config=SessionConfig(device="cpu", engine="openvino"))
    assert "OpenVINO CPU" in openvino.provider_line and "precision f32" in openvino.provider_line
    manifest = reference.manifest
    if manifest.modality == "text":
        feeds = reference._text(TEXTS)
    else:
        feeds = {manifest.inputs[0].name: preprocess_images(manifest.preprocessing, PHOTOS[:1] if
                                                            manifest.preprocessing.crop is None else PHOTOS)}
    expected, actual = reference.run_all(feeds), openvino.run_all(feeds)
    assert list(expected) == list(actual)
    worst = 0.0
    for name in expected:
        assert actual[name].shape == expected[name].shape and actual[name].dtype == expected[name].dtype, name
        worst = max(worst, float(np.abs(actual[name].astype(np.float64) - expected[name]).max()))
    assert worst <= EXPORT_ATOL["float32"], worst
    return worst
