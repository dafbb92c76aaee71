"""`zoo export NAME --format onnx --out DIR`: a self-describing bundle

    DIR/model.onnx        dynamic batch (and sequence for text)
    DIR/manifest.json     serve.manifest format: io names/dtypes/shapes, preprocessing, labels or
                          pooling, source hashes, opset, producer versions, sha256 of every file
    DIR/validation.json   onnxruntime vs torch on every parity case
    DIR/<tokenizer files> for text models, copied unchanged from the verified source

The bundle is assembled in a temporary sibling folder and renamed into place only after it
passed validation: a failed export leaves nothing behind."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

import torch

from serve.manifest import (
    ImagePreprocessing,
    Manifest,
    Postprocessing,
    TensorSpec,
    TextPreprocessing,
    sha256_file,
    write_manifest,
)
from zoo.cache import FetchedModel, fetch
from zoo.errors import ExportError, InputError
from zoo.factory import build, resolve
from zoo.preprocess import load_tokenizer, tokenize
from zoo.reference import SENTENCES, synthetic_images
from zoo.schema import ModelEntry, SourceSpec
from zoo.tolerances import EXPORT_ATOL

from export.onnx_export import DEFAULT_OPSET, export_onnx
from export.parity import check_parity, parity_cases, summary

MODEL_FILE = "model.onnx"
VALIDATION_FILE = "validation.json"
FORMATS = ("onnx",)


@dataclass(frozen=True)
class BundleResult:
    directory: Path
    manifest: Manifest
    report: dict
    seconds: float

    def lines(self) -> list[str]:
        marks = [f"  {'✓' if c['ok'] else '✗'} {c['case']}: max |diff| {c['max_abs_diff']:.3g} (atol {c['atol']:g})"
                 + ("" if c["top1_agreement"] is None else f"  top-1 agreement {c['top1_agreement']:.0%}")
                 for c in self.report["cases"]]
        return [f"{self.manifest.model_id}: onnxruntime vs torch", *marks,
                f"wrote {self.directory} in {self.seconds:.1f}s"]


def _versions() -> dict[str, str]:
    names = ["zoo", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "transformers", "tokenizers"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    found["exporter"] = "torch.onnx.export(dynamo=True)"
    return found


def _io(entry: ModelEntry, fetched: FetchedModel):
    """(example inputs, dynamic axes, output name, preprocessing, tokenizer) for an entry."""
    if entry.modality == "image":
        spec = entry.input
        preprocessing = ImagePreprocessing(resize=spec.resize, crop=spec.crop, interpolation=spec.interpolation,
                                           mean=list(spec.mean), std=list(spec.std))
        return ({"pixel_values": synthetic_images(spec, 2)}, {"pixel_values": {0: "batch"}}, "logits",
                preprocessing, None)
    tokenizer = load_tokenizer(fetched.files[entry.input.tokenizer], entry.input)
    axes = {0: "batch", 1: "sequence"}
    preprocessing = TextPreprocessing(tokenizer=entry.input.tokenizer, max_length=entry.input.max_length,
                                      pad_token=tokenizer.padding["pad_token"], pad_id=tokenizer.padding["pad_id"])
    output_name = "logits" if entry.output.kind == "logits" else "sentence_embedding"
    return (tokenize(tokenizer, SENTENCES[:2]), {"input_ids": axes, "attention_mask": axes}, output_name,
            preprocessing, tokenizer)


def _postprocessing(entry: ModelEntry) -> Postprocessing:
    if entry.output.kind == "logits":
        binary = entry.builder_args.get("head") == "binary"
        return Postprocessing(kind="classification", labels=list(entry.output.labels),
                              activation="sigmoid" if binary else "softmax")
    return Postprocessing(kind="embedding", pooling=entry.output.pooling, normalized=entry.output.normalize,
                          dim=entry.output.dim)


def _check_dynamic(session, dynamic_axes: dict[str, dict[int, str]]) -> None:
    shapes = {i.name: i.shape for i in session.get_inputs()}
    for name, axes in dynamic_axes.items():
        for axis, label in axes.items():
            if not isinstance(shapes[name][axis], str):
                raise ExportError(f"input {name} axis {axis} ({label}) was exported as fixed size {shapes[name][axis]}")


def export_bundle(model: str | ModelEntry, out: Path, opset: int = DEFAULT_OPSET, atol: float | None = None,
                  overwrite: bool = False, extra_sources: Sequence[SourceSpec] = (), pretrained: bool = True) -> BundleResult:
    """Export, validate against torch, and write the bundle; ExportError (nothing written) on failure.
    `pretrained=False` exports random weights (benchmarks of models whose weights are not reachable)."""
    import onnxruntime as ort

    start = time.perf_counter()
    entry = resolve(model)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --force to replace it")
    if out.exists() and not (out / "manifest.json").is_file():
        raise InputError(f"{out} exists and is not a bundle; refusing to replace it (choose another --out)")
    if pretrained:
        fetched = fetch(entry, extra_sources)
    elif entry.modality == "text":
        fetched = fetch(dataclasses.replace(entry, files=tuple(f for f in entry.files if f.role == "tokenizer")),
                        extra_sources)
    else:
        fetched = None
    torch.manual_seed(0)
    torch_model = build(entry, pretrained=pretrained, extra_sources=extra_sources)
    example, dynamic_axes, output_name, preprocessing, tokenizer = _io(entry, fetched)
    tolerance = EXPORT_ATOL["float32"] if atol is None else atol
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        export_onnx(torch_model, example, dynamic_axes, output_name, staging / MODEL_FILE, opset=opset)
        session = ort.InferenceSession(str(staging / MODEL_FILE), providers=["CPUExecutionProvider"])
        _check_dynamic(session, dynamic_axes)
        results = check_parity(torch_model, session, entry, parity_cases(entry, tokenizer), tolerance, output_name)
        report = {"reference": "torch model (same weights) on the same inputs", "runtime": "onnxruntime CPU",
                  "dtype": "float32", **summary(results)}
        if not report["ok"]:
            failing = [c.line() for c in results if not c.ok]
            raise ExportError(f"{entry.id}: exported model disagrees with torch; nothing was written:\n  "
                              + "\n  ".join(c.line() for c in results) + f"\n({len(failing)} failing)")
        (staging / VALIDATION_FILE).write_text(json.dumps(report, indent=1) + "\n")
        copied = [spec.name for spec in entry.files if spec.role == "tokenizer"]
        for name in copied:
            shutil.copyfile(fetched.files[name], staging / name)
        files = {name: sha256_file(staging / name) for name in [MODEL_FILE, VALIDATION_FILE, *copied]}
        manifest = Manifest(
            model_id=entry.id, task=entry.task, modality=entry.modality, model_file=MODEL_FILE, opset=opset,
            inputs=[TensorSpec(i.name, _dtype(i.type), list(i.shape)) for i in session.get_inputs()],
            outputs=[TensorSpec(o.name, _dtype(o.type), list(o.shape)) for o in session.get_outputs()],
            preprocessing=preprocessing, postprocessing=_postprocessing(entry), files=files,
            source={"id": entry.id, "origin": entry.provenance.origin, "license": entry.provenance.license,
                    "files": fetched.sha256 if pretrained else {}, "pretrained": pretrained},
            producer=_versions(),
        )
        write_manifest(staging, manifest)
        os.chmod(staging, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return BundleResult(out, manifest, report, time.perf_counter() - start)


def _dtype(onnx_type: str) -> str:
    """'tensor(float)' -> 'float32' (numpy names, which is what serve feeds)."""
    names = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16",
             "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}
    return names.get(onnx_type, onnx_type)
