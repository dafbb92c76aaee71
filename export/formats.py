"""The formats derived from the validated fp32 ONNX model, each built and checked against torch in
the staging folder; a format that fails leaves no file behind and a failed row in the report.

    onnx-fp16    model.fp16.onnx       export.variants.to_fp16
    onnx-int8    model.int8.onnx       export.quantize (+ export.calibration for image models)
    savedmodel   savedmodel/           export.savedmodel (onnx2tf in a subprocess)
    tf-serving   tf_serving/NAME/1/    the SavedModel, hard-linked where the filesystem allows
    triton       triton/NAME/...       export.variants.write_triton"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from serve.manifest import TensorSpec
from zoo.errors import ExportError
from zoo.reference import Comparison, compare_outputs
from zoo.schema import ModelEntry
from zoo.tolerances import EXPORT_ATOL, INT8_MIN_COSINE

from export.onnx_export import external_data_file
from export.parity import ParityCase, at_static_shape, check_parity
from export.files import files_under
from export.savedmodel import SAVEDMODEL_DIR, TF_SERVING_DIR, write_savedmodel, write_tf_serving
from export.variants import to_fp16, write_triton

ONNX_FILE = "model.onnx"
FP16_FILE = "model.fp16.onnx"
INT8_FILE = "model.int8.onnx"
FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "savedmodel", "tf-serving", "triton")  # onnx (fp32): the base


@dataclass(frozen=True)
class FormatOptions:
    """Settings of the derived formats."""

    calibration: Path | None = None  # onnx-int8 of image models: a folder of images (default: offline set)
    # Every format at this fixed input shape, no dynamic axes: (batch,) for images, (batch, sequence) for
    # text. Text SavedModels are always fixed-shape: this, or 1 x max_length.
    static_shape: tuple[int, ...] | None = None


def format_table(rows: list[dict]) -> list[str]:
    """The per-format report: printed by `zoo export`, written as report.md."""
    lines = ["| format | file | size MB | max abs diff vs torch | min cosine | top-1 agreement | status |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "—" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.3g}"
        cosine = "—" if r["min_cosine"] is None else f"{r['min_cosine']:.4f}"
        agree = "—" if r["top1_agreement"] is None else f"{r['top1_agreement']:.1%} ({r['top1_on']})"
        lines.append(f"| {r['format']} | {r['file']} | {r['size_mb']:.1f} | {diff} | {cosine} | {agree} | {r['status']} |")
    return lines


def report_row(fmt: str, file: str, staging: Path, results=None, status: str = "ok", held_out: Comparison | None = None) -> dict:
    """One report row; top-1 agreement comes from `held_out` when given, else from the parity cases."""
    path = staging / file
    results = results or []
    agreements = [c.top1_agreement for c in results if c.top1_agreement is not None]
    top1, top1_on = (min(agreements), "parity cases") if agreements else (None, None)
    if held_out is not None and held_out.top1_agreement is not None:
        top1, top1_on = held_out.top1_agreement, held_out.label
    size = sum(f.stat().st_size for f in (path, path.with_name(path.name + ".data")) if f.is_file())
    return {"format": fmt, "file": file, "size_mb": size / 1e6,
            "max_abs_diff": max((c.max_abs_diff for c in results), default=None),
            "min_cosine": min((c.min_cosine for c in results), default=None),
            "top1_agreement": top1, "top1_on": top1_on, "status": status}


@dataclass(frozen=True)
class DerivedContext:
    """What every derived format is built and checked from."""

    staging: Path
    torch_model: torch.nn.Module
    entry: ModelEntry
    cases: list[ParityCase]
    output_name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    options: FormatOptions
    pad_id: int


def derived_formats(formats: Sequence[str], context: DerivedContext, rows: list[dict]) -> tuple[dict, list[str]]:
    """Every requested format beside fp32, each checked; a failing one leaves no file and a failed row.
    Returns the manifest sections they add ({"variants": ..., "tensorflow": ...}) and their files."""
    builders = {"onnx-fp16": (_fp16, [FP16_FILE, f"{FP16_FILE}.data"]), "onnx-int8": (_int8, [INT8_FILE, f"{INT8_FILE}.data"]),
                "savedmodel": (_savedmodel, [SAVEDMODEL_DIR]), "tf-serving": (_tf_serving, [TF_SERVING_DIR]),
                "triton": (_triton, ["triton"])}
    sections: dict[str, dict] = {}
    files: list[str] = []
    for fmt in FORMATS:
        if fmt not in formats or fmt not in builders:
            continue
        make, outputs = builders[fmt]
        try:
            row, section, written = make(context)
        except ExportError as exc:
            for name in outputs:
                target = context.staging / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
            row, section, written = report_row(fmt, outputs[0], context.staging, status=f"failed: {exc}"), {}, []
        rows.append(row)
        files += written
        for key, value in section.items():
            sections.setdefault(key, {}).update(value)
    return sections, files


def _session(path: Path):
    from serve.providers import disabled_optimizers
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers(path.name == FP16_FILE))


def _checked(context: DerivedContext, path: Path, atol: float | None, cosine_floor: float | None = None,
             cases: list[ParityCase] | None = None, extra: Sequence[Comparison] = ()) -> list[Comparison]:
    results = check_parity(context.torch_model, _session(path), context.entry,
                           context.cases if cases is None else cases, atol, context.output_name, cosine_floor)
    results += extra
    failing = [c.line() for c in results if not c.ok]
    if failing:
        raise ExportError("; ".join(failing))
    return results


def _cuda_session(path: Path):
    """An onnxruntime session on the CUDA provider, made by serve's create_session, or None where there is
    none (the variant then records that it was checked on the CPU only)."""
    from serve.errors import ProviderError
    from serve.providers import SessionConfig, create_session

    try:
        return create_session(path, SessionConfig(device="cuda"), float16=path.name == FP16_FILE).session
    except ProviderError:  # no CUDA provider, or one that does not initialise here
        return None


def _fp16(context: DerivedContext):
    """serve runs fp16 automatically on CUDA only, where other kernels (and TF32) than the CPU's apply: the
    parity cases run on the CUDA provider too when this machine has one, and the variant records where
    it was checked."""
    path = context.staging / FP16_FILE
    to_fp16(context.staging / ONNX_FILE, path)
    results = _checked(context, path, EXPORT_ATOL["float16"])
    checked_on = ["CPUExecutionProvider"]
    cuda = _cuda_session(path)
    if cuda is not None:
        on_cuda = check_parity(context.torch_model, cuda, context.entry, context.cases, EXPORT_ATOL["float16"],
                               context.output_name)
        if failing := [c.line() for c in on_cuda if not c.ok]:
            raise ExportError("on the CUDA provider: " + "; ".join(failing))
        results += [replace(c, label=f"{c.label} (CUDA)") for c in on_cuda]
        checked_on.append("CUDAExecutionProvider")
    data = external_data_file(path)
    row = report_row("onnx-fp16", FP16_FILE, context.staging, results)
    variant = {"file": FP16_FILE, "max_abs_diff": row["max_abs_diff"], "top1_agreement": row["top1_agreement"],
               "atol": EXPORT_ATOL["float16"], "checked_on": checked_on}
    return row, {"variants": {"fp16": variant}}, [FP16_FILE, *([data.name] if data else [])]


def _int8(context: DerivedContext):
    from export.calibration import calibration_images, held_out_images
    from export.quantize import quantize_dynamic_int8, quantize_static_int8

    entry, target = context.entry, context.staging / INT8_FILE
    held_out = None
    if entry.modality == "image":
        batch = context.options.static_shape[0] if context.options.static_shape else 1
        quantize_static_int8(context.staging / ONNX_FILE, target,
                             calibration_images(entry.input, context.options.calibration).numpy(), batch)
        images, held_out_label = held_out_images(entry.input, context.options.calibration)
        with torch.inference_mode():
            expected = context.torch_model(images).float().numpy()
        session, chunks = _session(target), at_static_shape([ParityCase("", {"x": images})], (batch,))
        actual = np.concatenate([session.run([context.output_name], {context.inputs[0].name: c.inputs["x"].numpy()})[0]
                                 for c in chunks])[:len(images)]
        held_out = compare_outputs(entry, held_out_label, actual, expected, None, INT8_MIN_COSINE)
        method = ("static QDQ, per-channel int8 weights, uint8 activations (MinMax), calibrated on "
                  + (str(context.options.calibration) if context.options.calibration else "the default photo set"))
    else:
        quantize_dynamic_int8(context.staging / ONNX_FILE, target)
        method = "dynamic, per-channel int8 MatMul/Gemm weights and embeddings"
    if held_out is None:
        results = _checked(context, target, None, INT8_MIN_COSINE)
    else:  # static int8 is judged on photographs: synthetic patterns lie outside any calibration set
        results = _checked(context, target, None, INT8_MIN_COSINE, [c for c in context.cases if c.real], [held_out])
    row = report_row("onnx-int8", INT8_FILE, context.staging, results, held_out=held_out)
    variant = {"file": INT8_FILE, "quantization": method, "max_abs_diff": row["max_abs_diff"],
               "min_cosine": row["min_cosine"], "top1_agreement": row["top1_agreement"], "top1_on": row["top1_on"]}
    data = external_data_file(target)
    return row, {"variants": {"int8": variant}}, [INT8_FILE, *([data.name] if data else [])]


def _savedmodel(context: DerivedContext):
    folder = context.staging / SAVEDMODEL_DIR
    result = write_savedmodel(context.staging / ONNX_FILE, folder, context.torch_model, context.entry, context.cases,
                              context.inputs, context.output_name, context.pad_id)
    files = files_under(context.staging, folder)
    row = report_row("savedmodel", f"{SAVEDMODEL_DIR}/saved_model.pb", context.staging, result.results,
               status="ok" if not result.note else f"ok ({result.note.split(':')[0]})")
    row["size_mb"] = sum((context.staging / f).stat().st_size for f in files) / 1e6
    section = {"savedmodel": {"directory": SAVEDMODEL_DIR, "signature": "serving_default", "inputs": result.inputs,
                              "outputs": result.outputs, "max_abs_diff": row["max_abs_diff"],
                              "atol": EXPORT_ATOL["float32"], "converter": "onnx2tf",
                              "seconds": round(result.seconds, 1), "note": result.note}}
    return row, {"tensorflow": section}, files


def _tf_serving(context: DerivedContext):
    files = write_tf_serving(context.staging, context.entry.id)
    row = report_row("tf-serving", f"{TF_SERVING_DIR}/{context.entry.id}/1/", context.staging)
    row["size_mb"] = sum((context.staging / f).stat().st_size for f in files) / 1e6
    section = {"tf_serving": {"model_base_path": f"{TF_SERVING_DIR}/{context.entry.id}", "model_name": context.entry.id,
                              "version": 1}}
    return row, {"tensorflow": section}, files


def _triton(context: DerivedContext):
    written = write_triton(context.staging, context.entry.id, ONNX_FILE, context.inputs, context.outputs)
    return report_row("triton", written[0], context.staging), {}, written
