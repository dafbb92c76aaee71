"""onnx-int8: static QDQ quantization calibrated on photographs for image models, dynamic for text
(export.quantize), judged by cosine and top-1 agreement with torch."""

from __future__ import annotations

import numpy as np
import torch

from zoo.reference import compare_outputs
from zoo.tolerances import INT8_MIN_COSINE

from export.formats import INT8_FILE, ONNX_FILE
from export.formats.common import Built, DerivedContext, checked, cpu_session, report_row
from export.onnx_export import external_data_file
from export.parity import ParityCase, at_static_shape


def build(context: DerivedContext) -> Built:
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
        session, chunks = cpu_session(target), at_static_shape([ParityCase("", {"x": images})], (batch,))
        actual = np.concatenate([session.run([context.output_name], {context.inputs[0].name: c.inputs["x"].numpy()})[0]
                                 for c in chunks])[:len(images)]
        held_out = compare_outputs(entry, held_out_label, actual, expected, None, INT8_MIN_COSINE)
        method = ("static QDQ, per-channel int8 weights, uint8 activations (MinMax), calibrated on "
                  + (str(context.options.calibration) if context.options.calibration else "the default photo set"))
    else:
        quantize_dynamic_int8(context.staging / ONNX_FILE, target)
        method = "dynamic, per-channel int8 MatMul/Gemm weights and embeddings"
    if held_out is None:
        results = checked(context, target, None, INT8_MIN_COSINE)
    else:  # static int8 is judged on photographs: synthetic patterns lie outside any calibration set
        results = checked(context, target, None, INT8_MIN_COSINE, [c for c in context.cases if c.real], [held_out])
    row = report_row("onnx-int8", INT8_FILE, context.staging, results, held_out=held_out)
    record = {"variant": "int8", "file": INT8_FILE, "quantization": method, "max_abs_diff": row["max_abs_diff"],
              "min_cosine": row["min_cosine"], "top1_agreement": row["top1_agreement"], "top1_on": row["top1_on"]}
    data = external_data_file(target)
    return row, record, [INT8_FILE, *([data.name] if data else [])]
