"""tf-serving: the SavedModel in TensorFlow Serving's layout (NAME/1/), hard-linked where the filesystem
allows."""

from __future__ import annotations

from export.formats.common import Built, DerivedContext, report_row
from export.savedmodel import TF_SERVING_DIR, write_tf_serving


def build(context: DerivedContext) -> Built:
    files = write_tf_serving(context.staging, context.entry.id)
    row = report_row("tf-serving", f"{TF_SERVING_DIR}/{context.entry.id}/1/", context.staging)
    row["size_mb"] = sum((context.staging / f).stat().st_size for f in files) / 1e6
    record = {"model_base_path": f"{TF_SERVING_DIR}/{context.entry.id}", "model_name": context.entry.id, "version": 1}
    return row, record, files
