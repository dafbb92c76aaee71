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
import shutil
import tempfile
import time
from dataclasses import dataclass
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
from zoo.provenance import package_versions
from zoo.reference import SENTENCES, synthetic_images
from zoo.schema import ModelEntry, SourceSpec
from zoo.tolerances import EXPORT_ATOL

from export.onnx_export import DEFAULT_OPSET, export_onnx
from export.parity import ParityCase, check_parity, parity_cases, summary
from export.variants import to_fp16, write_triton

MODEL_FILE = "model.onnx"
VALIDATION_FILE = "validation.json"
FP16_FILE = "model.fp16.onnx"
REPORT_FILES = ("report.json", "report.md")
FORMATS = ("onnx", "onnx-fp16", "triton")  # onnx (fp32) is the base every other format derives from


@dataclass(frozen=True)
class BundleResult:
    directory: Path
    manifest: Manifest
    report: dict
    seconds: float
    formats: list[dict]  # one row per format: format, file, size_mb, max_abs_diff, top1_agreement, status

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.formats if row["status"] != "ok"]

    def lines(self) -> list[str]:
        marks = [f"  {'✓' if c['ok'] else '✗'} {c['case']}: max |diff| {c['max_abs_diff']:.3g} (atol {c['atol']:g})"
                 + ("" if c["top1_agreement"] is None else f"  top-1 agreement {c['top1_agreement']:.0%}")
                 for c in self.report["cases"]]
        return [f"{self.manifest.model_id}: onnxruntime vs torch", *marks, *format_table(self.formats),
                f"wrote {self.directory} in {self.seconds:.1f}s"]


def format_table(rows: list[dict]) -> list[str]:
    """The per-format report: printed by `zoo export`, written as report.md."""
    lines = ["| format | file | size MB | max abs diff vs torch | top-1 agreement | status |", "|---|---|---|---|---|---|"]
    for r in rows:
        diff = "—" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.3g}"
        agree = "—" if r["top1_agreement"] is None else f"{r['top1_agreement']:.0%}"
        lines.append(f"| {r['format']} | {r['file']} | {r['size_mb']:.1f} | {diff} | {agree} | {r['status']} |")
    return lines


def _row(fmt: str, file: str, staging: Path, results=None, status: str = "ok") -> dict:
    path = staging / file
    diffs = [c.max_abs_diff for c in results or []]
    agreements = [c.top1_agreement for c in results or [] if c.top1_agreement is not None]
    return {"format": fmt, "file": file, "size_mb": path.stat().st_size / 1e6 if path.is_file() else 0.0,
            "max_abs_diff": max(diffs) if diffs else None, "top1_agreement": min(agreements) if agreements else None,
            "status": status}


def _versions() -> dict[str, str]:
    names = ["zoo", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "transformers", "tokenizers"]
    return {**package_versions(names), "exporter": "torch.onnx.export(dynamo=True)"}


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
                  overwrite: bool = False, extra_sources: Sequence[SourceSpec] = (), pretrained: bool = True,
                  formats: Sequence[str] = ("onnx",)) -> BundleResult:
    """Export, validate against torch, and write the bundle; ExportError (nothing written) when the
    fp32 model fails. A derived format that fails is left out and reported in `result.failed`.
    `pretrained=False` exports random weights (benchmarks of models whose weights are not reachable)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise InputError(f"unknown format(s) {', '.join(unknown)}; expected {', '.join(FORMATS)}")
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
        cases = parity_cases(entry, tokenizer)
        results = check_parity(torch_model, session, entry, cases, tolerance, output_name)
        inputs = [TensorSpec(i.name, _dtype(i.type), list(i.shape)) for i in session.get_inputs()]
        outputs = [TensorSpec(o.name, _dtype(o.type), list(o.shape)) for o in session.get_outputs()]
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
        rows = [_row("onnx", MODEL_FILE, staging, results)]
        variants, extra_files = _derived_formats(formats, staging, torch_model, entry, cases, output_name,
                                                 inputs, outputs, rows)
        (staging / "report.json").write_text(json.dumps(rows, indent=1) + "\n")
        (staging / "report.md").write_text("\n".join(format_table(rows)) + "\n")
        files = {name: sha256_file(staging / name)
                 for name in [MODEL_FILE, VALIDATION_FILE, *copied, *extra_files, *REPORT_FILES]}
        manifest = Manifest(
            model_id=entry.id, task=entry.task, modality=entry.modality, model_file=MODEL_FILE, opset=opset,
            inputs=inputs, outputs=outputs,
            preprocessing=preprocessing, postprocessing=_postprocessing(entry), files=files,
            source={"id": entry.id, "origin": entry.provenance.origin, "license": entry.provenance.license,
                    "files": fetched.sha256 if pretrained else {}, "pretrained": pretrained},
            producer=_versions(), variants=variants,
        )
        write_manifest(staging, manifest)
        os.chmod(staging, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return BundleResult(out, manifest, report, time.perf_counter() - start, rows)


def _derived_formats(formats, staging: Path, torch_model, entry: ModelEntry, cases: list[ParityCase],
                     output_name: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                     rows: list[dict]) -> tuple[dict, list[str]]:
    """fp16 and Triton from the validated fp32 model; a failing one leaves no file and a failed row."""
    import onnxruntime as ort

    variants: dict = {}
    files: list[str] = []
    if "onnx-fp16" in formats:
        try:
            to_fp16(staging / MODEL_FILE, staging / FP16_FILE)
            fp16 = ort.InferenceSession(str(staging / FP16_FILE), providers=["CPUExecutionProvider"])
            results = check_parity(torch_model, fp16, entry, cases, EXPORT_ATOL["float16"], output_name)
            failing = [c.line() for c in results if not c.ok]
            if failing:
                raise ExportError("; ".join(failing))
            row = _row("onnx-fp16", FP16_FILE, staging, results)
            variants["fp16"] = {"file": FP16_FILE, "max_abs_diff": row["max_abs_diff"],
                                "top1_agreement": row["top1_agreement"], "atol": EXPORT_ATOL["float16"]}
            files.append(FP16_FILE)
        except ExportError as exc:
            (staging / FP16_FILE).unlink(missing_ok=True)
            row = _row("onnx-fp16", FP16_FILE, staging, status=f"failed: {exc}")
        rows.append(row)
    if "triton" in formats:
        try:
            written = write_triton(staging, entry.id, MODEL_FILE, inputs, outputs)
            files += written
            rows.append(_row("triton", written[0], staging))
        except ExportError as exc:
            shutil.rmtree(staging / "triton", ignore_errors=True)
            rows.append(_row("triton", "triton/", staging, status=f"failed: {exc}"))
    return variants, files


def _dtype(onnx_type: str) -> str:
    """'tensor(float)' -> 'float32' (numpy names, which is what serve feeds)."""
    names = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16",
             "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}
    return names.get(onnx_type, onnx_type)
