"""Semantic segmentation: images with PNG masks of class indices; new per-pixel classifier convolutions;
mean IoU and pixel accuracy over the validation images, each at its own size."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from serve.manifest import Postprocessing
from zoo.config import FinetuneConfig
from zoo.data import IGNORE_INDEX, Dataset, Example, load_segmentation
from zoo.evaluation import logits_and_targets
from zoo.loaders import SegmentationExamples, segmentation_collate, segmentation_transform
from zoo.metrics import segmentation_metrics
from zoo.preprocess import preprocess_images
from zoo import reference
from zoo.reference import Comparison, asset_path, synthetic_images
from zoo.schema import ModelEntry
from zoo.tasks.inputs import ExportIO, ParityCase, image_io

if TYPE_CHECKING:
    from zoo.trainer import Trainer


def load_data(path: str | Path, entry: ModelEntry, config: FinetuneConfig) -> Dataset:
    return load_segmentation(path, config.val_fraction, config.seed)


def batching(examples: Sequence[Example], train: bool, trainer: Trainer) -> tuple[Sequence[Any], Callable]:
    """Images with their masks, transformed together; a batch padded to its largest image."""
    return SegmentationExamples(examples, segmentation_transform(trainer.entry.input, train)), segmentation_collate


def criterion(config: FinetuneConfig) -> nn.Module:
    """Per-pixel cross-entropy; pixels marked IGNORE_INDEX (255: borders, padding) count in no loss."""
    return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, label_smoothing=config.label_smoothing)


def evaluate(trainer: Trainer, model: nn.Module) -> dict[str, float | None]:
    loss, logits, target = logits_and_targets(trainer, model)
    metrics = segmentation_metrics(torch.cat([batch.argmax(dim=1).flatten() for batch in logits]),
                                   torch.cat([t.flatten() for t in target]), len(trainer.dataset.labels))
    return {"loss": loss, **metrics}


def reference_cases(entry: ModelEntry) -> list[dict[str, Any]]:
    """Per-pixel logits: small inputs keep the card small (2 x classes x 48 x 64)."""
    return [{"input": "synthetic:48x64", "batch": 2}]


def parity_cases(entry: ModelEntry, tokenizer: Any = None) -> list[ParityCase]:
    """Any height and width: square, wide, and a photo's own shape."""
    height, width = entry.input.size
    return [
        ParityCase("synthetic batch 1", {"pixel_values": synthetic_images(entry.input, 1)}),
        ParityCase(f"synthetic batch 2 at {height * 3 // 4}x{width}",
                   {"pixel_values": synthetic_images(entry.input, 2, (height * 3 // 4, width))}),
        ParityCase("photo batch 1", {"pixel_values": preprocess_images(entry.input, [asset_path("flower.jpg")])},
                   real=True),
    ]


def summary(dataset: Dataset) -> dict[str, Any]:
    """Images per split."""
    return {"train": len(dataset.train), "val": len(dataset.val)}


def compare(label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None, cosine_floor: float | None = None,
            scale: float | None = None) -> Comparison:
    """Per pixel (the class axis moved last): agreement and cosine of each pixel's class scores; a pixel's
    class at a boundary may flip, so agreement is reported, not required."""
    if actual.ndim == 4 and expected.ndim == 4:
        actual, expected = actual.transpose(0, 2, 3, 1), expected.transpose(0, 2, 3, 1)
    return reference.compare(label, actual, expected, atol, classifier=True, cosine_floor=cosine_floor,
                             top1_required=False)


def bundle_postprocessing(entry: ModelEntry) -> Postprocessing:
    """A class mask at the image's own resolution."""
    return Postprocessing(kind="segmentation", labels=list(entry.output.labels))


def export_io(entry: ModelEntry, tokenizer: Any = None) -> ExportIO:
    """Per-pixel logits for images of any height and width."""
    return image_io(entry, any_size=True)
