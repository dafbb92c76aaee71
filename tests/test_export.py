"""ONNX bundles of the real backbones: manifest, dynamic axes proven by running other sizes,
validation report, and failed exports that leave nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from export import export_bundle
from export.formats import FORMAT_NAMES, FormatOptions
from serve.manifest import read_manifest
from zoo.errors import ExportError, InputError
from zoo.preprocess import load_tokenizer, tokenize
from zoo.reference import synthetic_images
from zoo.registry import get_model
from zoo.tolerances import INT8_MIN_COSINE

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("name", ["efficientnet_lite0", "all-minilm-l6-v2"])
def test_fp16_variant_agrees_with_fp32(all_formats, name: str) -> None:
    import serve

    directory = all_formats[name]
    manifest = read_manifest(directory)
    fp16 = manifest.variants["fp16"]
    assert fp16["file"] == "model.fp16.onnx" and fp16["max_abs_diff"] <= 0.1 and fp16["file"] in manifest.files
    # checked on CUDA too where onnxruntime's CUDA provider works (serve runs fp16 there only)
    from serve.providers import cuda_listed

    assert fp16["checked_on"][0] == "CPUExecutionProvider"
    assert fp16["checked_on"] == ["CPUExecutionProvider"] or cuda_listed()
    assert (directory / "model.fp16.onnx").stat().st_size < 0.6 * (directory / "model.onnx").stat().st_size
    full = serve.load(directory, config=serve.SessionConfig(engine="onnxruntime"))  # auto may take OpenVINO bf16
    half = serve.load(directory, variant="fp16")
    inputs = [str(p) for p in (Path(__file__).parents[1] / "zoo" / "assets").glob("*.jpg")] \
        if name == "efficientnet_lite0" else ["a short text", "a somewhat longer sentence about fp16 models"]
    a, b = full.predict(inputs), half.predict(inputs)
    if name == "efficientnet_lite0":
        assert [r["top_k"][0]["label"] for r in a] == [r["top_k"][0]["label"] for r in b]
    else:
        assert np.abs(np.array([r["embedding"] for r in a]) - np.array([r["embedding"] for r in b])).max() < 1e-2
    with pytest.raises(serve.BundleError, match="no 'int4' variant; it has: fp32, fp16, int8"):
        serve.load(directory, variant="int4")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "all-minilm-l6-v2"])
def test_int8_variant_is_small_and_close_to_fp32(all_formats, name: str) -> None:
    import serve

    directory = all_formats[name]
    int8 = read_manifest(directory).variants["int8"]
    assert int8["file"] == "model.int8.onnx" and int8["min_cosine"] >= INT8_MIN_COSINE
    assert (directory / "model.int8.onnx").stat().st_size < 0.35 * (directory / "model.onnx").stat().st_size
    full, quantized = serve.load(directory), serve.load(directory, variant="int8")
    if name == "efficientnet_lite0":
        assert int8["quantization"].startswith("static QDQ") and int8["top1_on"] == "30 held-out views"
        assert int8["top1_agreement"] >= 0.7  # measured 0.73 (22/30; low-margin views: see export.calibration)
        photos = [str(ROOT / "zoo" / "assets" / "flower.jpg"), str(ROOT / "zoo" / "assets" / "china.jpg")]
        assert [r["top_k"][0]["label"] for r in full.predict(photos)] == \
            [r["top_k"][0]["label"] for r in quantized.predict(photos)]
    else:
        assert int8["quantization"].startswith("dynamic")
        texts = ["a short text", "a somewhat longer sentence about int8 models", "ok"]
        a = np.array([r["embedding"] for r in full.predict(texts)])
        b = np.array([r["embedding"] for r in quantized.predict(texts)])
        assert np.min(np.sum(a * b, axis=1)) > 0.95  # both L2-normalised: the dot product is the cosine


def test_int8_calibrates_on_a_user_folder(tmp_path: Path, capsys) -> None:
    from zoo_cli import main

    folder = tmp_path / "calib" / "nested"
    folder.mkdir(parents=True)
    for photo in ("flower.jpg", "china.jpg"):
        shutil.copyfile(ROOT / "zoo" / "assets" / photo, folder / photo)
    result = export_bundle("efficientnet_lite0", tmp_path / "b", formats=("onnx", "onnx-int8"),
                           options=FormatOptions(calibration=tmp_path / "calib"))
    assert str(tmp_path / "calib") in result.manifest.variants["int8"]["quantization"]
    assert result.manifest.variants["int8"]["top1_on"] == "30 held-out views"  # too few images to hold any out
    from export.calibration import user_split

    for photo in ("flower.jpg", "china.jpg"):  # four images: one is held out, three calibrate
        Image.open(ROOT / "zoo" / "assets" / photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"m{photo}")
    calibrate, held_out = user_split(tmp_path / "calib")
    assert (len(calibrate), len(held_out)) == (3, 1) and not set(calibrate) & set(held_out)
    again = export_bundle("efficientnet_lite0", tmp_path / "b2", formats=("onnx", "onnx-int8"),
                          options=FormatOptions(calibration=tmp_path / "calib"))
    assert again.manifest.variants["int8"]["top1_on"] == f"1 held-out images of {tmp_path / 'calib'}"
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, message in [(empty, "holds no images"), (tmp_path / "missing", "is not a folder")]:
        code = main(["export", "efficientnet_lite0", "--format", "onnx-int8", "--calibration", str(bad),
                     "--out", str(tmp_path / "c")])
        captured = capsys.readouterr()
        assert code == 2 and message in captured.err and "Traceback" not in captured.err
        assert not (tmp_path / "c").exists()  # checked before exporting anything


def test_default_calibration_photos_are_hash_checked(monkeypatch) -> None:
    from export import calibration
    from zoo.errors import InputError
    from zoo.registry import get_model

    origin, name, _ = calibration.CALIBRATION_PHOTOS[0]
    monkeypatch.setattr(calibration, "CALIBRATION_PHOTOS", ((origin, name, "0" * 64),))
    with pytest.raises(InputError, match=f"{name} has sha256 .*, expected 0+"):
        calibration.calibration_images(get_model("efficientnet_lite0").input)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "all-minilm-l6-v2"])
def test_triton_repository_layout(all_formats, name: str) -> None:
    from export.variants import parse_triton_config

    folder = all_formats[name] / "triton" / name
    config = parse_triton_config((folder / "config.pbtxt").read_text())
    assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    manifest = read_manifest(all_formats[name])
    assert [i.name for i in config.input] == [i.name for i in manifest.inputs]
    assert (folder / "1" / "model.onnx").samefile(all_formats[name] / "model.onnx")  # a hard link: no second copy
    with pytest.raises(ExportError, match="does not parse"):
        parse_triton_config((folder / "config.pbtxt").read_text().replace("max_batch_size", "max_batch_sise"))


def test_layout_copies_fall_back_to_copying_where_links_fail(tmp_path: Path, monkeypatch) -> None:
    import os

    from export.files import link_or_copy

    (tmp_path / "model.onnx").write_bytes(b"weights")
    link_or_copy(tmp_path / "model.onnx", tmp_path / "linked.onnx")
    assert (tmp_path / "linked.onnx").samefile(tmp_path / "model.onnx")

    def cross_device(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    link_or_copy(tmp_path / "model.onnx", tmp_path / "copied.onnx")
    assert (tmp_path / "copied.onnx").read_bytes() == b"weights"
    assert not (tmp_path / "copied.onnx").samefile(tmp_path / "model.onnx")


def _bf16_hardware() -> bool:
    from serve.openvino_engine import bf16_hardware

    return bf16_hardware()


def test_report_lists_every_format(all_formats) -> None:
    rows = json.loads((all_formats["efficientnet_lite0"] / "report.json").read_text())
    pairs = ["openvino bf16", "openvino int8"]  # the OpenVINO pairs the openvino format checked, after it
    assert [r["format"] for r in rows] == [*FORMAT_NAMES, *pairs[0 if _bf16_hardware() else 1:]]
    assert all(r["status"] == "ok" for r in rows)
    markdown = (all_formats["efficientnet_lite0"] / "report.md").read_text()
    assert markdown.startswith("| format | file | size MB |") and "| onnx-fp16 | model.fp16.onnx |" in markdown


def test_a_failing_format_is_left_out_and_reported(tmp_path: Path, monkeypatch, capsys) -> None:
    from zoo import tolerances
    from zoo_cli import main

    monkeypatch.setitem(tolerances.EXPORT_ATOL, "float16", 1e-9)  # no fp16 model can pass this
    # (not --format all: the SavedModel adds 10 s of CI and nothing here; formats after the failing one run)
    code = main(["export", "efficientnet_lite0", "--format", "onnx-fp16", "--format", "onnx-int8", "--format", "triton",
                 "--out", str(tmp_path / "b")])
    captured = capsys.readouterr()
    assert code == 1 and "1 format(s) failed" in captured.err and "onnx-fp16" in captured.err
    manifest = read_manifest(tmp_path / "b")  # the other formats are written, verified and usable
    assert list(manifest.variants) == ["int8"] and not (tmp_path / "b" / "model.fp16.onnx").exists()
    assert (tmp_path / "b" / "triton" / "efficientnet_lite0" / "config.pbtxt").is_file()
    rows = json.loads((tmp_path / "b" / "report.json").read_text())
    assert [(r["format"], r["status"].split(":")[0]) for r in rows] == [
        ("onnx", "ok"), ("onnx-fp16", "failed"), ("onnx-int8", "ok"), ("triton", "ok")]


def test_weights_over_the_protobuf_limit_go_to_external_data(tmp_path: Path, monkeypatch) -> None:
    import serve
    from export import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)  # as if EfficientNet-Lite0 were over 2 GB
    result = export_bundle("efficientnet_lite0", tmp_path / "b", formats=("onnx", "onnx-fp16", "onnx-int8", "triton"))
    bundle = result.directory
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "triton/efficientnet_lite0/1/model.onnx"):
        graph, data = bundle / name, bundle / f"{name}.data"
        assert graph.stat().st_size < 1_000_000 < data.stat().st_size and f"{name}.data" in result.manifest.files
    assert all(row["status"] == "ok" for row in result.formats) and result.formats[0]["size_mb"] > 18
    photo = str(ROOT / "zoo" / "assets" / "flower.jpg")
    for variant in ("fp32", "fp16", "int8"):
        assert serve.load(bundle, variant=variant).predict([photo])[0]["top_k"][0]["label"] == "daisy"


def test_static_shape_bundles_run_any_batch(all_formats, tmp_path: Path) -> None:
    """--static-shape: no dynamic axis in any format; serve splits and pads to the fixed batch."""
    import serve
    from export.variants import parse_triton_config

    photos = [str(ROOT / "zoo" / "assets" / name) for name in ("flower.jpg", "china.jpg", "flower.jpg")]
    image = export_bundle("efficientnet_lite0", tmp_path / "image", options=FormatOptions(static_shape=(2,)),
                          formats=("onnx", "onnx-int8", "savedmodel", "triton"))
    assert all(row["status"] == "ok" for row in image.formats)
    assert image.manifest.inputs[0].shape == [2, 3, 224, 224]
    assert image.manifest.artifacts["savedmodel"]["inputs"][0]["shape"] == [2, 3, 224, 224]
    config = parse_triton_config((image.directory / "triton" / "efficientnet_lite0" / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [2, 3, 224, 224]
    onnxruntime = serve.SessionConfig(engine="onnxruntime")  # the same numbers (auto may take OpenVINO's bf16)
    dynamic, fixed = serve.load(all_formats["efficientnet_lite0"], config=onnxruntime), serve.load(image.directory)
    for batch in (photos[:1], photos):  # 1 and 3 inputs on a batch-2 model
        a = dynamic.run(dynamic.preprocess(batch))
        b = fixed.run(fixed.preprocess(batch))
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4
    assert fixed.predict(photos)[1]["top_k"][0]["label"] == "palace"

    text = export_bundle("all-minilm-l6-v2", tmp_path / "text", options=FormatOptions(static_shape=(2, 64)))
    assert [i.shape for i in text.manifest.inputs] == [[2, 64], [2, 64]]
    texts = ["a short text", "a much longer sentence about fixed shapes and padding", "ok"]
    a = np.array([r["embedding"] for r in serve.load(all_formats["all-minilm-l6-v2"], config=onnxruntime).predict(texts)])
    b = np.array([r["embedding"] for r in serve.load(text.directory).predict(texts)])
    assert np.abs(a - b).max() < 1e-5  # padding to 64 with attention_mask 0 changes nothing


def test_triton_config_is_the_model_config_tritons_docs_write() -> None:
    """The message against a config.pbtxt written by hand in the form Triton's model-configuration docs
    use: dynamic batch (batch axis left out of dims, -1 for the sequence), and a fixed batch (max_batch_size
    0, full shapes, no dynamic batching)."""
    pytest.importorskip("tritonclient.grpc")
    from serve.manifest import TensorSpec
    from export.variants import parse_triton_config, triton_config, triton_config_text

    text_inputs = [TensorSpec("input_ids", "int64", ["batch", "sequence"]), TensorSpec("attention_mask", "int64", ["batch", "sequence"])]
    dynamic = triton_config("minilm", text_inputs, [TensorSpec("embedding", "float32", ["batch", 384])])
    assert dynamic == parse_triton_config('''
        name: "minilm"  platform: "onnxruntime_onnx"  max_batch_size: 32
        input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
                { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]
        output [ { name: "embedding" data_type: TYPE_FP32 dims: [ 384 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 5000 }
        instance_group [ { count: 1 kind: KIND_GPU } ]''')
    fixed = triton_config("lite0", [TensorSpec("pixel_values", "float32", [2, 3, 224, 224])],
                          [TensorSpec("logits", "float16", [2, 1000])])
    assert fixed == parse_triton_config('''
        name: "lite0" platform: "onnxruntime_onnx" max_batch_size: 0
        input [ { name: "pixel_values" data_type: TYPE_FP32 dims: [ 2, 3, 224, 224 ] } ]
        output [ { name: "logits" data_type: TYPE_FP16 dims: [ 2, 1000 ] } ]
        instance_group [ { count: 1 kind: KIND_GPU } ]''')
    assert parse_triton_config(triton_config_text(fixed)) == fixed
    assert triton_config_text(fixed).startswith("# KIND_GPU needs a GPU; on a CPU-only Triton server change it to KIND_CPU.\n")
