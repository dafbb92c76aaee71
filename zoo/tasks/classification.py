"""Image and text classification: a folder of class subfolders or a CSV/JSONL of (text, label); one
linear head (multi-class softmax, or one sigmoid logit with --head binary); macro-F1 and accuracy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from serve.manifest import Postprocessing
from zoo.config import FinetuneConfig
from zoo.data import Dataset, Example, load_dataset
from zoo.evaluation import logits_and_targets
from zoo.loaders import ImageExamples, TextCollate, TextExamples, image_collate, train_image_transform
from zoo.metrics import classification_metrics
from zoo.preprocess import image_transform
from zoo import reference
from zoo.reference import Comparison
from zoo.schema import ModelEntry
from zoo.tasks.inputs import ExportIO, ParityCase, image_io, modality_cases, text_io, text_reference_cases

if TYPE_CHECKING:
    from zoo.trainer import Trainer


def load_data(path: str | Path, entry: ModelEntry, config: FinetuneConfig) -> Dataset:
    return load_dataset(path, entry.modality, config.val_fraction, config.seed)


def batching(examples: Sequence[Example], train: bool, trainer: Trainer) -> tuple[Sequence[Any], Callable]:
    """Images (training: the run's augmentation; else the bundle's preprocessing) or texts padded to each
    batch's longest; the target is the class index."""
    if trainer.entry.modality == "image":
        spec = trainer.entry.input
        transform = train_image_transform(spec, trainer.config.augment) if train else image_transform(spec)
        return ImageExamples(examples, transform), image_collate
    return TextExamples(examples), TextCollate(trainer.tokenizer)


class BinaryLoss(nn.Module):
    """BCE-with-logits (the numerically stable log-sigmoid form) of one logit per example against 0/1."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float())


def criterion(config: FinetuneConfig) -> nn.Module:
    return BinaryLoss() if config.head == "binary" else nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """The class of each row: the larger softmax, or a binary head's logit above 0."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(dim=1)


def evaluate(trainer: Trainer, model: nn.Module) -> dict[str, float | None]:
    loss, logits, target = logits_and_targets(trainer, model)
    metrics = classification_metrics(torch.cat([predictions(batch) for batch in logits]), torch.cat(target),
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


def compare(label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None, cosine_floor: float | None = None,
            scale: float | None = None) -> Comparison:
    """Each row's class must agree (the argmax, or a binary head's sign)."""
    return reference.compare(label, actual, expected, atol, classifier=True, cosine_floor=cosine_floor)


def bundle_postprocessing(entry: ModelEntry) -> Postprocessing:
    """Top-k labels by softmax, or a binary head's sigmoid (P of labels[1])."""
    binary = entry.builder_args.get("head") == "binary"
    return Postprocessing(kind="classification", labels=list(entry.output.labels),
                          activation="sigmoid" if binary else "softmax")


def export_io(entry: ModelEntry, tokenizer: Any = None) -> ExportIO:
    return image_io(entry) if entry.modality == "image" else text_io(tokenizer)
