"""Property-based tests: registry and manifest parsing only ever fail with their own typed error
(never a KeyError/TypeError traceback), and preprocessing maps any image to a finite tensor of the
right shape and range."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from serve.errors import BundleError, InputError, LimitError
from serve.limits import DEFAULT_LIMITS
from serve.manifest import ImagePreprocessing, parse_manifest
from serve.preprocess import preprocess_image
from zoo.errors import RegistryError
from zoo.registry import shipped_registry_path, validate_document

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
REGISTRY = json.loads(shipped_registry_path().read_text())
SMALL_REGISTRY = {**REGISTRY, "models": REGISTRY["models"][:3]}
MANIFEST = {
    "bundle_format": "zoo-bundle", "format_version": 1, "model_id": "m", "task": "image-classification",
    "modality": "image", "model_file": "model.onnx", "opset": 18,
    "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 224, 224]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
    "preprocessing": {"kind": "image", "resize": 256, "crop": 224, "interpolation": "bilinear",
                      "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "postprocessing": {"kind": "classification", "labels": ["a", "b"]},
    "files": {"model.onnx": "0" * 64}, "source": {}, "producer": {},
}


def _paths(document, prefix=()):
    """Every (path) to a value inside a JSON document."""
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document[:3]):
            yield from _paths(value, prefix + (index,))


def _mutate(document, path, value, delete: bool):
    mutated = copy.deepcopy(document)
    if not path:
        return value
    node = mutated
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    return mutated


MANIFEST_PATHS = list(_paths(MANIFEST))
REGISTRY_PATHS = list(_paths(SMALL_REGISTRY))


@given(st.sampled_from(MANIFEST_PATHS), JSON, st.booleans())
@settings(max_examples=300, deadline=None)
def test_manifest_mutations_fail_only_with_bundle_errors(path, value, delete) -> None:
    try:
        parse_manifest(_mutate(MANIFEST, path, value, delete))
    except BundleError as exc:
        assert "manifest.json" in str(exc)


@given(JSON)
@settings(max_examples=200, deadline=None)
def test_arbitrary_json_is_not_a_manifest(value) -> None:
    with pytest.raises(BundleError):
        parse_manifest(value)


@given(st.sampled_from(REGISTRY_PATHS), JSON, st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_registry_mutations_fail_only_with_registry_errors(path, value, delete) -> None:
    try:
        validate_document(_mutate(SMALL_REGISTRY, path, value, delete))
    except RegistryError as exc:  # one that says where: the top-level key the mutation touched
        assert str(exc).startswith("registry") and (not path or str(path[0]) in str(exc)), (path, str(exc))


SPEC = ImagePreprocessing(resize=256, crop=224, interpolation="bicubic", mean=[0.485, 0.456, 0.406],
                          std=[0.229, 0.224, 0.225])


@given(st.integers(1, 900), st.integers(1, 900), st.sampled_from(["RGB", "L", "RGBA", "P", "CMYK", "I;16", "LA", "1"]),
       st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_any_image_preprocesses_to_a_finite_tensor(width, height, mode, seed) -> None:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("I;16", "CMYK") else "PNG")
    if max(width, height) > DEFAULT_LIMITS.max_aspect_ratio * min(width, height):
        with pytest.raises(LimitError, match="--max-aspect-ratio"):  # refused before decoding, by its header
            preprocess_image(SPEC, buffer.getvalue())
        return
    out = preprocess_image(SPEC, buffer.getvalue())
    assert out.shape == (3, 224, 224) and out.dtype == np.float32 and np.isfinite(out).all()
    low = (0 - np.array(SPEC.mean)) / np.array(SPEC.std)
    high = (1 - np.array(SPEC.mean)) / np.array(SPEC.std)
    assert (out.min(axis=(1, 2)) >= low - 1e-5).all() and (out.max(axis=(1, 2)) <= high + 1e-5).all()


@given(st.binary(max_size=2000))
@settings(max_examples=200, deadline=None)
def test_random_bytes_are_rejected_cleanly(data: bytes) -> None:
    try:
        preprocess_image(SPEC, data)
    except InputError as exc:
        assert "image" in str(exc)


def test_manifest_schema_agrees_with_the_runtime_and_every_written_manifest_passes(tmp_path) -> None:
    """manifest.schema.json is package data next to serve.manifest, names the aggregations serve.entities
    decodes, and accepts the manifest a Manifest writes (the round trip is exact)."""
    import tomllib

    from serve.entities import AGGREGATIONS
    from serve.manifest import SCHEMA_FILE, write_manifest

    schema = json.loads(SCHEMA_FILE.read_text())
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert SCHEMA_FILE.name in pyproject["tool"]["setuptools"]["package-data"]["serve"]
    assert set(schema["properties"]["postprocessing"]["properties"]["aggregation"]["enum"]) == {*AGGREGATIONS, None}
    manifest = parse_manifest(MANIFEST)
    written = json.loads(write_manifest(tmp_path, manifest).read_text())
    assert parse_manifest(written) == manifest


def test_version_1_manifests_are_read_as_version_2() -> None:
    """Bundles written before the artifacts section still load: their variants and TensorFlow records move
    under their formats' names, a variant keeping its name; what is written again is version 2."""
    old = {**MANIFEST, "files": {"model.onnx": "0" * 64, "model.fp16.onnx": "1" * 64},
           "variants": {"fp16": {"file": "model.fp16.onnx", "max_abs_diff": 0.01}},
           "tensorflow": {"savedmodel": {"directory": "savedmodel"}, "tf_serving": {"model_name": "m", "version": 1}}}
    manifest = parse_manifest(old)
    assert manifest.format_version == 2 and set(manifest.artifacts) == {"onnx-fp16", "savedmodel", "tf-serving"}
    assert manifest.variants == {"fp16": {"file": "model.fp16.onnx", "max_abs_diff": 0.01, "variant": "fp16"}}
    document = json.loads(manifest.to_json())
    assert "variants" not in document and "tensorflow" not in document and parse_manifest(document) == manifest
    with pytest.raises(BundleError, match=r"variants.fp16.file: expected the variant's file name"):
        parse_manifest({**old, "variants": {"fp16": {}}})
    with pytest.raises(BundleError, match=r"artifacts.onnx-int8.file: 'model.int8.onnx' is not one of the bundle's files"):
        parse_manifest({**document, "artifacts": {"onnx-int8": {"variant": "int8", "file": "model.int8.onnx"}}})
    with pytest.raises(BundleError, match=r"version 3 is not supported \(this runtime reads 1 and 2\)"):
        parse_manifest({**document, "format_version": 3})
