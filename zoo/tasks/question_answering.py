"""Extractive question answering: SQuAD JSON; start and end logits per token; each held-out question
decoded through its windows as serve answers it, scored with SQuAD's exact match and F1 (torchmetrics)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from serve.manifest import Postprocessing
from zoo.config import FinetuneConfig
from zoo.data import Dataset, Example, load_squad
from zoo.loaders import SpanCollate, span_features, span_target
from zoo import reference
from zoo.reference import SENTENCES, Comparison
from zoo.schema import ModelEntry
from zoo.tasks.inputs import ExportIO, ParityCase, text_io, text_reference_cases

if TYPE_CHECKING:
    from zoo.trainer import Trainer


def load_data(path: str | Path, entry: ModelEntry, config: FinetuneConfig) -> Dataset:
    return load_squad(path, config.val_fraction, config.seed)


def windows(trainer: Trainer):
    """The pass's question + context window tokenizer (serve.qa.WindowTokenizer): windows as serve cuts them."""
    if "windows" not in trainer.task_state:
        from serve.qa import WindowTokenizer, default_stride

        length = trainer.entry.input.max_length
        trainer.task_state["windows"] = WindowTokenizer(trainer.tokenizer, length, default_stride(length),
                                                        trainer.tokenizer.padding["pad_id"])
    return trainer.task_state["windows"]


def batching(examples: Sequence[Example], train: bool, trainer: Trainer) -> tuple[Sequence[Any], Callable]:
    """Windows of question + context as serve cuts them, each with its answer's token span."""
    return span_features(examples, windows(trainer)), SpanCollate(windows(trainer))


class SpanLoss(nn.Module):
    """Mean of the start and end cross-entropies over a window's tokens ((batch, tokens, 2) logits,
    (batch, 2) target positions)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cross_entropy = nn.functional.cross_entropy
        return (cross_entropy(logits[..., 0], target[:, 0]) + cross_entropy(logits[..., 1], target[:, 1])) / 2


def criterion(config: FinetuneConfig) -> nn.Module:
    return SpanLoss()


def evaluate(trainer: Trainer, model: nn.Module) -> dict[str, float | None]:
    """Exact match and F1 against every reference answer; the loss is per window."""
    from torchmetrics.functional.text import squad

    from serve.qa import answer

    predictions, targets, loss, count = [], [], 0.0, 0
    cutter = windows(trainer)
    for index, example in enumerate(trainer.dataset.val):
        encodings = cutter.windows(example.question, example.item)
        feeds = cutter.pad(encodings)
        with trainer.autocast():
            logits = model(*[torch.from_numpy(feeds[name]).to(trainer.runtime.device)
                             for name in ("input_ids", "attention_mask")]).float()
        target = torch.tensor([span_target(e, *example.answers[0]) for e in encodings], device=logits.device)
        loss += float(trainer.criterion(logits, target)) * len(encodings)
        count += len(encodings)
        found = answer(example.item, list(logits.cpu().numpy()), encodings)
        predictions.append({"prediction_text": found["answer"], "id": str(index)})
        targets.append({"id": str(index), "answers": {"answer_start": [a[0] for a in example.answers],
                                                      "text": [a[1] for a in example.answers]}})
    scores = squad(predictions, targets)
    return {"loss": loss / max(1, count), "squad_f1": float(scores["f1"]) / 100,
            "exact_match": float(scores["exact_match"]) / 100}


def reference_cases(entry: ModelEntry) -> list[dict[str, Any]]:
    return text_reference_cases()


def parity_cases(entry: ModelEntry, tokenizer: Any = None) -> list[ParityCase]:
    """A short question + context (one window) and one whose context spans several overlapping windows,
    padded together as serve pads them."""
    from serve.qa import WindowTokenizer, default_stride

    length = entry.input.max_length
    cutter = WindowTokenizer(tokenizer, length, default_stride(length), tokenizer.padding["pad_id"])
    cases = []
    for label, question, context in (("question + short context", "What do numbers do?", SENTENCES[2]),
                                     ("question + long context (windows)", "Who jumps?", " ".join(SENTENCES * 40))):
        feeds = cutter.pad(cutter.windows(question, context))
        shape = "x".join(map(str, feeds["input_ids"].shape))
        cases.append(ParityCase(f"{label}: {shape}", {k: torch.from_numpy(v) for k, v in feeds.items()}, real=True))
    return cases


def summary(dataset: Dataset) -> dict[str, Any]:
    """Questions and distinct contexts per split."""
    contexts = lambda examples: len({e.item for e in examples})  # noqa: E731
    return {"train": {"questions": len(dataset.train), "contexts": contexts(dataset.train)},
            "val": {"questions": len(dataset.val), "contexts": contexts(dataset.val)}}


def compare(label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None, cosine_floor: float | None = None,
            scale: float | None = None) -> Comparison:
    """Rows become each window's start and end logits over its tokens: agreement is of the answer's start
    and end positions, cosine of those two distributions (a token's (start, end) pair is no direction)."""
    if actual.ndim == 3 and expected.ndim == 3:
        actual, expected = actual.transpose(0, 2, 1), expected.transpose(0, 2, 1)
    return reference.compare(label, actual, expected, atol, classifier=True, cosine_floor=cosine_floor)


def bundle_postprocessing(entry: ModelEntry) -> Postprocessing:
    """Answers decoded over context windows as zoo trains and evaluates them (serve.qa)."""
    from serve.qa import MAX_ANSWER_TOKENS, default_stride

    return Postprocessing(kind="question-answering", labels=list(entry.output.labels),
                          stride=default_stride(entry.input.max_length), max_answer_tokens=MAX_ANSWER_TOKENS)


def export_io(entry: ModelEntry, tokenizer: Any = None) -> ExportIO:
    """Start and end logits per token."""
    return text_io(tokenizer)
