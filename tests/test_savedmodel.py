"""SavedModel and TF Serving exports: the signature the manifest declares, the versioned layout, an
independent TensorFlow run at a batch size the exporter never used, and failures that leave nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.bundle import export_bundle
from serve.manifest import read_manifest
from zoo.reference import synthetic_images
from zoo.registry import get_model

TF_RUN = """
import sys, json, numpy as np, tensorflow as tf
spec = json.loads(sys.argv[1])
endpoint = tf.saved_model.load(spec["dir"]).signatures["serving_default"]
feeds = {k: tf.constant(v) for k, v in np.load(spec["inputs"]).items()}
np.save(spec["out"], endpoint(**feeds)[spec["output"]].numpy())
"""


def _run_savedmodel(directory: Path, inputs: dict[str, np.ndarray], output: str, tmp_path: Path) -> np.ndarray:
    """The SavedModel run by TensorFlow in a fresh process (no zoo code involved)."""
    np.savez(tmp_path / "inputs.npz", **inputs)
    spec = {"dir": str(directory), "inputs": str(tmp_path / "inputs.npz"), "out": str(tmp_path / "out.npy"),
            "output": output}
    subprocess.run([sys.executable, "-c", TF_RUN, json.dumps(spec)], check=True, capture_output=True, timeout=600)
    return np.load(tmp_path / "out.npy")


def test_image_savedmodel_has_a_dynamic_nchw_batch(all_formats, tmp_path: Path) -> None:
    bundle = all_formats["efficientnet_lite0"]
    manifest = read_manifest(bundle)
    savedmodel = manifest.artifacts["savedmodel"]
    assert savedmodel["signature"] == "serving_default" and savedmodel["max_abs_diff"] <= 1e-4
    assert savedmodel["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": [None, 3, 224, 224],
                                     "layout": "NCHW"}]
    assert savedmodel["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [None, 1000]}]
    images = synthetic_images(get_model("efficientnet_lite0").input, 3).numpy()  # batch 3: not a parity case
    expected = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": images})[0]
    actual = _run_savedmodel(bundle / "savedmodel", {"pixel_values": images}, "logits", tmp_path)
    assert actual.shape == (3, 1000) and np.abs(actual - expected).max() < 1e-4


def test_text_savedmodel_runs_at_its_declared_fixed_shape(all_formats, tmp_path: Path) -> None:
    from zoo.preprocess import load_tokenizer

    bundle = all_formats["all-minilm-l6-v2"]
    savedmodel = read_manifest(bundle).artifacts["savedmodel"]
    shape = savedmodel["inputs"][0]["shape"]
    assert shape == [1, 256] and [i["name"] for i in savedmodel["inputs"]] == ["input_ids", "attention_mask"]
    tokenizer = load_tokenizer(bundle / "tokenizer.json", get_model("all-minilm-l6-v2").input)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=shape[1])
    encoding = tokenizer.encode("TF Serving takes padded, fixed-length inputs.")
    feeds = {"input_ids": np.array([encoding.ids]), "attention_mask": np.array([encoding.attention_mask])}
    expected = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    actual = _run_savedmodel(bundle / "savedmodel", feeds, "sentence_embedding", tmp_path)
    assert np.abs(actual - expected).max() < 1e-5


@pytest.mark.parametrize("name", ["efficientnet_lite0", "all-minilm-l6-v2"])
def test_tf_serving_layout_is_listed_and_hashed(all_formats, name: str) -> None:
    bundle = all_formats[name]
    manifest = read_manifest(bundle)  # verifies every listed file's sha256
    serving = manifest.artifacts["tf-serving"]
    assert serving == {"model_base_path": f"tf_serving/{name}", "model_name": name, "version": 1}
    version = bundle / "tf_serving" / name / "1"
    assert (version / "saved_model.pb").samefile(bundle / "savedmodel" / "saved_model.pb")  # hard-linked
    on_disk = {p.relative_to(bundle).as_posix() for p in (bundle / "tf_serving").rglob("*") if p.is_file()}
    assert on_disk and on_disk <= set(manifest.files)


def test_a_conversion_that_fails_leaves_no_savedmodel(tmp_path: Path, monkeypatch) -> None:
    from export import savedmodel

    monkeypatch.setattr(savedmodel, "WORKER_TIMEOUT_S", 0.5)  # the conversion cannot finish in time
    result = export_bundle("efficientnet_lite0", tmp_path / "b", formats=("onnx", "tf-serving"))
    rows = {r["format"]: r["status"] for r in result.formats}
    assert rows["savedmodel"].startswith("failed: the SavedModel conversion did not finish")
    assert rows["tf-serving"].startswith("failed: tf-serving lays out the SavedModel, which was not written")
    assert not (tmp_path / "b" / "savedmodel").exists() and not (tmp_path / "b" / "tf_serving").exists()
    assert not list(tmp_path.glob("b/.savedmodel*")) and read_manifest(tmp_path / "b").artifacts == {}


def test_missing_tensorflow_and_bad_static_shape_fail_before_exporting(tmp_path: Path, monkeypatch, capsys) -> None:
    from export import savedmodel
    from zoo_cli import main

    monkeypatch.setattr(savedmodel, "TF_REQUIREMENTS", ("tensorflow", "a_module_that_is_not_installed"))
    code = main(["export", "efficientnet_lite0", "--format", "savedmodel", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "needs a_module_that_is_not_installed" in err and "pip install --no-deps onnx2tf" in err
    monkeypatch.undo()
    for name, shape, message in [("all-minilm-l6-v2", "1,100000", "SEQ in 1..256"),
                                 ("all-minilm-l6-v2", "4", "expected BATCH,SEQ"),
                                 ("efficientnet_lite0", "4,16", "expected BATCH >= 1"),
                                 ("efficientnet_lite0", "one", "expected BATCH or BATCH,SEQ")]:
        code = main(["export", name, "--format", "savedmodel", "--static-shape", shape, "--out", str(tmp_path / "b")])
        assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_tensorflow_worker_does_not_import_torch() -> None:
    code = "import sys, export.tf_worker; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False"
