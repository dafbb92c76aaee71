"""The bundle manifest: the one format shared by the exporter (writes it) and the runtime
(reads it). Versioned, and described by manifest.schema.json; parsing names the exact field that is wrong."""

from __future__ import annotations

import json
import functools
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from serve.errors import BundleError
from serve.files import sha256_file, write_text_atomic
from serve.kinds import KIND_CLASSES

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "zoo-bundle"
FORMAT_VERSION = 2  # 2: every derived format in one `artifacts` section (1: `variants` + `tensorflow`, still read)


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
    warp: bool = False  # resize both sides to `resize`, whatever the aspect ratio (Hugging Face's processors)


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
    # Every format the bundle holds beside the fp32 model, by its `zoo export --format` name, as that format
    # describes itself: {"onnx-fp16": {"variant": "fp16", "file": ..., "max_abs_diff": ...}, "savedmodel":
    # {"directory", "signature", ...}, "tf-serving": {...}, "triton": {...}}. A record with a `variant` is a
    # precision of the same ONNX model that serve loads (`variant=`).
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    bundle_format: str = BUNDLE_FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        """The other precisions serve can load, by name: {"fp16": record, "int8": record}."""
        return {record["variant"]: record for record in self.artifacts.values() if "variant" in record}

    def to_json(self) -> str:
        document = asdict(self)
        return json.dumps(document, indent=1) + "\n"


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically."""
    path = directory / MANIFEST_NAME
    write_text_atomic(path, manifest.to_json())
    return path


SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")  # ships in the wheel (package data)


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text("utf-8")))


def _where(path) -> str:
    """`inputs[0].dtype` for the JSON path ("inputs", 0, "dtype")."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
    return text.lstrip(".") or "<top>"


def _fail(where: str, message: str) -> None:
    raise BundleError(f"{MANIFEST_NAME}: {where}: {message}")


def parse_manifest(data: Any) -> Manifest:
    """A Manifest from parsed JSON, checked against manifest.schema.json (jsonschema) and the cross-field
    rules a schema cannot state; BundleError names the first wrong field."""
    import jsonschema

    if not isinstance(data, dict):
        _fail("<top>", f"expected an object, found {type(data).__name__}")
    if data.get("bundle_format") != BUNDLE_FORMAT:
        _fail("bundle_format", f"expected {BUNDLE_FORMAT!r}; this folder was not written by zoo export")
    version = data.get("format_version")
    if version not in (1, FORMAT_VERSION) or isinstance(version, bool):
        _fail("format_version", f"version {version!r} is not supported (this runtime reads 1 and {FORMAT_VERSION}); "
                                "re-export the bundle or upgrade serve")
    if version == 1:
        data = _from_version_1(data)
    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        _fail(_where(error.absolute_path), error.message[:200])
    pre, post = data["preprocessing"], data["postprocessing"]
    if pre["kind"] != data["modality"]:
        _fail("preprocessing.kind", f"expected {data['modality']!r} to match the bundle's modality")
    if post["kind"] not in POSTPROCESSING_KINDS:
        _fail("postprocessing.kind", f"expected one of {', '.join(map(repr, POSTPROCESSING_KINDS))}, found {post['kind']!r}")
    for name, record in data.get("artifacts", {}).items():
        if "file" in record and record["file"] not in data["files"]:
            _fail(f"artifacts.{name}.file", f"{record['file']!r} is not one of the bundle's files")
    if data["modality"] == "image":
        preprocessing: ImagePreprocessing | TextPreprocessing = ImagePreprocessing(
            resize=pre["resize"], crop=pre["crop"], interpolation=pre["interpolation"],
            mean=[float(v) for v in pre["mean"]], std=[float(v) for v in pre["std"]], warp=pre.get("warp", False))
    else:
        preprocessing = TextPreprocessing(tokenizer=pre["tokenizer"], max_length=pre["max_length"],
                                          pad_token=pre["pad_token"], pad_id=pre["pad_id"])
    postprocessing = Postprocessing(kind=post["kind"], labels=list(post.get("labels", [])),
                                    **{f.name: post[f.name] for f in fields(Postprocessing)
                                       if f.name not in ("kind", "labels") and f.name in post})
    tensors = lambda key: [TensorSpec(t["name"], t["dtype"], list(t["shape"])) for t in data[key]]  # noqa: E731
    return Manifest(
        model_id=data["model_id"], task=data["task"], modality=data["modality"], model_file=data["model_file"],
        opset=data["opset"], inputs=tensors("inputs"), outputs=tensors("outputs"), preprocessing=preprocessing,
        postprocessing=postprocessing, files=dict(data["files"]), source=data["source"], producer=data["producer"],
        artifacts=dict(data.get("artifacts", {})),
    )


# Version 1's sections and the export formats their records came from
_VERSION_1 = {("variants", "fp16"): "onnx-fp16", ("variants", "int8"): "onnx-int8",
              ("tensorflow", "savedmodel"): "savedmodel", ("tensorflow", "tf_serving"): "tf-serving"}


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 document as version 2: `variants` and `tensorflow` records moved into `artifacts` under
    their format's name (a variant's name kept in the record)."""
    upgraded = {key: value for key, value in data.items() if key not in ("variants", "tensorflow")}
    artifacts: dict[str, Any] = {}
    for section in ("variants", "tensorflow"):
        records = data.get(section, {})
        if not isinstance(records, dict):
            _fail(section, f"expected an object, found {type(records).__name__}")
        for name, record in records.items():
            if not isinstance(record, dict):
                _fail(f"{section}.{name}", f"expected an object, found {type(record).__name__}")
            if section == "variants" and not isinstance(record.get("file"), str):
                _fail(f"{section}.{name}.file", "expected the variant's file name")
            extra = {"variant": name} if section == "variants" else {}
            artifacts[_VERSION_1.get((section, name), name)] = {**record, **extra}
    return {**upgraded, "format_version": FORMAT_VERSION, "artifacts": artifacts}


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
