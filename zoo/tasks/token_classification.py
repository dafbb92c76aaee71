"""Token classification (named-entity recognition): CoNLL or JSONL sentences of (word, IOB2 tag); a linear
layer on every token's hidden state; entity-level F1, precision and recall (seqeval)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from serve.manifest import Postprocessing
from zoo.config import FinetuneConfig
from zoo.data import Dataset, Example, load_token_tags
from zoo.evaluation import logits_and_targets
from zoo.heads import IGNORE_TOKEN
from zoo.loaders import TokenCollate
from zoo.metrics import entity_metrics
from zoo import reference
from zoo.reference import Comparison
from zoo.schema import ModelEntry
from zoo.tasks.inputs import ExportIO, ParityCase, text_cases, text_io, text_reference_cases

if TYPE_CHECKING:
    from zoo.trainer import Trainer


def load_data(path: str | Path, entry: ModelEntry, config: FinetuneConfig) -> Dataset:
    return load_token_tags(path, config.val_fraction, config.seed)


def batching(examples: Sequence[Example], train: bool, trainer: Trainer) -> tuple[Sequence[Any], Callable]:
    """Sentences tokenised per batch, each word's tag on its first sub-word (zoo.loaders.TokenCollate)."""
    return list(examples), TokenCollate(trainer.tokenizer)  # a list is a map-style dataset


class TokenLoss(nn.Module):
    """Cross-entropy over every labelled token of a (batch, tokens, labels) output."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.loss = nn.CrossEntropyLoss(ignore_index=IGNORE_TOKEN, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def criterion(config: FinetuneConfig) -> nn.Module:
    return TokenLoss(config.label_smoothing)


def evaluate(trainer: Trainer, model: nn.Module) -> dict[str, float | None]:
    """One tag per word (its first sub-word); words cut off by max_length are not scored."""
    loss, logits, target = logits_and_targets(trainer, model)
    names = trainer.dataset.labels
    predicted_tags, target_tags = [], []
    for batch_logits, batch_target in zip(logits, target):
        for row_predicted, row_target in zip(batch_logits.argmax(dim=-1), batch_target):
            keep = row_target != IGNORE_TOKEN
            predicted_tags.append([names[i] for i in row_predicted[keep].tolist()])
            target_tags.append([names[i] for i in row_target[keep].tolist()])
    return {"loss": loss, **entity_metrics(predicted_tags, target_tags)}


def reference_cases(entry: ModelEntry) -> list[dict[str, Any]]:
    return text_reference_cases()


def parity_cases(entry: ModelEntry, tokenizer: Any = None) -> list[ParityCase]:
    return text_cases(tokenizer)


def summary(dataset: Dataset) -> dict[str, Any]:
    """Sentences per split, entities per type (B- tags)."""
    count = lambda examples: dict(Counter(dataset.labels[t][2:] for e in examples for t in e.tags  # noqa: E731
                                          if dataset.labels[t].startswith("B-")))
    return {"sentences": {"train": len(dataset.train), "val": len(dataset.val)}, "train": count(dataset.train),
            "val": count(dataset.val)}


def compare(label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None, cosine_floor: float | None = None,
            scale: float | None = None) -> Comparison:
    """Each token's tag must agree."""
    return reference.compare(label, actual, expected, atol, classifier=True, cosine_floor=cosine_floor)


def bundle_postprocessing(entry: ModelEntry) -> Postprocessing:
    """Entities from each word's first sub-word (serve.entities; a request may ask for "simple")."""
    return Postprocessing(kind="token-classification", labels=list(entry.output.labels), aggregation="first")


def export_io(entry: ModelEntry, tokenizer: Any = None) -> ExportIO:
    """Label logits per token."""
    return text_io(tokenizer)
