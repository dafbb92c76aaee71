"""triton: a Triton model repository (triton/NAME/config.pbtxt + 1/model.onnx) for the fp32 ONNX model."""

from __future__ import annotations

from export.formats import ONNX_FILE
from export.formats.common import Built, DerivedContext, report_row
from export.variants import write_triton


def build(context: DerivedContext) -> Built:
    written = write_triton(context.staging, context.entry.id, ONNX_FILE, context.inputs, context.outputs)
    record = {"repository": "triton", "model_name": context.entry.id, "version": 1}
    return report_row("triton", written[0], context.staging), record, written
