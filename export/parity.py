"""Exported model vs the torch model it came from, on the same inputs: batch 1 and batch >= 4,
several sequence lengths for text, a real photo for images (each task's cases: zoo.tasks). Every
case is reported."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.reference import Comparison, compare_outputs
from zoo.schema import ModelEntry
from zoo.tasks import get_task, implementation
from zoo.tasks.inputs import ParityCase

__all__ = ["ParityCase", "at_static_shape", "check_parity", "comparison_record", "parity_cases", "summary"]


def parity_cases(entry: ModelEntry, tokenizer: Any = None) -> list[ParityCase]:
    """Inputs that exercise every dynamic axis at sizes other than the export example's: the task's own
    (zoo.tasks)."""
    return implementation(get_task(entry.task)).parity_cases(entry, tokenizer)


def at_static_shape(cases: list[ParityCase], shape: tuple[int, ...], pad_id: int = 0) -> list[ParityCase]:
    """The cases for a model with a fixed input shape, (batch,) or (batch, length): rows in chunks of
    `batch` (a short last chunk is filled with copies of its first row) and, for text, sequences
    truncated or padded (ids `pad_id`, attention_mask 0) to `length`."""
    batch, length = shape[0], (shape[1] if len(shape) > 1 else None)
    fixed = []
    for case in cases:
        inputs = dict(case.inputs)
        if length is not None:
            inputs = {name: torch.nn.functional.pad(t[:, :length], (0, length - t[:, :length].shape[1]),
                                                    value=pad_id if name == "input_ids" else 0)
                      for name, t in inputs.items()}
        rows_total = len(next(iter(inputs.values())))
        for start in range(0, rows_total, batch):
            rows = list(range(start, min(start + batch, rows_total)))
            rows += [start] * (batch - len(rows))
            size = "x".join(str(d) for d in next(iter(inputs.values()))[rows].shape[:2 if length else 1])
            fixed.append(ParityCase(f"{case.label}, rows {start}+ at {size}", {k: v[rows] for k, v in inputs.items()},
                                    case.real))
    return fixed


def check_parity(model: nn.Module, session: Any, entry: ModelEntry, cases: list[ParityCase], atol: float | None,
                 output_name: str, cosine_floor: float | None = None) -> list[Comparison]:
    """onnxruntime vs torch for every case (max |diff|, top-1 agreement for classifiers, min cosine);
    judged by `atol`, or by `cosine_floor` for quantized models."""
    from zoo.builders.detection import detection_rows

    results = []
    for case in cases:
        feeds = {name: tensor.numpy() for name, tensor in case.inputs.items()}
        with torch.inference_mode():
            expected = model(*case.inputs.values())
        if entry.output.kind == "detection":  # boxes, scores, labels: compared as sets of detections
            expected, actual = detection_rows(*expected), detection_rows(*session.run(None, feeds))
        else:
            expected, actual = expected.float().numpy(), session.run([output_name], feeds)[0]
        scale = max(next(iter(feeds.values())).shape[-2:])
        results.append(compare_outputs(entry, case.label, actual, expected, atol, cosine_floor, scale=scale))
    return results


def comparison_record(c: Comparison) -> dict[str, Any]:
    return {"case": c.label, "max_abs_diff": c.max_abs_diff, "atol": c.atol, "min_cosine": c.min_cosine,
            "cosine_floor": c.cosine_floor, "top1_agreement": c.top1_agreement, "agreement": c.agreement_name,
            "ok": c.ok}


def summary(results: list[Comparison]) -> dict[str, Any]:
    return {"ok": all(c.ok for c in results), "max_abs_diff": max((c.max_abs_diff for c in results), default=np.nan),
            "cases": [comparison_record(c) for c in results]}
