"""`zoo validate`: rebuild a model from its verified weights and compare it with the reference
outputs stored in the registry (produced by an independent upstream implementation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from zoo.errors import NoReferenceError, ToleranceExceeded
from zoo.factory import build, resolve
from zoo.cache import fetch
from zoo.preprocess import image_pixels, load_tokenizer, preprocess_images, tokenize
from zoo.reference import Check, Comparison, asset_path, compare_outputs, synthetic_images, synthetic_pixels
from zoo.schema import ModelEntry, SourceSpec
from zoo.tasks import get_task


@dataclass
class ValidationReport:
    model: str
    producer: str
    comparisons: list[Comparison | Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons)

    def lines(self) -> list[str]:
        return [f"{self.model}: reference from {self.producer}", *[f"  {c.line()}" for c in self.comparisons],
                *[f"  {n}" for n in self.notes]]

    def raise_for_failures(self) -> None:
        """ToleranceExceeded naming every failing output (after all were compared)."""
        if not self.ok:
            failing = [c.line() for c in self.comparisons if not c.ok]
            raise ToleranceExceeded(f"{self.model}: {len(failing)} output(s) out of tolerance:\n  " + "\n  ".join(failing))


def case_inputs(entry: ModelEntry, kind: str, batch: int = 1, texts: Sequence[str] = (),
                tokenizer=None) -> dict[str, torch.Tensor]:
    """The exact model inputs of a reference case: `kind` "synthetic" (`batch` images at the entry's
    size) or "synthetic:HxW" (at that size), "asset:<file>", or "texts" (`texts` through `tokenizer`).
    A model whose graph takes raw pixels (detectors, zoo.tasks) gets one image in [0, 1] at its own size."""
    if get_task(entry.task).raw_pixels:
        if kind.startswith("asset:"):
            return {"image": image_pixels(asset_path(kind.split(":", 1)[1]))}
        height, width = (int(side) for side in kind.split(":", 1)[1].split("x")) if ":" in kind else entry.input.size
        return {"image": synthetic_pixels(1, (height, width)).float()}
    if kind == "synthetic":
        return {"pixel_values": synthetic_images(entry.input, batch=batch)}
    if kind.startswith("synthetic:"):
        height, width = (int(side) for side in kind.split(":", 1)[1].split("x"))
        return {"pixel_values": synthetic_images(entry.input, batch=batch, size=(height, width))}
    if kind.startswith("asset:"):
        return {"pixel_values": preprocess_images(entry.input, [asset_path(kind.split(":", 1)[1])])}
    return tokenize(tokenizer, texts)


def reference_outputs(entry: ModelEntry, model: nn.Module, cases: list[dict], tokenizer=None) -> list[dict]:
    """`cases` (a task's reference_cases: {"input", "batch"[, "texts"]}) with the model's outputs filled in
    ("batch" consumed), to 8 significant digits, which hold a float32 exactly enough."""
    model.eval()
    for case in cases:
        inputs = case_inputs(entry, case["input"], case.pop("batch"), case.get("texts", ()), tokenizer)
        output = run_model(model, inputs)
        case["output"] = np.array([float(f"{v:.8g}") for v in output.ravel()]).reshape(output.shape).tolist()
    return cases


def run_model(model: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The output as one array; a detector's (boxes, scores, labels) as rows x1 y1 x2 y2 score label."""
    from zoo.builders.detection import detection_rows

    with torch.inference_mode():
        output = model(*inputs.values())
    return detection_rows(*output) if isinstance(output, tuple) else output.float().numpy()


def validate(model: str | ModelEntry, atol: float | None = None, extra_sources: Sequence[SourceSpec] = ()) -> ValidationReport:
    """Compare every stored reference case; the report lists each with max |diff| and top-1 agreement."""
    entry = resolve(model)
    if entry.reference is None:
        raise NoReferenceError(
            f"{entry.id} has no reference outputs in the registry (its weights were not reachable when the "
            "registry was made); nothing to validate against"
        )
    reference = entry.reference
    tolerance = reference.atol if atol is None else atol
    torch_model = build(entry, pretrained=True, extra_sources=extra_sources)
    tokenizer = None
    if entry.modality == "text":
        fetched = fetch(entry, extra_sources)
        tokenizer = load_tokenizer(fetched.files[entry.input.tokenizer], entry.input)
    report = ValidationReport(entry.id, reference.producer)
    for case in reference.cases:
        inputs = case_inputs(entry, case.input, len(case.output), case.texts, tokenizer)
        actual = run_model(torch_model, inputs)
        scale = max(next(iter(inputs.values())).shape[-2:])  # detection: boxes relative to the image
        report.comparisons.append(compare_outputs(entry, case.input, actual, np.array(case.output), tolerance, scale=scale))
        if case.top1_label is not None:
            predicted = entry.output.labels[int(actual[0].argmax())]
            report.comparisons.append(Check(f"{case.input}: top-1 is {predicted!r} (expected {case.top1_label!r})",
                                            predicted == case.top1_label))
    return report
