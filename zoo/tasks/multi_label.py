"""Multi-label image classification: an image folder and a CSV naming each image's labels (any number,
none included); one sigmoid logit per label, binary cross-entropy; mean average precision over the labels
and micro / macro F1 at the bundle's threshold (torchmetrics). Serve returns every label scoring at or
above the threshold (serve.multi_label)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from serve.manifest import Postprocessing
from zoo.config import FinetuneConfig
from zoo.data import Dataset, Example, random_split
from zoo.data.dataset import image_problem
from zoo.errors import InputError
from zoo.evaluation import logits_and_targets
from zoo.loaders import train_image_transform
from zoo.preprocess import image_transform, open_image
from zoo import reference
from zoo.reference import Comparison
from zoo.schema import ModelEntry
from zoo.tasks.inputs import ExportIO, ParityCase, image_io, modality_cases

if TYPE_CHECKING:
    from zoo.trainer import Trainer

LABELS_FILE = "labels.csv"  # in the image folder: image,labels[,split]
SEPARATOR = ";"  # between an image's labels (a label may contain spaces)
THRESHOLD = 0.5  # a label is predicted when its sigmoid reaches this (the bundle's score_threshold)


def load_data(path: str | Path, entry: ModelEntry, config: FinetuneConfig) -> Dataset:
    """`path`: a CSV with columns image (relative to the CSV's folder), labels (separated by ';', may be
    empty) and optionally split (train / val), or a folder holding labels.csv."""
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_FILE
    if not path.is_file():
        raise InputError(f"--data {path} does not exist; multi-label data is an image folder with a {LABELS_FILE} "
                         f"of image,labels rows (labels separated by '{SEPARATOR}')")
    rows = _rows(path)
    names = sorted({label for row in rows if row.get("split") != "val" for label in row["labels"]})
    if len(names) < 2:
        raise InputError(f"{path}: found {len(names)} label(s) in the training rows; multi-label classification "
                         "needs at least two")
    unseen = sorted({label for row in rows for label in row["labels"]} - set(names))
    if unseen:
        raise InputError(f"{path}: labels {', '.join(unseen)} appear only in the val split; every validation "
                         "label needs training images")
    skipped: list[str] = []
    examples = {"train": [], "val": []}
    for row in rows:
        image = path.parent / row["image"]
        if (problem := image_problem(image)) is not None:
            skipped.append(f"{path}:{row['line']}: {image}: {problem}")
        else:
            target = tuple(sorted(names.index(label) for label in row["labels"]))
            examples[row.get("split") or "train"].append(Example(str(image), 0, target=target))
    train, val = examples["train"], examples["val"]
    if val:
        split = "given"
    else:
        train, val = random_split(train, config.val_fraction, config.seed)
        split = f"random seed={config.seed} fraction={config.val_fraction}"
    if not train:
        raise InputError(f"{path}: no readable training images")
    return Dataset("multi-label-image-classification", "image", names, train, val, str(path.parent), split, skipped)


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("image", "labels") if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}; expected "
                                 f"a header image,labels (and optionally split)")
            rows = []
            for line, row in enumerate(reader, start=2):
                split = (row.get("split") or "").strip()
                if split not in ("", "train", "val"):
                    raise InputError(f"{path}:{line}: split {split!r}; expected train, val or empty")
                labels = [label.strip() for label in (row["labels"] or "").split(SEPARATOR) if label.strip()]
                if not (row["image"] or "").strip():
                    raise InputError(f"{path}:{line}: the image column is empty")
                rows.append({"image": row["image"].strip(), "labels": labels, "split": split, "line": line})
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not rows:
        raise InputError(f"{path} has no rows")
    return rows


class LabelledImages(TorchDataset):
    """(image, multi-hot float vector) pairs."""

    def __init__(self, examples: Sequence[Example], transform, labels: int):
        self.examples, self.transform, self.labels = list(examples), transform, labels

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        example = self.examples[index]
        target = torch.zeros(self.labels)
        target[list(example.target)] = 1.0
        return self.transform(open_image(example.item)), target


def _collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    images, targets = zip(*batch)
    return {"pixel_values": torch.stack(images)}, torch.stack(targets)


def batching(examples: Sequence[Example], train: bool, trainer: Trainer) -> tuple[Sequence[Any], Callable]:
    spec = trainer.entry.input
    transform = train_image_transform(spec, trainer.config.augment) if train else image_transform(spec)
    return LabelledImages(examples, transform, len(trainer.dataset.labels)), _collate


def criterion(config: FinetuneConfig) -> nn.Module:
    """Binary cross-entropy of each label's logit (the numerically stable log-sigmoid form)."""
    if config.label_smoothing:
        raise InputError("--label-smoothing applies to multiclass heads only; multi-label heads take none")
    return nn.BCEWithLogitsLoss()


def evaluate(trainer: Trainer, model: nn.Module) -> dict[str, float | None]:
    """Mean average precision over the labels with a positive validation image, and micro / macro F1 at
    THRESHOLD (macro: over the labels present in the targets or the predictions, as scikit-learn's
    zero_division leaves them)."""
    from torchmetrics.functional.classification import multilabel_average_precision, multilabel_f1_score

    loss, logits, target = logits_and_targets(trainer, model)
    scores, truth = torch.sigmoid(torch.cat(logits)), torch.cat(target).long()
    kwargs = {"num_labels": truth.shape[1], "validate_args": False}
    present = truth.sum(dim=0) > 0
    ap = multilabel_average_precision(scores, truth, average=None, **kwargs)
    predicted = scores >= THRESHOLD
    f1 = multilabel_f1_score(scores, truth, threshold=THRESHOLD, average=None, **kwargs)
    seen = present | predicted.any(dim=0)
    return {"loss": loss, "mean_ap": float(ap[present].mean()) if present.any() else 0.0,
            "micro_f1": float(multilabel_f1_score(scores, truth, threshold=THRESHOLD, average="micro", **kwargs)),
            "macro_f1": float(f1[seen].mean()) if seen.any() else 1.0}


def reference_cases(entry: ModelEntry) -> list[dict[str, Any]]:
    return [{"input": "synthetic", "batch": 2}, {"input": "asset:flower.jpg", "batch": 1}]


def parity_cases(entry: ModelEntry, tokenizer: Any = None) -> list[ParityCase]:
    return modality_cases(entry, tokenizer)


def summary(dataset: Dataset) -> dict[str, Any]:
    """Images per label, and images without any."""
    def count(examples: list[Example]) -> dict[str, int]:
        counts = Counter(dataset.labels[i] for e in examples for i in e.target)
        return {**dict(sorted(counts.items())), "(none)": sum(not e.target for e in examples)}

    return {"train": count(dataset.train), "val": count(dataset.val)}


def compare(label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None, cosine_floor: float | None = None,
            scale: float | None = None) -> Comparison:
    """Each row's label set at THRESHOLD must agree (every label's logit on the same side of its logit)."""
    cut = float(np.log(THRESHOLD / (1 - THRESHOLD)))
    return reference.compare(label, actual, expected, atol, classifier=True, cosine_floor=cosine_floor,
                             decide=lambda logits: logits >= cut, agreement_name="label-set agreement")


def bundle_postprocessing(entry: ModelEntry) -> Postprocessing:
    """A sigmoid per label; serve returns the labels scoring at least THRESHOLD (a request may move it)."""
    return Postprocessing(kind="multi-label", labels=list(entry.output.labels), activation="sigmoid",
                          score_threshold=THRESHOLD)


def export_io(entry: ModelEntry, tokenizer: Any = None) -> ExportIO:
    return image_io(entry)
