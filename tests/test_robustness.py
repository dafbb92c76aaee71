"""Supply-chain and bad-input cases not covered next to their features: a killed export, symlinks
out of a bundle, and one-line exit-2 errors from every CLI command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import serve
from zoo_cli import main


def test_killed_export_leaves_nothing_that_looks_complete(tmp_path: Path, private_cache: Path) -> None:
    out = tmp_path / "bundle"
    env = {**os.environ}
    process = subprocess.Popen([sys.executable, "-m", "zoo_cli", "export", "efficientnet_lite0", "--out", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # inside the export: the staging folder exists, the bundle does not
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not out.exists()
    with pytest.raises(serve.BundleError):
        serve.load(out)
    leftovers = [p for p in tmp_path.iterdir() if p != out]
    assert all(p.name.startswith(".") and p.name.endswith(".partial") for p in leftovers)
    for leftover in leftovers:
        with pytest.raises(serve.BundleError):
            serve.load(leftover)  # a staging folder is never a valid bundle: no verified manifest
    assert main(["export", "efficientnet_lite0", "--out", str(out)]) == 0  # a later run completes
    serve.load(out)


def test_symlink_out_of_the_bundle_is_refused(bundles, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundles["efficientnet_lite0"], copy)
    outside = tmp_path / "outside.onnx"
    shutil.move(copy / "model.onnx", outside)
    (copy / "model.onnx").symlink_to(outside)  # same bytes, same sha256, but outside the folder
    with pytest.raises(serve.BundleError, match="points outside the bundle folder"):
        serve.load(copy)


@pytest.mark.parametrize(("argv", "message"), [
    (["fetch", "resnet-18"], "did you mean 'resnet18'"),
    (["serve", "/no/such/bundle"], "is not a folder"),
    (["serve", ".", "--port", "70000"], "--port"),
    (["predict", ".", "x"], "has no manifest.json"),
    (["finetune", "vit_b_61", "--data", "."], "did you mean 'vit_b_16'"),
    (["finetune", "resnet18", "--data", ".", "--epochs", "many"], "--epochs"),
    (["export", "resnet18", "--format", "tflite", "--out", "x"], "--format"),
    (["export", "resnet18"], "Missing option '--out'"),
    (["validate", "/no/such/run/dir"], "/no/such/run/dir does not exist"),
    (["bench", "resnet18", "--threads", "0"], "--threads"),
    (["info"], "Missing argument 'NAME|RUN_DIR'"),
])
def test_every_command_rejects_bad_input_in_one_line(capsys, argv: list[str], message: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.startswith("zoo: error:") and len(err.strip().splitlines()) == 1


def test_unreadable_registry_override_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"format_version": 7, "label_sets": {}, "models": []}))
    monkeypatch.setenv("ZOO_REGISTRY", str(registry))
    assert main(["list"]) == 2
    assert "format_version 7 is not supported" in capsys.readouterr().err
