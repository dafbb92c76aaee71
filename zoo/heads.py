"""Task heads on a pretrained backbone: multi-class (softmax cross-entropy, one logit per class) or
binary (one logit, sigmoid + BCE-with-logits). Image models get their last classifier layer
replaced in place; text encoders get a linear layer on their pooled output."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from zoo.errors import BuildError
from zoo.schema import ModelEntry

HeadKind = Literal["multiclass", "binary"]
HEAD_KINDS = ("multiclass", "binary")


class TextClassifier(nn.Module):
    """A text encoder (pooled vector) followed by dropout and a linear head."""

    def __init__(self, encoder: nn.Module, dim: int, outputs: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(input_ids, attention_mask)))


def head_outputs(kind: str, num_labels: int) -> int:
    if kind == "binary":
        if num_labels != 2:
            raise BuildError(f"a binary head needs exactly two labels, the data has {num_labels}; use --head multiclass")
        return 1
    return num_labels


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    found = None
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear):
                found = (module, child_name, child)
    if found is None:
        raise BuildError(f"{type(model).__name__} has no linear classifier layer to replace")
    return found


def attach_head(model: nn.Module, entry: ModelEntry, kind: str, num_labels: int) -> nn.Module:
    """`model` with a freshly initialised head of the right size; the head's parameters are the
    ones `head_parameter_names` returns."""
    outputs = head_outputs(kind, num_labels)
    if entry.modality == "text":
        return TextClassifier(model, entry.output.dim, outputs)
    parent, name, old = _last_linear(model)
    setattr(parent, name, nn.Linear(old.in_features, outputs))
    return model


def head_prefix(model: nn.Module) -> str:
    """Parameter-name prefix of the head (`head.` for text, the replaced layer's path for images)."""
    if isinstance(model, TextClassifier):
        return "head."
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear):
                last = f"{name}.{child_name}." if name else f"{child_name}."
    return last


def loss_function(kind: str, label_smoothing: float = 0.0) -> nn.Module:
    if kind == "binary":
        return nn.BCEWithLogitsLoss()  # the numerically stable log-sigmoid form
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def predictions(kind: str, logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if kind == "binary" else logits.argmax(dim=1)
