"""savedmodel: the ONNX model converted to a TensorFlow SavedModel (export.savedmodel, onnx2tf in a
subprocess) and checked against torch."""

from __future__ import annotations

from zoo.tolerances import EXPORT_ATOL

from export.files import files_under
from export.formats import ONNX_FILE
from export.formats.common import Built, DerivedContext, report_row
from export.savedmodel import SAVEDMODEL_DIR, write_savedmodel


def build(context: DerivedContext) -> Built:
    folder = context.staging / SAVEDMODEL_DIR
    result = write_savedmodel(context.staging / ONNX_FILE, folder, context.torch_model, context.entry, context.cases,
                              context.inputs, context.output_name, context.pad_id)
    files = files_under(context.staging, folder)
    row = report_row("savedmodel", f"{SAVEDMODEL_DIR}/saved_model.pb", context.staging, result.results,
               status="ok" if not result.note else f"ok ({result.note.split(':')[0]})")
    row["size_mb"] = sum((context.staging / f).stat().st_size for f in files) / 1e6
    record = {"directory": SAVEDMODEL_DIR, "signature": "serving_default", "inputs": result.inputs,
              "outputs": result.outputs, "max_abs_diff": row["max_abs_diff"], "atol": EXPORT_ATOL["float32"],
              "converter": "onnx2tf", "seconds": round(result.seconds, 1), "note": result.note}
    return row, record, files
