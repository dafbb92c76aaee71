"""OpenVINO as a second engine (serve.openvino_engine): the two real bundles through it within the fp32
tolerance of onnxruntime, explicit settings in the line it prints, and the choices it refuses. Each task's
own bundle is checked in that task's test module (tests/openvino_parity.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import serve
from openvino_parity import assert_openvino_matches_onnxruntime
from serve.errors import BundleError, ProviderError
from serve.providers import SessionConfig
from zoo_cli import main

pytest.importorskip("openvino", reason="the `openvino` extra is not installed")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "all-minilm-l6-v2"])
def test_real_bundles_run_on_openvino_as_on_onnxruntime(bundles: dict[str, Path], name: str) -> None:
    assert_openvino_matches_onnxruntime(bundles[name])


def test_threads_and_precision_are_set_not_left_to_the_plugin(bundles: dict[str, Path]) -> None:
    predictor = serve.load(bundles["efficientnet_lite0"], config=SessionConfig(device="cpu", engine="openvino",
                                                                                intra_op_threads=1))
    assert predictor.session.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(predictor.session.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert "threads 1" in predictor.provider_line and "precision f32" in predictor.provider_line


def test_what_openvino_does_not_run_is_refused(bundles: dict[str, Path], all_formats: dict[str, Path], capsys) -> None:
    with pytest.raises(ProviderError, match="engine 'openvino' runs on the CPU here"):
        serve.load(bundles["efficientnet_lite0"], config=SessionConfig(device="cuda", engine="openvino"))
    with pytest.raises(BundleError, match="openvino bf16 cannot serve .*: not checked at export"):
        serve.load(bundles["efficientnet_lite0"], config=SessionConfig(device="cpu", engine="openvino"), variant="bf16")
    with pytest.raises(BundleError, match="openvino fp16 cannot serve .*: the fp16 variant was checked on onnxruntime"):
        serve.load(all_formats["efficientnet_lite0"], config=SessionConfig(device="cpu", engine="openvino"),
                   variant="fp16")
    with pytest.raises(BundleError, match="onnxruntime bf16 cannot serve .*: onnxruntime has no bf16 CPU kernels"):
        serve.load(all_formats["efficientnet_lite0"], config=SessionConfig(engine="onnxruntime"), variant="bf16")
    with pytest.raises(ProviderError, match="engine 'tensorrt' is not one of auto, onnxruntime, openvino"):
        serve.load(bundles["efficientnet_lite0"], config=SessionConfig(engine="tensorrt"))
    photo = str(Path(__file__).resolve().parents[1] / "zoo" / "assets" / "flower.jpg")
    assert main(["predict", str(bundles["efficientnet_lite0"]), photo, "--engine", "openvino", "--json"]) == 0
    captured = capsys.readouterr()
    assert '"daisy"' in captured.out and "OpenVINO CPU" in captured.err
