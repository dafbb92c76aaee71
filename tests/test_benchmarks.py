"""Every script under benchmarks/ and scripts/ runs at a tiny size, so none rots unseen (issue 19).

The cheap ones run in every test session. Those that fine-tune and export whole pipelines
(detection_scenes, segmentation_scenes, loop_overhead, transfer's default recipe, serve_limits'
40-megapixel requests) or install a fresh virtual environment (serve_footprint) take minutes even at
their smallest; they run with ZOO_BENCH_SMOKE=all:

    ZOO_BENCH_SMOKE=all python -m pytest -q tests/test_benchmarks.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
heavy = pytest.mark.skipif(os.environ.get("ZOO_BENCH_SMOKE") != "all",
                           reason="minutes even at its smallest size: ZOO_BENCH_SMOKE=all runs it")


def load(script: str) -> ModuleType:
    """The script as a module (its folder importable, as when it runs as a program)."""
    path = ROOT / script
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"smoke_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def stored_reference(model_id: str) -> dict:
    """The reference outputs committed in zoo/registry.json for one model, as written there."""
    document = json.loads((ROOT / "zoo" / "registry.json").read_text())
    return next(m for m in document["models"] if m["id"] == model_id)["reference"]


def run(script: str, *argv: str) -> None:
    module = load(script)
    saved = sys.argv
    sys.argv = [script, *map(str, argv)]
    try:
        assert module.main() == 0
    finally:
        sys.argv = saved


def test_int8_agreement(all_formats, tmp_path: Path) -> None:
    run("benchmarks/int8_agreement.py", all_formats["efficientnet_lite0"], "--seeds", 1, "--out", tmp_path)
    report = json.loads((tmp_path / "int8_agreement_efficientnet_lite0.json").read_text())
    assert report["views"] == 30 and "| **all** |" in (tmp_path / "int8_agreement_efficientnet_lite0.md").read_text()


def test_int8_layers(all_formats, tmp_path: Path) -> None:
    run("benchmarks/int8_layers.py", all_formats["efficientnet_lite0"], "--runs", 1, "--out", tmp_path)
    assert json.loads((tmp_path / "int8_layers_efficientnet_lite0.json").read_text())


def test_serve_concurrency(bundles, tmp_path: Path) -> None:
    bundle = bundles["efficientnet_lite0"]
    run("benchmarks/serve_concurrency.py", bundle, "--clients", 2, "--requests", 4, "--repeats", 1, "--out", tmp_path)
    assert json.loads((tmp_path / f"serve_concurrency_{bundle.name}.json").read_text())


def test_skip_layer_norm(tmp_path: Path) -> None:
    run("benchmarks/skip_layer_norm.py", "--repeats", 1, "--out", tmp_path)
    assert json.loads((tmp_path / "skip_layer_norm.json").read_text())


def test_transfer_data_baseline_table_and_plot(tmp_path: Path) -> None:
    run("benchmarks/transfer.py", "--data", "digits", "faces", "--sizes", 3, "--seeds", 1,
        "--methods", "classical", "--out", tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "transfer.jsonl").read_text().splitlines()]
    assert [(r["data"], r["test_size"]) for r in rows] == [("digits", 300), ("faces", 80)]
    assert all(r["method"] == "classical" and 0.5 < r["accuracy"] <= 1.0 for r in rows)  # chance: 0.1 and 0.5
    assert (tmp_path / "transfer.md").exists() and (tmp_path / "transfer.png").stat().st_size > 0


def test_build_registry_reproduces_the_registry(tmp_path: Path) -> None:
    """registry.json is generated: the script on the same inputs writes the committed file byte for byte
    (a hand edit or a script change not regenerated fails here)."""
    copy = tmp_path / "registry.json"
    copy.write_bytes((ROOT / "zoo" / "registry.json").read_bytes())  # the references it keeps
    run("scripts/build_registry.py", "--registry", copy)
    assert copy.read_text() == (ROOT / "zoo" / "registry.json").read_text()


def test_make_references_reproduces_the_stored_references() -> None:
    """The reference logits of EfficientNet-Lite0, recomputed by timm from the same weights, are the
    registry's (to its own atol)."""
    pytest.importorskip("timm")
    module = load("scripts/make_references.py")
    stored = stored_reference("efficientnet_lite0")
    fresh = module.efficientnet_lite0_reference()
    assert [c["input"] for c in fresh["cases"]] == [c["input"] for c in stored["cases"]]
    for new, old in zip(fresh["cases"], stored["cases"]):
        np.testing.assert_allclose(new["output"], old["output"], rtol=0, atol=stored["atol"])
        assert new.get("top1_label") == old.get("top1_label")


@heavy
def test_make_references_minilm() -> None:
    pytest.importorskip("sentence_transformers")
    module = load("scripts/make_references.py")
    stored = stored_reference("all-minilm-l6-v2")
    np.testing.assert_allclose(module.minilm_reference()["cases"][0]["output"], stored["cases"][0]["output"],
                               rtol=0, atol=stored["atol"])


@heavy
def test_serve_limits(bundles, tmp_path: Path) -> None:
    run("benchmarks/serve_limits.py", bundles["efficientnet_lite0"], bundles["all-minilm-l6-v2"],
        "--out", tmp_path / "limits.json")
    assert json.loads((tmp_path / "limits.json").read_text())


@heavy
def test_detection_scenes(tmp_path: Path) -> None:
    run("benchmarks/detection_scenes.py", "--train", 2, "--val", 1, "--test", 1, "--epochs", 2, "--out", tmp_path)
    assert json.loads((tmp_path / "detection_scenes.json").read_text())["test"]


@heavy
def test_segmentation_scenes(tmp_path: Path) -> None:
    run("benchmarks/segmentation_scenes.py", "--train", 2, "--val", 1, "--test", 1, "--epochs", 2, "--out", tmp_path)
    assert json.loads((tmp_path / "segmentation_scenes.json").read_text())


@heavy
def test_loop_overhead(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    run("benchmarks/loop_overhead.py", "--repeats", 1, "--epochs", 1, "--out", tmp_path)
    assert json.loads((tmp_path / "loop_overhead.json").read_text())


@heavy
def test_transfer_every_image_method(tmp_path: Path) -> None:
    methods = ["zoo", "zoo-probe", "previous", "scratch", "sklearn-probe"]
    run("benchmarks/transfer.py", "--data", "faces", "--sizes", 3, "--seeds", 1, "--methods", *methods, "--out", tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "transfer.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == methods


@heavy
def test_transfer_vs_scratch(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    run("benchmarks/transfer_vs_scratch.py", "--seeds", 1, "--only", "image", "--out", tmp_path)
    assert (tmp_path / "transfer_vs_scratch.jsonl").read_text()


@heavy
def test_serve_footprint(bundles, tmp_path: Path) -> None:
    """Installs zoo[cpu,image] into a fresh virtual environment from the package index."""
    run("benchmarks/serve_footprint.py", bundles["efficientnet_lite0"], ROOT / "zoo" / "assets" / "flower.jpg",
        "--repeats", 1, "--out", tmp_path)
    assert list(tmp_path.glob("serve_footprint_*.json"))


def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py --device cpu --steps 2 (issue 16): every section runs (on the CPU the
    device's fp32 run is the reference run itself)."""
    report = load("benchmarks/gpu_check.py").main(["--device", "cpu", "--steps", "2", "--epochs", "2",
                                                    "--out", str(tmp_path)])
    assert report["ok"] and report["complete"] and json.loads((tmp_path / "gpu_check.json").read_text())["ok"]
    assert set(report["models"]) == {"efficientnet_lite0", "all-minilm-l6-v2"}
    for section in report["models"].values():
        assert section["numerics"]["off"]["loss_relative_distance"] == 0.0
        assert section["throughput"]["off"]["zoo"]["samples_per_second"] > 0
    export = report["models"]["efficientnet_lite0"]["export"]
    assert export["export_parity_on_cpu"] and export["onnx_vs_device_model"]["max_abs_diff"] < 1e-4
    # Gradients against float64: fp32 close (measured 2e-5 / 1e-7 overall), bf16 far coarser, every
    # parameter with a non-zero gradient compared.
    for name, section in report["models"].items():
        gradients = section["gradients"]
        assert gradients["parameters_compared"] > 50
        assert gradients["variants"]["cpu fp32"]["relative_error_all"] < 1e-3
        assert gradients["variants"]["cpu bf16"]["relative_error_all"] > 10 * gradients["variants"]["cpu fp32"]["relative_error_all"]
    row = report["models"]["efficientnet_lite0"]["throughput"]["off"]
    assert row["hand_loop_frozen_batchnorm"]["samples_per_second"] > 0 and row["hand_loop_sync_each_step"]["samples_per_second"] > 0
    assert not (tmp_path / "work").exists()  # the generated data and runs are removed


def test_transfer_table_marks_cells_with_fewer_seeds_than_their_row() -> None:
    transfer = load("benchmarks/transfer.py")
    row = {"data": "faces", "modality": "image", "per_class": 5, "seconds": 1.0}
    rows = ([{**row, "method": "zoo", "seed": s, "accuracy": 0.5 + s / 10} for s in range(5)]
            + [{**row, "method": "zoo-probe", "seed": s, "accuracy": 0.5} for s in range(3)]
            + [{**row, "method": "classical", "seed": 0, "accuracy": 0.25}])
    header, _, line = transfer.table(rows)
    assert header == "| data | per class | metric | zoo | zoo-probe | classical | seeds |"
    assert line == ("| faces | 5 | accuracy | 0.700 ± 0.141 (1 s) | 0.500 ± 0.000 (1 s) [3 seeds] "
                    "| 0.250 (1 s) [1 seed] | 5 |")
