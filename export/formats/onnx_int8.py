"""onnx-int8: static QDQ quantization calibrated on photographs for image models, dynamic for text
(export.quantize), judged by cosine and top-1 agreement with torch."""

from __future__ import annotations

import numpy as np
import torch

from zoo.errors import ExportError
from zoo.reference import Comparison, compare_outputs
from zoo.tolerances import INT8_MIN_COSINE

from export.formats import INT8_FILE, ONNX_FILE
from export.formats.common import Built, DerivedContext, compared, cpu_session, report_row
from export.onnx_export import external_data_file
from export.parity import ParityCase, at_static_shape


def held_out_comparison(context: DerivedContext, session, cosine_floor: float) -> Comparison:
    """The held-out photographs (image models) through `session` against torch, at the bundle's batch."""
    from export.calibration import held_out_images

    images, label = held_out_images(context.entry.input, context.options.calibration)
    with torch.inference_mode():
        expected = context.torch_model(images).float().numpy()
    chunks = at_static_shape([ParityCase("", {"x": images})], (context.options.batch,))
    actual = np.concatenate([session.run([context.output_name], {context.inputs[0].name: c.inputs["x"].numpy()})[0]
                             for c in chunks])[:len(images)]
    return compare_outputs(context.entry, label, actual, expected, None, cosine_floor)


def int8_results(context: DerivedContext, session) -> tuple[list[Comparison], Comparison | None]:
    """An int8 model's comparisons with torch, judged by INT8_MIN_COSINE: static int8 of an image model on
    photographs (the real parity cases and the held-out views: synthetic patterns lie outside any
    calibration set), dynamic int8 of a text model on every parity case. Also the held-out comparison."""
    if context.entry.modality != "image":
        return compared(context, session, None, INT8_MIN_COSINE), None
    held_out = held_out_comparison(context, session, INT8_MIN_COSINE)
    return compared(context, session, None, INT8_MIN_COSINE, [c for c in context.cases if c.real], [held_out]), held_out


def build(context: DerivedContext) -> Built:
    from export.calibration import calibration_images
    from export.quantize import quantize_dynamic_int8, quantize_static_int8

    entry, target = context.entry, context.staging / INT8_FILE
    if entry.modality == "image":
        images = calibration_images(entry.input, context.options.calibration).numpy()
        quantize_static_int8(context.staging / ONNX_FILE, target, images, context.options.batch)
        method = ("static QDQ, per-channel int8 weights, uint8 activations (MinMax), calibrated on "
                  + (str(context.options.calibration) if context.options.calibration else "the default photo set"))
    else:
        quantize_dynamic_int8(context.staging / ONNX_FILE, target)
        method = "dynamic, per-channel int8 MatMul/Gemm weights and embeddings"
    results, held_out = int8_results(context, cpu_session(target))
    if failing := [c.line() for c in results if not c.ok]:
        raise ExportError("; ".join(failing))
    row = report_row("onnx-int8", INT8_FILE, context.staging, results, held_out=held_out)
    record = {"variant": "int8", "file": INT8_FILE, "quantization": method, "max_abs_diff": row["max_abs_diff"],
              "min_cosine": row["min_cosine"], "top1_agreement": row["top1_agreement"], "top1_on": row["top1_on"]}
    data = external_data_file(target)
    return row, record, [INT8_FILE, *([data.name] if data else [])]
