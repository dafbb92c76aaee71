"""Typed records for registry entries (grouped like timm's PretrainedCfg): files and their
sources, input spec, output head, provenance, reported metrics and reference outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class FileSpec:
    """One file a model needs; `sha256` is the full digest, `sha256_prefix` the digest prefix
    where upstream publishes only that (torchvision's file names)."""

    name: str
    role: str  # weights | config | tokenizer
    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None

    @property
    def expected_digest(self) -> str:
        return self.sha256 or self.sha256_prefix or ""


@dataclass(frozen=True)
class SourceSpec:
    """Where files can come from, tried in order: `hf`, `url`, `package` or `path`."""

    kind: Literal["hf", "url", "package", "path"]
    repo_id: str | None = None
    revision: str | None = None
    base_url: str | None = None
    distribution: str | None = None
    path: str | None = None

    def describe(self) -> str:
        if self.kind == "hf":
            return f"hf:{self.repo_id}@{self.revision}"
        if self.kind == "url":
            return f"url:{self.base_url}"
        if self.kind == "package":
            return f"package:{self.distribution}/{self.path}"
        return f"path:{self.path}"


@dataclass(frozen=True)
class ImageInputSpec:
    """Resize the shorter side to `resize` (with `warp`, both sides: a `resize` x `resize` square whatever the
    aspect ratio, as Hugging Face's image processors do), then center-crop to `crop`; `crop` None keeps the
    whole resized image (segmentation: any aspect ratio). `size` is the example input's height and width.
    Detectors resize and normalise inside the model (the graph takes pixels in [0, 1]); their spec
    records what that does: the shorter side to `resize` and this mean/std."""

    size: tuple[int, int]
    resize: int
    crop: int | None
    interpolation: Literal["bilinear", "bicubic"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kind: Literal["image"] = "image"
    warp: bool = False


@dataclass(frozen=True)
class TextInputSpec:
    tokenizer: str  # file name of a `tokenizers` tokenizer.json among the entry's files
    max_length: int
    kind: Literal["text"] = "text"


@dataclass(frozen=True)
class OutputSpec:
    """`logits`: one row per input (classification); `segmentation`: per-pixel class logits, NCHW at the
    input's resolution; `detection`: boxes, scores and labels per image (labels[0] is the background);
    `token-logits`: label logits per token (fine-tuned NER runs); `span-logits`: answer start and end
    logits per token (question-answering runs); `embedding`: one pooled vector per text."""

    kind: Literal["logits", "segmentation", "detection", "token-logits", "span-logits", "embedding"]
    labels: tuple[str, ...] = ()
    label_set: str | None = None
    dim: int | None = None
    pooling: Literal["mean", "cls"] | None = None
    normalize: bool = False


@dataclass(frozen=True)
class Provenance:
    license: str
    origin: str
    paper: str | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    source: str


@dataclass(frozen=True)
class ReferenceCase:
    input: str  # "synthetic" or "asset:<file>" (images) / "texts" (text)
    output: tuple[tuple[float, ...], ...]
    texts: tuple[str, ...] = ()
    top1_label: str | None = None


@dataclass(frozen=True)
class Reference:
    producer: str
    atol: float
    cases: tuple[ReferenceCase, ...]


@dataclass(frozen=True)
class FinetuneDefaults:
    """What fine-tuning this backbone starts from when the user sets nothing (zoo.recipe): the
    learning rate of full fine-tuning after a linear probe, and the weight decay. CNNs and
    transformers differ by an order of magnitude."""

    lr: float
    weight_decay: float


@dataclass(frozen=True)
class ModelEntry:
    id: str
    modality: Modality
    task: str
    architecture: str
    builder: str
    builder_args: dict[str, Any]
    weights_format: Literal["torch-state-dict", "safetensors"]
    files: tuple[FileSpec, ...]
    sources: tuple[SourceSpec, ...]
    provenance: Provenance
    params: int
    input: ImageInputSpec | TextInputSpec
    output: OutputSpec
    metrics: tuple[Metric, ...] = ()
    gflops: float | None = None
    reference: Reference | None = None
    finetune: FinetuneDefaults | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def file(self, role: str) -> FileSpec:
        """The single file with `role`."""
        matches = [f for f in self.files if f.role == role]
        if len(matches) != 1:
            raise KeyError(f"{self.id}: expected one file with role {role!r}, found {len(matches)}")
        return matches[0]
