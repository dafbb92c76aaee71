"""The torch-free runtime: end-to-end agreement with torch on real photos and texts, preprocessing
equivalence, import hygiene, tamper evidence, provider reporting and bad input."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import serve
from serve.manifest import ImagePreprocessing
from serve.preprocess import preprocess_image
from zoo.preprocess import preprocess_images as torch_preprocess
from zoo.reference import SENTENCES, asset_path
from zoo.registry import get_model

PHOTOS = [asset_path("flower.jpg"), asset_path("china.jpg")]


def _spec(name: str) -> ImagePreprocessing:
    spec = get_model(name).input
    return ImagePreprocessing(resize=spec.resize, crop=spec.crop, interpolation=spec.interpolation,
                              mean=list(spec.mean), std=list(spec.std))


def test_predictor_matches_torch_on_real_photos(bundles, torch_models) -> None:
    """Same photo, serve (numpy/PIL + onnxruntime) vs zoo (torchvision + torch): logits within 1e-4."""
    predictor = serve.load(bundles["efficientnet_lite0"])
    entry = get_model("efficientnet_lite0")
    served = predictor.run(predictor.preprocess(PHOTOS))
    with torch.inference_mode():
        expected = torch_models["efficientnet_lite0"](torch_preprocess(entry.input, PHOTOS)).numpy()
    assert np.abs(served - expected).max() <= 1e-4
    results = predictor.predict(PHOTOS, top_k=3)
    assert [r["top_k"][0]["label"] for r in results] == ["daisy", "palace"]
    probabilities = torch.softmax(torch.from_numpy(expected), -1).numpy()
    for result, row in zip(results, probabilities):
        assert result["top_k"][0]["index"] == int(row.argmax())
        assert abs(result["top_k"][0]["score"] - float(row.max())) <= 1e-4


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(640, 427), (300, 301), (257, 1000), (224, 224)])
def test_numpy_preprocessing_equals_torchvision(size, interpolation) -> None:
    rng = np.random.default_rng(size[0] * size[1])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    entry = get_model("resnet18")
    spec = _spec("resnet18")
    import dataclasses

    spec = dataclasses.replace(spec, interpolation=interpolation)
    torch_spec = dataclasses.replace(entry.input, interpolation=interpolation)
    expected = torch_preprocess(torch_spec, [image])[0].numpy()
    actual = preprocess_image(spec, image)
    assert actual.shape == expected.shape == (3, 224, 224)
    assert np.abs(actual - expected).max() <= 1e-5


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_other_image_modes_are_converted_like_training(mode: str) -> None:
    rgb = Image.open(PHOTOS[0]).convert("RGB").resize((320, 240))
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)).convert("I;16")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
    data = buffer.getvalue()
    actual = preprocess_image(_spec("efficientnet_lite0"), data)
    expected = torch_preprocess(get_model("efficientnet_lite0").input, [data])[0].numpy()
    assert np.abs(actual - expected).max() <= 1e-5


def test_exif_rotation_is_applied() -> None:
    upright = Image.open(PHOTOS[0]).convert("RGB").resize((300, 200))
    rotated = upright.transpose(Image.Transpose.ROTATE_90)  # stored sideways (90° counter-clockwise) ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with the orientation tag that says "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", exif=exif, quality=95)
    spec = _spec("efficientnet_lite0")
    from_exif = preprocess_image(spec, buffer.getvalue())
    assert from_exif.shape == (3, 224, 224)
    reference = preprocess_image(spec, upright)
    ignoring_exif = preprocess_image(spec, rotated)
    assert np.abs(from_exif - reference).mean() < 0.05  # JPEG noise only
    assert np.abs(ignoring_exif - reference).mean() > 0.2
    tagged = Image.open(io.BytesIO(buffer.getvalue()))  # a PIL image passed in is rotated too, never modified
    assert np.abs(preprocess_image(spec, tagged) - from_exif).max() == 0
    assert tagged.size == rotated.size and tagged.getexif()[0x0112] == 6


def test_text_predictor_matches_torch(bundles, torch_models) -> None:
    predictor = serve.load(bundles["all-minilm-l6-v2"])
    results = predictor.predict(list(SENTENCES))
    served = np.array([r["embedding"] for r in results])
    from zoo.preprocess import load_tokenizer, tokenize

    entry = get_model("all-minilm-l6-v2")
    tokenizer = load_tokenizer(bundles["all-minilm-l6-v2"] / "tokenizer.json", entry.input)
    with torch.inference_mode():
        expected = torch_models["all-minilm-l6-v2"](**tokenize(tokenizer, SENTENCES)).numpy()
    assert np.abs(served - expected).max() <= 1e-4
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert [r["input"] for r in results] == list(SENTENCES)
    # batching does not change results (padding is masked)
    one_by_one = np.array([predictor.predict([s])[0]["embedding"] for s in SENTENCES])
    assert np.abs(one_by_one - served).max() <= 1e-5


def test_import_serve_leaves_torch_out() -> None:
    code = ("import sys, serve; p = serve.load; "
            "bad = [m for m in ('torch', 'tensorflow', 'zoo', 'export') if m in sys.modules]; print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_predict_from_bundle_alone_imports_no_torch(bundles) -> None:
    code = ("import sys, json, serve; p = serve.load(sys.argv[1]); r = p.predict([sys.argv[2]], top_k=1); "
            "print(json.dumps([r[0]['top_k'][0]['label'], [m for m in ('torch', 'tensorflow', 'zoo', 'export') "
            "if m in sys.modules]]))")
    result = subprocess.run([sys.executable, "-c", code, str(bundles["efficientnet_lite0"]), str(PHOTOS[0])],
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == ["daisy", []]


def test_text_bundles_run_without_pillow_and_image_bundles_ask_for_it(bundles) -> None:
    """A text server installs zoo[cpu,text] (no pillow: ~23 MB less); an image bundle then names the extra."""
    block = "import sys; sys.modules['PIL'] = None; import json, serve; "  # `import PIL` now raises ImportError
    text = ("p = serve.load(sys.argv[1]); r = p.predict(['pillow is not needed here'])[0]; "
            "print(json.dumps([len(r['embedding']), 'PIL.Image' in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", block + text, str(bundles["all-minilm-l6-v2"])],
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == [384, False]
    image = ("try:\n    serve.load(sys.argv[1])\nexcept serve.BundleError as exc:\n    print(exc)")
    result = subprocess.run([sys.executable, "-c", block + "\n" + image, str(bundles["efficientnet_lite0"])],
                            capture_output=True, text=True, check=True)
    assert "pillow is missing" in result.stdout and "pip install zoo[image]" in result.stdout


def test_modified_bundle_is_refused(bundles, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundles["efficientnet_lite0"], copy)
    with open(copy / "model.onnx", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\x00\x01")
    with pytest.raises(serve.BundleError, match="model.onnx .* does not match the sha256"):
        serve.load(copy)
    with pytest.raises(serve.BundleError, match="onnxruntime could not load"):
        serve.load(copy, verify=False)  # development opt-out: the damaged model still fails clearly
    shutil.copyfile(bundles["efficientnet_lite0"] / "model.onnx", copy / "model.onnx")
    (copy / "validation.json").write_text("{}")
    with pytest.raises(serve.BundleError, match="validation.json"):
        serve.load(copy)
    assert serve.load(copy, verify=False).predict([PHOTOS[0]])[0]["top_k"][0]["label"] == "daisy"


def _copy_with_manifest(source: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of a bundle and its manifest as a dict, to be edited and written back with _save."""
    copy = tmp_path / "bundle"
    shutil.copytree(source, copy)
    return copy, json.loads((copy / "manifest.json").read_text())


def _save(copy: Path, manifest: dict) -> Path:
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_manifest_errors_name_the_field(bundles, tmp_path: Path) -> None:
    copy, manifest = _copy_with_manifest(bundles["efficientnet_lite0"], tmp_path)
    manifest["preprocessing"]["crop"] = "224"
    with pytest.raises(serve.BundleError, match=r"preprocessing.crop: '224' is not of type 'integer', 'null'"):
        serve.load(_save(copy, manifest))
    manifest["format_version"] = 99
    with pytest.raises(serve.BundleError, match="version 99 is not supported"):
        serve.load(_save(copy, manifest))


def test_cuda_listed_but_unusable_is_reported_truthfully(bundles, monkeypatch) -> None:
    """What onnxruntime-gpu does on a CPU machine: CUDA is 'available' but the session runs on CPU."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    predictor = serve.load(bundles["efficientnet_lite0"])
    assert predictor.provider == "CPUExecutionProvider"
    assert "did not initialise" in predictor.provider_line
    with pytest.raises(serve.ProviderError, match="device 'cuda' requested"):
        serve.load(bundles["efficientnet_lite0"], device="cuda")


def test_auto_variant_takes_fp16_only_on_a_working_cuda_session(all_formats, monkeypatch) -> None:
    """On CPU `variant="auto"` is never fp16 (onnxruntime runs fp16 graphs slower there): onnxruntime's is
    fp32 (engine auto may take OpenVINO's bf16: tests/test_engines.py). Where CUDA is listed but does not
    initialise, the fp16 attempt lands on CPU and the predictor falls back to the CPU's choice."""
    import onnxruntime as ort

    bundle = all_formats["efficientnet_lite0"]
    onnxruntime = serve.SessionConfig(engine="onnxruntime")
    assert "fp16" in serve.load(bundle, variant="fp16").manifest.variants
    assert serve.load(bundle, config=onnxruntime).variant == "fp32"
    assert "variant fp32" in serve.load(bundle, config=onnxruntime).provider_line
    assert serve.load(bundle).variant in ("fp32", "bf16")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    predictor = serve.load(bundle, config=onnxruntime)
    assert (predictor.variant, predictor.provider) == ("fp32", "CPUExecutionProvider")
    assert serve.load(bundle).variant in ("fp32", "bf16")
    assert serve.load(bundle, variant="fp16").variant == "fp16"  # asked for explicitly: kept


def test_io_binding_gives_the_same_outputs(bundles) -> None:
    """The IO-binding path (on by default on CUDA only) run on CPU: same numbers as session.run."""
    bound = serve.load(bundles["efficientnet_lite0"], config=serve.SessionConfig(io_binding="on"))
    plain = serve.load(bundles["efficientnet_lite0"], config=serve.SessionConfig(io_binding="off"))
    assert bound.io_binding and not plain.io_binding and "IO binding" in bound.provider_line
    feeds = plain.preprocess([str(p) for p in PHOTOS])
    assert np.array_equal(bound.run(feeds), plain.run(feeds))
    with pytest.raises(serve.ProviderError, match="io_binding 'yes'"):
        serve.load(bundles["efficientnet_lite0"], config=serve.SessionConfig(io_binding="yes"))


@pytest.mark.parametrize(("item", "message"), [
    (b"definitely not an image", "not a readable image"),
    (Image.open(PHOTOS[0]).__class__, "unsupported image input"),
    (np.zeros((10, 10, 3), dtype=np.float32), "expected a uint8 image"),
    ("/no/such/file.jpg", "does not exist"),
])
def test_bad_image_inputs(bundles, item, message: str) -> None:
    predictor = serve.load(bundles["efficientnet_lite0"])
    with pytest.raises(serve.InputError, match=message):
        predictor.predict([item])


def test_truncated_jpeg_is_rejected(bundles) -> None:
    data = asset_path("flower.jpg").read_bytes()
    with pytest.raises(serve.InputError, match="not a readable image"):
        serve.load(bundles["efficientnet_lite0"]).predict([data[: len(data) // 3]])


def test_array_and_pil_inputs(bundles) -> None:
    predictor = serve.load(bundles["efficientnet_lite0"])
    image = Image.open(PHOTOS[0])
    from_path, from_pil, from_array = predictor.predict([PHOTOS[0], image, np.asarray(image.convert("RGB"))])
    assert from_path["top_k"] == from_pil["top_k"] == from_array["top_k"]


def test_long_text_is_truncated_with_a_warning(bundles, caplog) -> None:
    predictor = serve.load(bundles["all-minilm-l6-v2"])
    with caplog.at_level("WARNING", logger="serve"):
        result = predictor.predict(["short", "word " * 1000, ""])
    assert len(result) == 3 and all(len(r["embedding"]) == 384 for r in result)
    assert [r.message for r in caplog.records] == ["input 1: text longer than max_length=256 tokens was truncated"]


def test_tokenizer_outside_the_bundle_is_refused(bundles, tmp_path: Path) -> None:
    copy, manifest = _copy_with_manifest(bundles["all-minilm-l6-v2"], tmp_path)
    manifest["preprocessing"]["tokenizer"] = "../../etc/tokenizer.json"
    with pytest.raises(serve.BundleError, match="preprocessing.tokenizer"):
        serve.load(_save(copy, manifest))
    manifest["preprocessing"]["tokenizer"] = "tokenizer.json"
    for name in ("../outside.json", "/etc/passwd", "sub/../../outside.json"):
        changed = {**manifest, "files": {**manifest["files"], name: "0" * 64}}
        with pytest.raises(serve.BundleError, match="points outside the bundle folder"):
            serve.load(_save(copy, changed))


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((1, 3, 224, 224), dtype=np.float64), "dtype float64"),
    (np.zeros((3, 224, 224), dtype=np.float32), "3 dimensions"),
    (np.zeros((1, 4, 224, 224), dtype=np.float32), "size 4 on axis 1"),
    (np.zeros((0, 3, 224, 224), dtype=np.float32), "empty batch"),
    ([[1.0]], "expected a numpy array"),
])
def test_raw_inputs_are_checked_against_the_manifest(bundles, array, message: str) -> None:
    predictor = serve.load(bundles["efficientnet_lite0"])
    with pytest.raises(serve.InputError, match=message):
        predictor.run({"pixel_values": array})
    with pytest.raises(serve.InputError, match="missing input"):
        predictor.run({})


def test_text_inputs_must_be_strings(bundles) -> None:
    predictor = serve.load(bundles["all-minilm-l6-v2"])
    with pytest.raises(serve.InputError, match="expected a str"):
        predictor.predict([b"bytes"])
    with pytest.raises(serve.InputError, match="no inputs"):
        predictor.predict([])


def test_warm_up_runs_the_largest_shapes(bundles) -> None:
    for name in ("efficientnet_lite0", "all-minilm-l6-v2"):
        predictor = serve.load(bundles[name])
        predictor.warm_up(3)  # must not raise: every input at batch 3 (text at its max_length)
    with pytest.raises(serve.InputError):
        predictor.warm_up(0)


def test_the_arena_shrinks_after_text_runs_only_by_default() -> None:
    """Image models run the shapes they warmed up at (shrinking after each run cost +65 % at
    EfficientNet-Lite0 batch 8); text shapes change run to run. An explicit setting wins."""
    assert serve.SessionConfig().releases_memory("text") and not serve.SessionConfig().releases_memory("image")
    assert serve.SessionConfig(release_memory=True).releases_memory("image")
    assert not serve.SessionConfig(release_memory=False).releases_memory("text")
