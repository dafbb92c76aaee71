"""onnx-fp16: the fp32 graph converted to float16 (export.variants.to_fp16), checked on the CPU and, where
this machine has one, on the CUDA provider."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from zoo.errors import ExportError
from zoo.tolerances import EXPORT_ATOL

from export.formats import FP16_FILE, ONNX_FILE
from export.formats.common import Built, DerivedContext, checked, report_row
from export.onnx_export import external_data_file
from export.parity import check_parity
from export.variants import to_fp16


def _cuda_session(path: Path):
    """An onnxruntime session on the CUDA provider, made by serve's create_session, or None where there is
    none (the variant then records that it was checked on the CPU only)."""
    from serve.errors import ProviderError
    from serve.providers import SessionConfig, create_session

    try:
        return create_session(path, SessionConfig(device="cuda"), float16=path.name == FP16_FILE).session
    except ProviderError:  # no CUDA provider, or one that does not initialise here
        return None


def build(context: DerivedContext) -> Built:
    """serve runs fp16 automatically on CUDA only, where other kernels (and TF32) than the CPU's apply: the
    parity cases run on the CUDA provider too when this machine has one, and the variant records where
    it was checked."""
    path = context.staging / FP16_FILE
    to_fp16(context.staging / ONNX_FILE, path)
    results = checked(context, path, EXPORT_ATOL["float16"])
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
    record = {"variant": "fp16", "file": FP16_FILE, "max_abs_diff": row["max_abs_diff"],
              "top1_agreement": row["top1_agreement"], "atol": EXPORT_ATOL["float16"], "checked_on": checked_on}
    return row, record, [FP16_FILE, *([data.name] if data else [])]
