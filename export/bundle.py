"""`zoo export NAME --format FORMAT... --out DIR`: a self-describing bundle

    DIR/model.onnx        dynamic batch (and sequence for text), or the --static-shape
    DIR/<derived formats> fp16, int8, SavedModel, TF Serving, Triton: see export.formats
    DIR/report.json, .md  one row per format: file, size, diff vs torch, cosine, top-1 agreement, status
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
    TensorSpec,
    TextPreprocessing,
    write_manifest,
)
from serve.files import sha256_file
from zoo.cache import FetchedModel, fetch
from zoo.errors import ExportError, InputError
from zoo.factory import build, resolve
from zoo.preprocess import BUNDLE_TOKENIZER, WORDPIECE_VOCAB, load_tokenizer, read_tokenizer
from zoo.provenance import package_versions
from zoo.schema import ModelEntry, SourceSpec
from zoo.tasks import get_task, implementation
from zoo.tolerances import EXPORT_ATOL

from export.calibration import calibration_files
from export.random_weights import informative_random_weights
from export.formats import FORMAT_NAMES, ONNX_FILE, FormatOptions, with_needs
from export.formats.common import DerivedContext, derived_formats, format_table, report_row
from export.onnx_export import DEFAULT_OPSET, export_onnx, external_data_file
from export.parity import ParityCase, at_static_shape, check_parity, parity_cases, summary
from export.savedmodel import check_available as check_tensorflow

VALIDATION_FILE = "validation.json"
REPORT_FILES = ("report.json", "report.md")


@dataclass(frozen=True)
class BundleResult:
    directory: Path
    manifest: Manifest
    report: dict
    seconds: float
    formats: list[dict]  # one row per format: format, file, size_mb, max_abs_diff, top1_agreement, status

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.formats if row["status"].startswith("failed")]  # (a pair below its gate is not)

    def lines(self) -> list[str]:
        marks = [f"  {'✓' if c['ok'] else '✗'} {c['case']}: max |diff| {c['max_abs_diff']:.3g} (atol {c['atol']:g})"
                 + ("" if c["top1_agreement"] is None else f"  {c['agreement']} {c['top1_agreement']:.0%}")
                 for c in self.report["cases"]]
        return [f"{self.manifest.model_id}: onnxruntime vs torch", *marks, *format_table(self.formats),
                f"wrote {self.directory} in {self.seconds:.1f}s"]


def _versions(traced: bool) -> dict[str, str]:
    names = ["zoo", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "transformers", "tokenizers"]
    return {**package_versions(names), "exporter": f"torch.onnx.export(dynamo={not traced})"}


def _io(entry: ModelEntry, fetched: FetchedModel):
    """(example inputs, dynamic axes, output names, preprocessing, tokenizer) for an entry: the inputs and
    outputs are its task's (zoo.tasks), the preprocessing its modality's."""
    task = get_task(entry.task)
    spec = entry.input
    tokenizer = load_tokenizer(fetched.files[spec.tokenizer], spec) if entry.modality == "text" else None
    example, axes, outputs = implementation(task).export_io(entry, tokenizer)
    if tokenizer is not None:
        preprocessing = TextPreprocessing(tokenizer=_bundle_tokenizer_name(spec.tokenizer), max_length=spec.max_length,
                                          pad_token=tokenizer.padding["pad_token"], pad_id=tokenizer.padding["pad_id"])
    elif task.raw_pixels:
        preprocessing = ImagePreprocessing(resize=None, crop=None, interpolation=spec.interpolation,
                                           mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    else:
        preprocessing = ImagePreprocessing(resize=spec.resize, crop=spec.crop, interpolation=spec.interpolation,
                                           mean=list(spec.mean), std=list(spec.std), warp=spec.warp)
    return example, axes, outputs, preprocessing, tokenizer


def _bundle_tokenizer_name(name: str) -> str:
    """The tokenizer file a bundle names: the entry's, or tokenizer.json built from its WordPiece vocabulary."""
    return BUNDLE_TOKENIZER if name == WORDPIECE_VOCAB else name


def _check_dynamic(session, dynamic_axes: dict[str, dict[int, str]]) -> None:
    shapes = {i.name: i.shape for i in session.get_inputs()}
    for name, axes in dynamic_axes.items():
        if name not in shapes:  # an output's axis (detections)
            continue
        for axis, label in axes.items():
            if not isinstance(shapes[name][axis], str):
                raise ExportError(f"input {name} axis {axis} ({label}) was exported as fixed size {shapes[name][axis]}")


def _check_options(entry: ModelEntry, formats: Sequence[str], options: FormatOptions) -> None:
    if options.calibration is not None and "onnx-int8" in formats:
        if entry.modality != "image":
            raise InputError(f"--calibration applies to image models; {entry.id} is a {entry.modality} model "
                             "(its int8 export is dynamic and needs no calibration)")
        calibration_files(options.calibration)
    if "savedmodel" in formats:
        check_tensorflow()
    shape = options.static_shape
    task = get_task(entry.task)
    for fmt, why in task.refused_formats:
        if fmt in formats:
            raise InputError(f"--format {fmt}: {entry.id} is a {task.name} model; {why}")
    if shape is not None and task.static_shape is not None:
        raise InputError(f"--static-shape: {entry.id} is a {task.name} model, {task.static_shape}; "
                         "leave --static-shape out")
    if shape is not None:
        text = entry.modality == "text"
        expected = f"BATCH,SEQ with a batch >= 1 and SEQ in 1..{entry.input.max_length}" if text else "BATCH >= 1"
        if len(shape) != (2 if text else 1) or min(shape) < 1 or (text and shape[1] > entry.input.max_length):
            raise InputError(f"--static-shape {','.join(map(str, shape))}: {entry.id} is a {entry.modality} model; "
                             f"expected {expected}")


def export_bundle(model: str | ModelEntry, out: Path, opset: int = DEFAULT_OPSET, atol: float | None = None,
                  overwrite: bool = False, extra_sources: Sequence[SourceSpec] = (), pretrained: bool = True,
                  formats: Sequence[str] = ("onnx",), options: FormatOptions = FormatOptions()) -> BundleResult:
    """Export, validate against torch, and write the bundle; ExportError (nothing written) when the
    fp32 model fails. A derived format that fails is left out and reported in `result.failed`.
    `pretrained=False` exports random weights (benchmarks of models whose weights are not reachable)."""
    unknown = sorted(set(formats) - set(FORMAT_NAMES))
    if unknown:
        raise InputError(f"unknown format(s) {', '.join(unknown)}; expected {', '.join(FORMAT_NAMES)}")
    formats = with_needs(formats)  # TF Serving serves the SavedModel
    import onnxruntime as ort

    start = time.perf_counter()
    entry = resolve(model)
    _check_options(entry, formats, options)  # bad settings fail before the export, not after
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
    task = get_task(entry.task)
    traced = task.torchscript_export  # see export.onnx_export
    torch_model = build(entry, pretrained=pretrained, extra_sources=extra_sources)
    example, dynamic_axes, output_names, preprocessing, tokenizer = _io(entry, fetched)
    output_name = output_names[0]
    pad_id = tokenizer.padding["pad_id"] if tokenizer else 0
    if options.static_shape:
        example, dynamic_axes = at_static_shape([ParityCase("example", example)], options.static_shape, pad_id)[0].inputs, {}
    cases = parity_cases(entry, tokenizer)
    if options.static_shape:
        cases = at_static_shape(cases, options.static_shape, pad_id)
    if not pretrained:
        informative_random_weights(torch_model, entry, cases)
    tolerance = atol if atol is not None else task.export_atol or EXPORT_ATOL["float32"]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        opset = export_onnx(torch_model, example, dynamic_axes, output_names, staging / ONNX_FILE, opset=opset,
                            tracer=traced)
        session = ort.InferenceSession(str(staging / ONNX_FILE), providers=["CPUExecutionProvider"])
        _check_dynamic(session, dynamic_axes)
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
        weights_data = external_data_file(staging / ONNX_FILE)
        copied = [spec.name for spec in entry.files if spec.role == "tokenizer"]
        for name in copied:
            shutil.copyfile(fetched.files[name], staging / name)
        if entry.modality == "text" and _bundle_tokenizer_name(entry.input.tokenizer) not in copied:
            # serve reads tokenizer.json only: a vocabulary's tokenizer is written as one
            read_tokenizer(fetched.files[entry.input.tokenizer]).save(str(staging / BUNDLE_TOKENIZER))
            copied.append(BUNDLE_TOKENIZER)
        rows = [report_row("onnx", ONNX_FILE, staging, results)]
        context = DerivedContext(staging, torch_model, entry, cases, output_name, inputs, outputs, options, pad_id)
        artifacts, extra_files = derived_formats(formats, context, rows)
        (staging / "report.json").write_text(json.dumps(rows, indent=1) + "\n")
        (staging / "report.md").write_text("\n".join(format_table(rows)) + "\n")
        files = {name: sha256_file(staging / name)
                 for name in [ONNX_FILE, *([weights_data.name] if weights_data else []), VALIDATION_FILE, *copied,
                              *extra_files, *REPORT_FILES]}
        manifest = Manifest(
            model_id=entry.id, task=entry.task, modality=entry.modality, model_file=ONNX_FILE, opset=opset,
            inputs=inputs, outputs=outputs,
            preprocessing=preprocessing, postprocessing=implementation(task).bundle_postprocessing(entry), files=files,
            source={"id": entry.id, "origin": entry.provenance.origin, "license": entry.provenance.license,
                    "files": fetched.sha256 if pretrained else {}, "pretrained": pretrained},
            producer=_versions(traced), artifacts=artifacts,
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


def _dtype(onnx_type: str) -> str:
    """'tensor(float)' -> 'float32' (numpy names, which is what serve feeds)."""
    names = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16",
             "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}
    return names.get(onnx_type, onnx_type)
