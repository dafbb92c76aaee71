"""What every task's evaluation shares: the model's logits over the validation split with the loss, and
the reference outputs a run's card stores (the inputs are the task's: zoo.tasks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn


if TYPE_CHECKING:
    from zoo.trainer import Trainer


@torch.inference_mode()
def evaluate(trainer: Trainer, model: nn.Module) -> dict[str, float | None]:
    """The task's metrics on the validation split, and "loss"."""
    model.eval()
    return trainer.implementation.evaluate(trainer, model)


def logits_and_targets(trainer: Trainer, model: nn.Module) -> tuple[float, list[torch.Tensor], list[torch.Tensor]]:
    """The mean loss over the validation examples, and per batch the model's outputs (float32) and the
    targets, on the CPU."""
    losses, logits, target = 0.0, [], []
    for inputs, labels in trainer.loader(False, 0):
        with trainer.autocast():
            batch = model(*trainer.to_device(inputs)).float()
        losses += float(trainer.criterion(batch, trainer.target(labels))) * len(labels)
        logits.append(batch.cpu())
        target.append(labels)
    return losses / max(1, len(trainer.dataset.val)), logits, target


def reference_cases(trainer: Trainer, model: nn.Module) -> list[dict[str, Any]]:
    """The fine-tuned model's own outputs on the task's fixed inputs: what `zoo validate RUN_DIR` checks."""
    from zoo.validation import reference_outputs

    return reference_outputs(trainer.entry, model, trainer.implementation.reference_cases(trainer.entry), trainer.tokenizer)
