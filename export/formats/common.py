"""What every derived format is built and checked with: the context, the parity check against torch on
onnxruntime's CPU provider, the report rows, and the loop over the requested formats."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from serve.manifest import TensorSpec
from zoo.errors import ExportError
from zoo.reference import Comparison
from zoo.schema import ModelEntry

from export.formats import FP16_FILE, FORMATS, FormatOptions, builder
from export.parity import ParityCase, check_parity

# (report row, or rows: one per precision checked; its record in the manifest's artifacts; files written)
Built = tuple[dict | list[dict], dict, list]


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
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else path.with_name(path.name + ".data")  # IR / ONNX
    size = sum(f.stat().st_size for f in (path, weights) if f.is_file())
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
    Returns the manifest's artifacts (each built format's record, by its name) and their files."""
    artifacts: dict[str, dict] = {}
    files: list[str] = []
    for fmt in FORMATS.values():
        if fmt.name not in formats or fmt.module is None:
            continue
        try:
            row, record, written = builder(fmt)(context)
        except ExportError as exc:
            for name in fmt.outputs:
                target = context.staging / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
            row, record, written = report_row(fmt.name, fmt.outputs[0], context.staging, status=f"failed: {exc}"), None, []
        rows += row if isinstance(row, list) else [row]
        files += written
        if record is not None:
            artifacts[fmt.name] = record
    return artifacts, files


def cpu_session(path: Path):
    """An onnxruntime session on the CPU provider, with the optimisations serve uses for the file."""
    from serve.providers import disabled_optimizers
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers(path.name == FP16_FILE))


def checked(context: DerivedContext, path: Path, atol: float | None, cosine_floor: float | None = None,
            cases: list[ParityCase] | None = None, extra: Sequence[Comparison] = (), session=None) -> list[Comparison]:
    """The parity cases through the file at `path` (on `session`, by default onnxruntime's CPU provider) against
    torch; ExportError naming each failing case."""
    results = compared(context, session or cpu_session(path), atol, cosine_floor, cases, extra)
    failing = [c.line() for c in results if not c.ok]
    if failing:
        raise ExportError("; ".join(failing))
    return results


def compared(context: DerivedContext, session, atol: float | None, cosine_floor: float | None = None,
             cases: list[ParityCase] | None = None, extra: Sequence[Comparison] = ()) -> list[Comparison]:
    """The parity cases (or `cases`) through `session` against torch, and `extra` comparisons, each judged."""
    return check_parity(context.torch_model, session, context.entry, context.cases if cases is None else cases,
                        atol, context.output_name, cosine_floor) + list(extra)
