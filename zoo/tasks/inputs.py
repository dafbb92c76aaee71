"""The inputs every task's export is checked on (parity with torch), built from the fixed synthetic
patterns, the bundled photographs and the reference sentences of zoo.reference: each case exercises a
dynamic axis at a size other than the export example's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zoo.preprocess import preprocess_images, tokenize
from zoo.reference import SENTENCES, asset_path, synthetic_images
from zoo.schema import ModelEntry


@dataclass(frozen=True)
class ParityCase:
    label: str
    inputs: dict[str, torch.Tensor]
    real: bool = False  # real photographs or sentences, as opposed to synthetic patterns


def image_cases(entry: ModelEntry) -> list[ParityCase]:
    """Batch 1 and 5 of synthetic patterns, and two photographs."""
    return [
        ParityCase("synthetic batch 1", {"pixel_values": synthetic_images(entry.input, 1)}),
        ParityCase("synthetic batch 5", {"pixel_values": synthetic_images(entry.input, 5)}),
        ParityCase("photos batch 2", {"pixel_values": preprocess_images(
            entry.input, [asset_path("flower.jpg"), asset_path("china.jpg")])}, real=True),
    ]


def text_cases(tokenizer: Any) -> list[ParityCase]:
    """One short text, one sentence, four texts of mixed lengths padded together, and two texts of which
    one is cut at max_length (the longest sequence)."""
    long_text = " ".join(SENTENCES * 60)
    cases = [("1 text, 3 tokens", [SENTENCES[3]]), ("1 text", [SENTENCES[1]]),
             ("4 texts, mixed lengths (padded)", list(SENTENCES)), ("2 texts, truncated at max_length", [long_text, SENTENCES[0]])]
    return [ParityCase(f"{label}: seq {t['input_ids'].shape[1]}", t, real=True)
            for label, texts in cases for t in [tokenize(tokenizer, texts)]]


def text_reference_cases() -> list[dict[str, Any]]:
    """The reference sentences, all in one batch: what a text run's card stores the outputs of."""
    return [{"input": "texts", "batch": len(SENTENCES), "texts": list(SENTENCES)}]


def modality_cases(entry: ModelEntry, tokenizer: Any) -> list[ParityCase]:
    return image_cases(entry) if entry.modality == "image" else text_cases(tokenizer)


ExportIO = tuple[dict[str, torch.Tensor], dict[str, dict[int, str]], list[str]]  # example, dynamic axes, outputs


def image_io(entry: ModelEntry, any_size: bool = False) -> ExportIO:
    """Two synthetic images; the batch axis dynamic (and height and width with `any_size`)."""
    axes = {0: "batch", 2: "height", 3: "width"} if any_size else {0: "batch"}
    return {"pixel_values": synthetic_images(entry.input, 2)}, {"pixel_values": axes}, ["logits"]


def text_io(tokenizer: Any, output_name: str = "logits") -> ExportIO:
    """Two reference sentences; batch and sequence dynamic."""
    axes = {0: "batch", 1: "sequence"}
    return tokenize(tokenizer, SENTENCES[:2]), {"input_ids": axes, "attention_mask": axes}, [output_name]
