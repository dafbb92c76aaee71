"""A run's evaluation on its validation split, per task, and the reference outputs its card stores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from zoo.heads import IGNORE_TOKEN, predictions
from zoo.metrics import classification_metrics, detection_metrics, entity_metrics, segmentation_metrics
from zoo.reference import SENTENCES

if TYPE_CHECKING:
    from zoo.trainer import Trainer


@torch.inference_mode()
def evaluate(trainer: Trainer, model: nn.Module) -> dict[str, float]:
    model.eval()
    if trainer.qa:
        return evaluate_answers(trainer, model)
    if trainer.detection:
        detections, targets = [], []
        for inputs, labels in trainer.loader(False, 0):
            images, moved = trainer.detection_batch(inputs, labels)
            with trainer.autocast():
                detections += model.detect(images)
            targets += moved
        return {"loss": None, **detection_metrics(detections, targets)}
    losses, predicted, target = 0.0, [], []
    for inputs, labels in trainer.loader(False, 0):
        with trainer.autocast():
            logits = model(*trainer.to_device(inputs)).float()
        losses += float(trainer.criterion(logits, trainer.target(labels))) * len(labels)
        predicted.append(predictions(trainer.config.head, logits).cpu())  # NER: (batch, tokens) per batch
        target.append(labels)
    if trainer.tokens:  # one tag per word (its first sub-word); words cut off by max_length are not scored
        names = trainer.dataset.labels
        predicted_tags, target_tags = [], []
        for batch_predicted, batch_target in zip(predicted, target):
            for row_predicted, row_target in zip(batch_predicted, batch_target):
                keep = row_target != IGNORE_TOKEN
                predicted_tags.append([names[i] for i in row_predicted[keep].tolist()])
                target_tags.append([names[i] for i in row_target[keep].tolist()])
        return {"loss": losses / max(1, len(trainer.dataset.val)), **entity_metrics(predicted_tags, target_tags)}
    predicted_all, target_all = torch.cat([p.flatten() for p in predicted]), torch.cat([t.flatten() for t in target])
    score = segmentation_metrics if trainer.segmentation else classification_metrics
    metrics = score(predicted_all, target_all, len(trainer.dataset.labels))
    examples = len(trainer.dataset.val)
    return {"loss": losses / max(1, examples), **metrics}

def evaluate_answers(trainer: Trainer, model: nn.Module) -> dict[str, float]:
    """Each held-out question through its windows and serve.qa's decoding (what serve answers), scored
    against every reference answer with SQuAD's exact match and F1 (torchmetrics); the loss is per window."""
    from torchmetrics.functional.text import squad

    from serve.qa import answer
    from zoo.loaders import span_target

    predictions_, targets, loss, windows = [], [], 0.0, 0
    for index, example in enumerate(trainer.dataset.val):
        encodings = trainer.windows.windows(example.question, example.item)
        feeds = trainer.windows.pad(encodings)
        with trainer.autocast():
            logits = model(*[torch.from_numpy(feeds[name]).to(trainer.runtime.device)
                             for name in ("input_ids", "attention_mask")]).float()
        target = torch.tensor([span_target(e, *example.answers[0]) for e in encodings], device=logits.device)
        loss += float(trainer.criterion(logits, target)) * len(encodings)
        windows += len(encodings)
        found = answer(example.item, list(logits.cpu().numpy()), encodings)
        predictions_.append({"prediction_text": found["answer"], "id": str(index)})
        targets.append({"id": str(index), "answers": {"answer_start": [a[0] for a in example.answers],
                                                      "text": [a[1] for a in example.answers]}})
    scores = squad(predictions_, targets)
    return {"loss": loss / max(1, windows), "squad_f1": float(scores["f1"]) / 100,
            "exact_match": float(scores["exact_match"]) / 100}

def reference_cases(trainer: Trainer, model: nn.Module) -> list[dict[str, Any]]:
    """The fine-tuned model's own outputs on fixed inputs: what `zoo validate RUN_DIR` checks."""
    from zoo.validation import case_inputs, run_model

    model.eval()
    if trainer.segmentation:  # per-pixel logits: small inputs keep the card small (2 x classes x 48 x 64)
        cases: list[dict[str, Any]] = [{"input": "synthetic:48x64", "batch": 2}]
    elif trainer.detection:  # one image per case; rows of x1 y1 x2 y2 score label
        cases = [{"input": "synthetic:240x320", "batch": 1}, {"input": "asset:flower.jpg", "batch": 1}]
    elif trainer.entry.modality == "image":
        cases = [{"input": "synthetic", "batch": 2}, {"input": "asset:flower.jpg", "batch": 1}]
    else:
        cases = [{"input": "texts", "batch": len(SENTENCES), "texts": list(SENTENCES)}]
    for case in cases:
        inputs = case_inputs(trainer.entry, case["input"], case.pop("batch"), case.get("texts", ()), trainer.tokenizer)
        output = run_model(model, inputs)  # 8 significant digits hold a float32 exactly enough
        case["output"] = np.array([float(f"{v:.8g}") for v in output.ravel()]).reshape(output.shape).tolist()
    return cases

