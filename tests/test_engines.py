"""engine="auto" (serve.engines): only pairs that passed their gate at export are timed or served, the
fastest is taken, the decision is stored next to the bundle and reused until the CPU, the libraries, the
bundle or the request change; `--format openvino` writes an IR that OpenVINO Model Server can load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import serve
import serve.engines as engines
from serve.engines import DECISIONS_FILE, Pair
from serve.errors import BundleError
from serve.providers import SessionConfig
from zoo_cli import main

pytest.importorskip("openvino", reason="the `openvino` extra is not installed")

FLOWER = str(Path(__file__).resolve().parents[1] / "zoo" / "assets" / "flower.jpg")


@pytest.fixture(scope="module")
def failing_bf16(tmp_path_factory: pytest.TempPathFactory, private_cache: Path) -> Path:
    """EfficientNet-Lite0 exported with --format openvino while the bf16 gate is impossible (cosine floor
    above 1): a real export whose bf16 pair failed."""
    import export.formats.openvino as openvino_format
    from export import export_bundle

    out = tmp_path_factory.mktemp("gate") / "lite0"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openvino_format, "BF16_MIN_COSINE", 1.01)
        export_bundle("efficientnet_lite0", out, formats=("onnx", "onnx-int8", "openvino"))
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / bundle.name
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns(DECISIONS_FILE))
    return target


class FakeTimer:
    """Stands in for the stopwatch only (what is timed and what is chosen is the code under test): each pair's
    median from `medians`, and a record of what was timed."""

    def __init__(self, medians: dict[str, float]):
        self.medians, self.timed = medians, []

    def __call__(self, runs):
        self.timed.append(sorted(str(pair) for pair in runs))
        for run in runs.values():
            run()  # every pair really runs once on the timing feeds
        return {pair: self.medians[str(pair)] for pair in runs}


def test_a_pair_that_failed_its_gate_is_never_timed_or_served(failing_bf16: Path, tmp_path: Path, monkeypatch) -> None:
    bundle = _copy(failing_bf16, tmp_path)
    pairs = json.loads((bundle / "manifest.json").read_text())["artifacts"]["openvino"]["pairs"]
    assert pairs["fp32"]["ok"] and pairs["int8"]["ok"] and not pairs["bf16"]["ok"]
    timer = FakeTimer({"onnxruntime fp32": 9.0, "openvino fp32": 8.0, "openvino bf16": 0.1})
    monkeypatch.setattr(engines, "time_runs", timer)
    predictor = serve.load(bundle)
    assert timer.timed == [["onnxruntime fp32", "openvino fp32"]]
    assert (predictor.engine, predictor.variant) == ("openvino", "fp32")
    assert "skipped openvino bf16" in predictor.provider_line
    with pytest.raises(BundleError, match="openvino bf16 cannot serve .*: failed its gate at export"):
        serve.load(bundle, variant="bf16")
    with pytest.raises(BundleError, match="openvino bf16 cannot serve"):
        serve.load(bundle, config=SessionConfig(engine="openvino"), variant="bf16")
    # int8 asked for: both engines passed the int8 gate, and auto times them against each other
    timer.medians.update({"onnxruntime int8": 3.0, "openvino int8": 4.0})
    int8 = serve.load(bundle, variant="int8")
    assert timer.timed[-1] == ["onnxruntime int8", "openvino int8"] and (int8.engine, int8.variant) == ("onnxruntime", "int8")


def test_the_decision_is_stored_and_invalidated_by_cpu_versions_bundle_and_request(all_formats, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    bundle = _copy(all_formats["efficientnet_lite0"], tmp_path)
    timer = FakeTimer({"onnxruntime fp32": 5.0, "openvino fp32": 2.0, "openvino bf16": 6.0})
    monkeypatch.setattr(engines, "time_runs", timer)
    first = serve.load(bundle)
    assert (first.engine, first.variant) == ("openvino", "fp32") and "timed now; saved" in first.provider_line
    assert len(timer.timed) == 1
    stored = json.loads((bundle / DECISIONS_FILE).read_text())["decisions"]
    assert [d["choice"] for d in stored] == ["openvino fp32"] and stored[0]["p50_ms"]["onnxruntime fp32"] == 5.0
    again = serve.load(bundle)
    assert len(timer.timed) == 1 and again.engine == "openvino" and "decided" in again.provider_line

    serve.load(bundle, batch_size=8)  # another request: timed again
    assert len(timer.timed) == 2
    monkeypatch.setattr(engines, "cpu_flags", lambda: "fpu sse2")  # another CPU
    serve.load(bundle)
    assert len(timer.timed) == 3
    versions = engines.library_versions()
    monkeypatch.setattr(engines, "library_versions", lambda: {**versions, "openvino": "2099.1.0"})  # an upgrade
    timer.medians["onnxruntime fp32"] = 1.0  # ... after which onnxruntime is fastest
    upgraded = serve.load(bundle)
    assert len(timer.timed) == 4 and (upgraded.engine, upgraded.variant) == ("onnxruntime", "fp32")
    assert len(json.loads((bundle / DECISIONS_FILE).read_text())["decisions"]) == 4
    serve.load(bundle)
    assert len(timer.timed) == 4  # the upgraded key's own decision is reused
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"]["openvino"]["pairs"]["bf16"]["gate"] += " "  # the bundle changed
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    serve.load(bundle)
    assert len(timer.timed) == 5


def test_a_broken_decisions_file_is_ignored_and_replaced(all_formats, tmp_path: Path) -> None:
    bundle = _copy(all_formats["all-minilm-l6-v2"], tmp_path)
    (bundle / DECISIONS_FILE).write_text("{not json")
    predictor = serve.load(bundle, config=SessionConfig(intra_op_threads=1))
    assert "timed now; saved" in predictor.provider_line
    decision = json.loads((bundle / DECISIONS_FILE).read_text())["decisions"][0]
    medians = decision["p50_ms"]
    assert decision["choice"] == min(medians, key=medians.get) == f"{predictor.engine} {predictor.variant}"
    assert decision["key"]["threads"] == 1 and decision["key"]["batch"] == 1


def test_bundles_without_the_openvino_check_serve_onnxruntime_unless_openvino_is_named(bundles) -> None:
    auto = serve.load(bundles["efficientnet_lite0"])
    assert (auto.engine, auto.variant) == ("onnxruntime", "fp32") and "the only pair allowed" in auto.provider_line
    named = serve.load(bundles["efficientnet_lite0"], config=SessionConfig(engine="openvino"))
    assert (named.engine, named.variant) == ("openvino", "fp32")


def test_the_openvino_format_is_a_model_server_repository(all_formats) -> None:
    """openvino/config.json names the model and its folder relative to itself with the checked precision hint;
    the IR in NAME/1/ loads in OpenVINO and gives onnxruntime's outputs."""
    import onnxruntime as ort
    import openvino as ov

    bundle = all_formats["efficientnet_lite0"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = manifest["artifacts"]["openvino"]
    assert record["pairs"]["fp32"]["ok"] and record["pairs"]["fp32"]["max_abs_diff"] <= 1e-4
    config = json.loads((bundle / "openvino" / "config.json").read_text())["model_config_list"][0]["config"]
    assert config["name"] == "efficientnet_lite0"
    assert config["plugin_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    xml = bundle / "openvino" / config["base_path"] / "1" / "model.xml"
    assert str(xml.relative_to(bundle)) == record["file"] and record["file"] in manifest["files"]
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    assert np.abs(compiled(pixels)[0] - expected).max() <= 1e-4


def test_the_command_line_takes_engine_and_precision(all_formats, failing_bf16: Path, capsys) -> None:
    from serve.openvino_engine import bf16_hardware

    if bf16_hardware():
        assert main(["predict", str(all_formats["efficientnet_lite0"]), FLOWER, "--engine", "openvino",
                     "--precision", "bf16", "--json"]) == 0
        captured = capsys.readouterr()
        assert '"daisy"' in captured.out and "precision bf16" in captured.err and "openvino bf16 as asked" in captured.err
    assert main(["predict", str(failing_bf16), FLOWER, "--precision", "bf16"]) == 2
    assert "failed its gate at export" in capsys.readouterr().err
    assert main(["predict", str(all_formats["efficientnet_lite0"]), FLOWER, "--engine", "onnxruntime",
                 "--precision", "bf16"]) == 2
    assert "onnxruntime has no bf16 CPU kernels" in capsys.readouterr().err


def test_candidates_cover_the_request() -> None:
    assert engines.candidates("auto", "auto") == [Pair("onnxruntime", "fp32"), Pair("openvino", "fp32"),
                                                 Pair("openvino", "bf16")]
    assert engines.candidates("onnxruntime", "auto") == [Pair("onnxruntime", "fp32")]
    assert engines.candidates("auto", "int8") == [Pair("onnxruntime", "int8"), Pair("openvino", "int8")]
    assert engines.candidates("onnxruntime", "bf16") == [Pair("onnxruntime", "bf16")]  # to be refused by name


def test_a_pair_that_fails_to_load_here_leaves_the_others(all_formats, tmp_path: Path, monkeypatch) -> None:
    """OpenVINO failing on this machine (here: made to fail compiling) is skipped with its error in the line;
    onnxruntime serves."""
    import serve.openvino_engine as openvino_engine

    def broken(*args, **kwargs):
        raise BundleError("OpenVINO could not load model.onnx: Check 'shape' failed")

    monkeypatch.setattr(openvino_engine, "create_openvino_session", broken)
    predictor = serve.load(_copy(all_formats["efficientnet_lite0"], tmp_path))
    assert (predictor.engine, predictor.variant) == ("onnxruntime", "fp32")
    assert "openvino fp32 failed here (BundleError: OpenVINO could not load model.onnx" in predictor.provider_line
