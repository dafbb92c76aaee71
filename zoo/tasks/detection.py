"""Object detection: images with COCO or Pascal VOC boxes; a new box classifier for the classes plus the
background, trained with torchvision's own losses; mAP over the validation images, each at its own size."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from serve.manifest import Postprocessing
from zoo.config import FinetuneConfig
from zoo.data import Dataset, Example, load_detection
from zoo.loaders import DetectionExamples, detection_collate, detection_transform
from zoo.metrics import detection_metrics
from zoo.preprocess import image_pixels
from zoo.reference import Comparison, asset_path, compare_detections, synthetic_pixels
from zoo.schema import ModelEntry
from zoo.tasks.inputs import ExportIO, ParityCase

if TYPE_CHECKING:
    from zoo.trainer import Trainer


DEFAULT_MIN_SCORE = 0.5  # detections below this score are not returned by serve (a request may lower it)


def load_data(path: str | Path, entry: ModelEntry, config: FinetuneConfig) -> Dataset:
    return load_detection(path, config.val_fraction, config.seed)


def batching(examples: Sequence[Example], train: bool, trainer: Trainer) -> tuple[Sequence[Any], Callable]:
    """Images at their own size with their boxes (training: flipped together); lists, not stacked."""
    return DetectionExamples(examples, detection_transform(train)), detection_collate


def criterion(config: FinetuneConfig) -> None:
    """None: torchvision's detectors compute their own losses (model_loss)."""
    return None


def on_device(trainer: Trainer, inputs: dict, targets: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A batch's images and their {"boxes", "labels"} targets on the run's device."""
    device = trainer.runtime.device
    return ([image.to(device, non_blocking=True) for image in inputs["images"]],
            [{k: v.to(device, non_blocking=True) for k, v in target.items()} for target in targets])


def model_loss(trainer: Trainer, model: nn.Module, inputs: dict, targets: list) -> torch.Tensor:
    """torchvision's own losses in training mode: classification + box regression, summed."""
    return sum(model(*on_device(trainer, inputs, targets)).values())


def evaluate(trainer: Trainer, model: nn.Module) -> dict[str, float | None]:
    """mAP of the model's detections; no loss (torchvision's detectors compute it in training mode only)."""
    detections, targets = [], []
    for inputs, labels in trainer.loader(False, 0):
        images, moved = on_device(trainer, inputs, labels)
        with trainer.autocast():
            detections += model.detect(images)
        targets += moved
    return {"loss": None, **detection_metrics(detections, targets)}


def reference_cases(entry: ModelEntry) -> list[dict[str, Any]]:
    """One image per case; rows of x1 y1 x2 y2 score label."""
    return [{"input": "synthetic:240x320", "batch": 1}, {"input": "asset:flower.jpg", "batch": 1}]


def parity_cases(entry: ModelEntry, tokenizer: Any = None) -> list[ParityCase]:
    """One image at its own size: landscape, portrait, photos."""
    return [
        ParityCase("synthetic 240x320", {"image": synthetic_pixels(1, (240, 320)).float()}),
        ParityCase("synthetic 300x200", {"image": synthetic_pixels(1, (300, 200)).float()}),
        *[ParityCase(f"photo {name}", {"image": image_pixels(asset_path(name))}, real=True)
          for name in ("flower.jpg", "china.jpg")],
    ]


def summary(dataset: Dataset) -> dict[str, Any]:
    """Images per split, objects per class (labels[0] is the background)."""
    count = lambda examples: dict(Counter(dataset.labels[o[0]] for e in examples for o in e.objects))  # noqa: E731
    return {"images": {"train": len(dataset.train), "val": len(dataset.val)}, "train": count(dataset.train),
            "val": count(dataset.val)}


def compare(label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None, cosine_floor: float | None = None,
            scale: float | None = None) -> Comparison:
    """Rows of x1 y1 x2 y2 score label, compared as sets of detections, boxes relative to the image's
    longer side `scale` (zoo.reference.compare_detections); every detection serve returns by default
    (DEFAULT_MIN_SCORE) must have its partner."""
    return compare_detections(label, actual, expected, atol, scale or 1.0, served=DEFAULT_MIN_SCORE)


def bundle_postprocessing(entry: ModelEntry) -> Postprocessing:
    """Detections at or above DEFAULT_MIN_SCORE (a request may lower it)."""
    return Postprocessing(kind="detection", labels=list(entry.output.labels), score_threshold=DEFAULT_MIN_SCORE)


def export_io(entry: ModelEntry, tokenizer: Any = None) -> ExportIO:
    """One image of pixels in [0, 1] at its own size (the graph resizes and normalises); boxes, scores and
    labels, as many as it detects."""
    from zoo.builders.detection import OUTPUT_NAMES

    axes = {"image": {2: "height", 3: "width"}, **{name: {0: "detections"} for name in OUTPUT_NAMES}}
    return {"image": synthetic_pixels(1, (240, 320)).float()}, axes, list(OUTPUT_NAMES)
