"""Exported model vs the torch model it came from, on the same inputs: batch 1 and batch >= 4,
several sequence lengths for text, a real photo for images. Every case is reported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.preprocess import image_pixels, preprocess_images, tokenize
from zoo.reference import SENTENCES, Comparison, asset_path, compare_outputs, synthetic_images, synthetic_pixels
from zoo.schema import ModelEntry


@dataclass(frozen=True)
class ParityCase:
    label: str
    inputs: dict[str, torch.Tensor]
    real: bool = False  # real photographs or sentences, as opposed to synthetic patterns


def parity_cases(entry: ModelEntry, tokenizer: Any = None) -> list[ParityCase]:
    """Inputs that exercise every dynamic axis at sizes other than the export example's."""
    if entry.output.kind == "detection":  # one image at its own size: landscape, portrait, photos
        return [
            ParityCase("synthetic 240x320", {"image": synthetic_pixels(1, (240, 320)).float()}),
            ParityCase("synthetic 300x200", {"image": synthetic_pixels(1, (300, 200)).float()}),
            *[ParityCase(f"photo {name}", {"image": image_pixels(asset_path(name))}, real=True)
              for name in ("flower.jpg", "china.jpg")],
        ]
    if entry.output.kind == "segmentation":  # any height and width: square, wide, and a photo's own shape
        height, width = entry.input.size
        return [
            ParityCase("synthetic batch 1", {"pixel_values": synthetic_images(entry.input, 1)}),
            ParityCase(f"synthetic batch 2 at {height * 3 // 4}x{width}",
                       {"pixel_values": synthetic_images(entry.input, 2, (height * 3 // 4, width))}),
            ParityCase("photo batch 1", {"pixel_values": preprocess_images(entry.input, [asset_path("flower.jpg")])},
                       real=True),
        ]
    if entry.modality == "image":
        return [
            ParityCase("synthetic batch 1", {"pixel_values": synthetic_images(entry.input, 1)}),
            ParityCase("synthetic batch 5", {"pixel_values": synthetic_images(entry.input, 5)}),
            ParityCase("photos batch 2", {"pixel_values": preprocess_images(
                entry.input, [asset_path("flower.jpg"), asset_path("china.jpg")])}, real=True),
        ]
    if entry.output.kind == "span-logits":  # question answering: the windows serve feeds, long contexts too
        return _answer_cases(entry, tokenizer)
    long_text = " ".join(SENTENCES * 60)  # past max_length: exercises truncation and the longest sequence
    cases = [("1 text, 3 tokens", [SENTENCES[3]]), ("1 text", [SENTENCES[1]]),
             ("4 texts, mixed lengths (padded)", list(SENTENCES)), ("2 texts, truncated at max_length", [long_text, SENTENCES[0]])]
    return [ParityCase(f"{label}: seq {t['input_ids'].shape[1]}", t, real=True)
            for label, texts in cases for t in [tokenize(tokenizer, texts)]]


def _answer_cases(entry: ModelEntry, tokenizer: Any) -> list[ParityCase]:
    """A short question + context (one window) and one whose context spans several overlapping windows,
    padded together as serve pads them."""
    from serve.qa import WindowTokenizer, default_stride

    length = entry.input.max_length
    windows = WindowTokenizer(tokenizer, length, default_stride(length), tokenizer.padding["pad_id"])
    cases = []
    for label, question, context in (("question + short context", "What do numbers do?", SENTENCES[2]),
                                     ("question + long context (windows)", "Who jumps?", " ".join(SENTENCES * 40))):
        feeds = windows.pad(windows.windows(question, context))
        shape = "x".join(map(str, feeds["input_ids"].shape))
        cases.append(ParityCase(f"{label}: {shape}", {k: torch.from_numpy(v) for k, v in feeds.items()}, real=True))
    return cases


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
