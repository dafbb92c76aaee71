"""Image and text classification: a folder of class subfolders or a CSV/JSONL of (text, label); one
linear head (multi-class softmax, or one sigmoid logit with --head binary); macro-F1 and accuracy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from serve.manifest import Postprocessing
from zoo.config import FinetuneConfig
from zoo.data import Dataset, load_dataset
from zoo.evaluation import predicted_and_target
from zoo.metrics import classification_metrics
from zoo.schema import ModelEntry
from zoo.tasks.inputs import ExportIO, ParityCase, image_io, modality_cases, text_io, text_reference_cases

if TYPE_CHECKING:
    from zoo.trainer import Trainer


def load_data(path: str | Path, entry: ModelEntry, config: FinetuneConfig) -> Dataset:
    return load_dataset(path, entry.modality, config.val_fraction, config.seed)


def evaluate(trainer: Trainer, model: nn.Module) -> dict[str, float | None]:
    loss, predicted, target = predicted_and_target(trainer, model)
    metrics = classification_metrics(torch.cat([p.flatten() for p in predicted]), torch.cat([t.flatten() for t in target]),
                                     len(trainer.dataset.labels))
    return {"loss": loss, **metrics}


def reference_cases(entry: ModelEntry) -> list[dict[str, Any]]:
    if entry.modality == "image":
        return [{"input": "synthetic", "batch": 2}, {"input": "asset:flower.jpg", "batch": 1}]
    return text_reference_cases()


def parity_cases(entry: ModelEntry, tokenizer: Any = None) -> list[ParityCase]:
    return modality_cases(entry, tokenizer)


def summary(dataset: Dataset) -> dict[str, Any]:
    """Examples per class."""
    count = lambda examples: dict(Counter(dataset.labels[e.label] for e in examples))  # noqa: E731
    return {"train": count(dataset.train), "val": count(dataset.val)}


def bundle_postprocessing(entry: ModelEntry) -> Postprocessing:
    """Top-k labels by softmax, or a binary head's sigmoid (P of labels[1])."""
    binary = entry.builder_args.get("head") == "binary"
    return Postprocessing(kind="classification", labels=list(entry.output.labels),
                          activation="sigmoid" if binary else "softmax")


def export_io(entry: ModelEntry, tokenizer: Any = None) -> ExportIO:
    return image_io(entry) if entry.modality == "image" else text_io(tokenizer)
