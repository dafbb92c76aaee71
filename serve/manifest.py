"""The bundle manifest: the one format shared by the exporter (writes it) and the runtime
(reads it). Versioned; parsing names the exact field that is wrong."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from serve.entities import AGGREGATIONS
from serve.errors import BundleError
from serve.files import sha256_file, write_text_atomic
from serve.kinds import KIND_CLASSES

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "zoo-bundle"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, int64, ...
    shape: list[int | str]  # str = a named dynamic axis


@dataclass(frozen=True)
class ImagePreprocessing:
    resize: int | None  # None: the image at its own size (detectors resize and normalise inside the graph)
    crop: int | None  # None: the whole resized image, any aspect ratio (segmentation)
    interpolation: Literal["bilinear", "bicubic"]
    mean: list[float]
    std: list[float]
    kind: Literal["image"] = "image"


@dataclass(frozen=True)
class TextPreprocessing:
    tokenizer: str  # file in the bundle
    max_length: int
    pad_token: str
    pad_id: int
    kind: Literal["text"] = "text"


POSTPROCESSING_KINDS = tuple(KIND_CLASSES)  # each read by its serve.kinds.OutputKind


@dataclass(frozen=True)
class Postprocessing:
    # segmentation: NCHW per-pixel logits; detection: boxes, scores, labels (labels[0] is the background);
    # token-classification: label logits per token (IOB2 tags), grouped into entities by serve.entities;
    # question-answering: start and end logits per token of question + context windows (serve.qa)
    kind: str  # one of POSTPROCESSING_KINDS
    labels: list[str] = field(default_factory=list)
    activation: Literal["softmax", "sigmoid"] = "softmax"  # over the logits, or each one's (binary head: P(labels[1]))
    pooling: str | None = None
    normalized: bool = False
    dim: int | None = None
    score_threshold: float | None = None  # what scores below it (detections, labels) is not returned by default
    aggregation: str | None = None  # token-classification: "first" or "simple" (serve.entities)
    stride: int | None = None  # question-answering: tokens shared by neighbouring context windows
    max_answer_tokens: int | None = None  # question-answering: the longest answer span considered


@dataclass(frozen=True)
class Manifest:
    model_id: str
    task: str
    modality: Literal["image", "text"]
    model_file: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: ImagePreprocessing | TextPreprocessing
    postprocessing: Postprocessing
    files: dict[str, str]  # every other bundle file -> sha256
    source: dict[str, Any]  # upstream model: id, origin, licence, file hashes
    producer: dict[str, str]  # package versions that made the bundle
    # Other precisions of the same model: {"fp16": {"file": ..., "max_abs_diff": ..., "top1_agreement": ...}}
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # TensorFlow exports (not loaded by serve): {"savedmodel": {directory, signature, inputs, outputs, ...},
    # "tf_serving": {model_base_path, model_name, version}}
    tensorflow: dict[str, dict[str, Any]] = field(default_factory=dict)
    bundle_format: str = BUNDLE_FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        document = asdict(self)
        return json.dumps(document, indent=1) + "\n"


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically."""
    path = directory / MANIFEST_NAME
    write_text_atomic(path, manifest.to_json())
    return path


class _Reader:
    """Typed access to a JSON object that reports `manifest.json: <path>: expected ..., found ...`."""

    def __init__(self, data: Any, path: str):
        self.data, self.path = data, path
        if not isinstance(data, dict):
            self.fail("", f"expected an object, found {type(data).__name__}")

    def fail(self, key: str, message: str) -> None:
        where = f"{self.path}.{key}" if key else self.path
        raise BundleError(f"{MANIFEST_NAME}: {where.lstrip('.') or '<top>'}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is not ...:
                return default
            self.fail(key, "missing field")
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(key, f"expected {names}, found {type(value).__name__} {value!r:.40}")
        return value

    def items(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> list[Any]:
        """A list field whose every item has type `kind` (bool never counts as a number)."""
        values = self.get(key, list, default)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        for index, value in enumerate(values):
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                self.fail(f"{key}[{index}]", f"expected {' or '.join(k.__name__ for k in kinds)}, found {value!r:.40}")
        return list(values)

    def child(self, key: str) -> "_Reader":
        return _Reader(self.get(key, dict), f"{self.path}.{key}")


DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8", "bool")


def _tensors(reader: _Reader, key: str) -> list[TensorSpec]:
    items = reader.get(key, list)
    specs = []
    for index, item in enumerate(items):
        r = _Reader(item, f"{reader.path}.{key}[{index}]")
        spec = TensorSpec(r.get("name", str), r.get("dtype", str), r.items("shape", (int, str)))
        if spec.dtype not in DTYPES:
            r.fail("dtype", f"expected one of {', '.join(DTYPES)}, found {spec.dtype!r}")
        if not spec.shape or any(isinstance(d, int) and d < 1 for d in spec.shape):
            r.fail("shape", f"expected at least one axis, each a positive size or a name, found {spec.shape}")
        specs.append(spec)
    if not specs:
        reader.fail(key, "expected at least one tensor")
    return specs


def parse_manifest(data: Any) -> Manifest:
    """A Manifest from parsed JSON; BundleError names the first wrong field."""
    top = _Reader(data, "")
    if top.get("bundle_format", str) != BUNDLE_FORMAT:
        top.fail("bundle_format", f"expected {BUNDLE_FORMAT!r}; this folder was not written by zoo export")
    version = top.get("format_version", int)
    if version != FORMAT_VERSION:
        top.fail("format_version", f"version {version} is not supported (this runtime reads {FORMAT_VERSION}); "
                                   "re-export the bundle or upgrade serve")
    pre = top.child("preprocessing")
    modality = top.get("modality", str)
    if modality not in ("image", "text"):
        top.fail("modality", f"expected 'image' or 'text', found {modality!r}")
    if pre.get("kind", str) != modality:
        pre.fail("kind", f"expected {modality!r} to match the bundle's modality")
    if modality == "image":
        preprocessing: ImagePreprocessing | TextPreprocessing = ImagePreprocessing(
            resize=pre.get("resize", (int, type(None))), crop=pre.get("crop", (int, type(None))), interpolation=pre.get("interpolation", str),
            mean=[float(v) for v in pre.items("mean", (int, float))], std=[float(v) for v in pre.items("std", (int, float))])
        if preprocessing.interpolation not in ("bilinear", "bicubic"):
            pre.fail("interpolation", f"expected 'bilinear' or 'bicubic', found {preprocessing.interpolation!r}")
        if len(preprocessing.mean) != 3 or len(preprocessing.std) != 3 or min(preprocessing.std) <= 0:
            pre.fail("mean", "expected three means and three positive stds")
        for key in ("resize", "crop"):
            if getattr(preprocessing, key) is not None and getattr(preprocessing, key) < 1:
                pre.fail(key, f"expected a positive size in pixels or null, found {getattr(preprocessing, key)}")
    else:
        preprocessing = TextPreprocessing(tokenizer=pre.get("tokenizer", str), max_length=pre.get("max_length", int),
                                          pad_token=pre.get("pad_token", str), pad_id=pre.get("pad_id", int))
        if preprocessing.max_length < 1:
            pre.fail("max_length", f"expected a positive number of tokens, found {preprocessing.max_length}")
        if preprocessing.pad_id < 0:
            pre.fail("pad_id", f"expected a token id (>= 0), found {preprocessing.pad_id}")
    post = top.child("postprocessing")
    kind = post.get("kind", str)
    if kind not in POSTPROCESSING_KINDS:
        post.fail("kind", f"expected one of {', '.join(map(repr, POSTPROCESSING_KINDS))}, found {kind!r}")
    aggregation = post.get("aggregation", (str, type(None)), None)
    if aggregation is not None and aggregation not in AGGREGATIONS:
        post.fail("aggregation", f"expected {' or '.join(map(repr, AGGREGATIONS))}, found {aggregation!r}")
    activation = post.get("activation", str, "softmax")
    if activation not in ("softmax", "sigmoid"):
        post.fail("activation", f"expected 'softmax' or 'sigmoid', found {activation!r}")
    postprocessing = Postprocessing(kind=kind, labels=post.items("labels", str, []), activation=activation,
                                    pooling=post.get("pooling", (str, type(None)), None),
                                    normalized=post.get("normalized", bool, False),
                                    dim=post.get("dim", (int, type(None)), None),
                                    score_threshold=post.get("score_threshold", (int, float, type(None)), None),
                                    aggregation=aggregation, stride=post.get("stride", (int, type(None)), None),
                                    max_answer_tokens=post.get("max_answer_tokens", (int, type(None)), None))
    if kind == "question-answering" and (not postprocessing.stride or not postprocessing.max_answer_tokens):
        post.fail("stride", "a question-answering bundle needs a positive stride and max_answer_tokens")
    files = top.get("files", dict)
    for name, digest in files.items():
        if not isinstance(digest, str) or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            top.fail(f"files.{name}", "expected a sha256 hex digest")
    return Manifest(
        model_id=top.get("model_id", str), task=top.get("task", str), modality=modality,
        model_file=top.get("model_file", str), opset=top.get("opset", int),
        inputs=_tensors(top, "inputs"), outputs=_tensors(top, "outputs"),
        preprocessing=preprocessing, postprocessing=postprocessing, files=dict(files),
        source=top.get("source", dict), producer=top.get("producer", dict), variants=_variants(top),
        tensorflow=top.get("tensorflow", dict, {}),
    )


def _variants(top: _Reader) -> dict[str, dict[str, Any]]:
    variants = top.get("variants", dict, {})
    for name, variant in variants.items():
        entry = _Reader(variant, f"variants.{name}")
        file = entry.get("file", str)
        if file not in top.data.get("files", {}):
            entry.fail("file", f"{file!r} is not one of the bundle's files")
    return dict(variants)


def read_manifest(directory: Path, verify: bool = True) -> Manifest:
    """Parse `directory/manifest.json`; with `verify`, every listed file must match its sha256."""
    path = Path(directory) / MANIFEST_NAME
    if not Path(directory).is_dir():
        raise BundleError(f"{directory} is not a folder; expected a bundle written by `zoo export`")
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{directory} has no {MANIFEST_NAME}; expected a bundle written by `zoo export`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleError(f"{path} nests JSON too deeply to be a manifest") from None
    except OSError as exc:  # a folder where the file should be, unreadable, ...
        raise BundleError(f"{path} cannot be read: {exc.strerror or exc}") from None
    manifest = parse_manifest(data)
    if manifest.model_file not in manifest.files:
        raise BundleError(f"{MANIFEST_NAME}: files: the model file {manifest.model_file!r} has no sha256 entry")
    if isinstance(manifest.preprocessing, TextPreprocessing) and manifest.preprocessing.tokenizer not in manifest.files:
        raise BundleError(f"{MANIFEST_NAME}: preprocessing.tokenizer: {manifest.preprocessing.tokenizer!r} "
                          "is not one of the bundle's files")
    for name, digest in manifest.files.items():
        target = (Path(directory) / name).resolve()
        if Path(directory).resolve() not in target.parents:
            raise BundleError(f"{MANIFEST_NAME}: files: {name!r} points outside the bundle folder")
        if not target.is_file():
            raise BundleError(f"bundle {directory} is missing {name} (listed in {MANIFEST_NAME}); re-export it")
        if verify and sha256_file(target) != digest:
            raise BundleError(f"{name} in {directory} does not match the sha256 in {MANIFEST_NAME}: the bundle was "
                              "modified after export; re-export it (or load with verify=False for development only)")
    return manifest
