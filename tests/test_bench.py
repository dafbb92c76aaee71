"""`zoo bench`: every engine measured side by side, a stable JSON report, ratios to torch eager."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

from export.bench import SCHEMA, bench
from zoo_cli import main


def _openvino_rows(*variants: str) -> list[str]:
    """The OpenVINO rows zoo bench has here: none without the extra, bf16 only on a CPU that has it."""
    if find_spec("openvino") is None:
        return []
    from serve.openvino_engine import bf16_hardware

    return [f"openvino {v}" for v in variants if v != "bf16" or bf16_hardware()]


def test_bench_reports_every_engine(bundles) -> None:
    report = bench(str(bundles["efficientnet_lite0"]), batches=(2,), threads=1, warmup=1, min_repeats=3, seconds=0.1)
    assert report["schema"] == SCHEMA and report["model"] == "efficientnet_lite0" and report["pretrained_weights"]
    engines = [r["engine"] for r in report["results"]]
    assert engines == ["torch eager", "onnxruntime fp32", *_openvino_rows("fp32", "bf16"), "serve run (preprocessed)",
                       "serve run (onnxruntime fp32)", "serve predict (raw input)"]
    # exported without --format openvino: auto may only take onnxruntime fp32, and serve's run is that
    assert report["auto"] == [{"batch": 2, "choice": "onnxruntime fp32", "allowed": ["onnxruntime fp32"],
                               "fastest_allowed": "onnxruntime fp32",
                               "ratio_to_fastest_allowed": report["auto"][0]["ratio_to_fastest_allowed"]}]
    rows = {r["engine"]: r for r in report["results"]}
    assert rows["torch eager"]["ratio_to_torch"] == 1.0
    for row in report["results"]:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["items_per_s"] > 0 and row["batch"] == 2


def test_bench_cli_json_and_plot(capsys, tmp_path: Path) -> None:
    code = main(["bench", "all-minilm-l6-v2", "--batch", "3", "--threads", "1", "--seconds", "0.1", "--json",
                 "--plot", str(tmp_path / "bench.png")])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert {r["engine"] for r in report["results"]} >= {"torch eager", "onnxruntime fp32", "serve predict (raw input)"}
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_bench_bad_arguments(capsys) -> None:
    assert main(["bench", "efficientnet_lite0", "--batch", "0,x"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert main(["bench", "efficientnet-lite"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_bench_measures_every_format_in_the_bundle(all_formats) -> None:
    report = bench(str(all_formats["efficientnet_lite0"]), batches=(2,), threads=1, warmup=1, min_repeats=3,
                   seconds=0.1)
    check = report["auto"][0]
    assert [r["engine"] for r in report["results"]] == [
        "torch eager", "onnxruntime fp32", "onnxruntime fp16", "onnxruntime int8",
        *_openvino_rows("fp32", "bf16", "int8"), "tensorflow savedmodel", "serve run (preprocessed)",
        *[f"serve run ({pair})" for pair in check["allowed"]], "serve predict (raw input)"]
    assert check["choice"] in check["allowed"] and check["fastest_allowed"] in check["allowed"]
    assert set(check["allowed"]) >= {"onnxruntime fp32", *(["openvino fp32"] if _openvino_rows("fp32") else [])}
    text = bench(str(all_formats["all-minilm-l6-v2"]), batches=(1, 2), threads=1, warmup=1, min_repeats=3,
                 seconds=0.1)
    savedmodel = [(r["engine"], r["batch"]) for r in text["results"] if r["engine"].startswith("tensorflow")]
    assert savedmodel == [("tensorflow savedmodel (padded to 1x256)", 1)]  # its signature is 1 x 256


def test_the_table_says_when_the_weights_were_random() -> None:
    """`zoo bench` on a model whose weights are not reachable times random weights; the table says so
    (the JSON has pretrained_weights: false)."""
    from export.bench import table

    row = {"engine": "onnxruntime", "batch": 1, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "items_per_s": 1000.0,
           "ratio_to_torch": 0.5}
    report = {"model": "resnet18", "threads": 2, "pretrained_weights": False, "results": [row]}
    assert table(report)[0] == ("resnet18 (2 threads; random weights: the pretrained ones were not reachable, and "
                                "timings do not depend on their values)")
    assert table({**report, "pretrained_weights": True})[0] == "resnet18 (2 threads)"
