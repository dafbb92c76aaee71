"""Task heads on a pretrained backbone: multi-class (softmax cross-entropy, one logit per class) or
binary (one logit, sigmoid + BCE-with-logits). Image models get their last classifier layer
replaced in place; text encoders get a linear layer on their pooled output, or on every token's
hidden state for token classification (NER: the "token" head) and answer spans (the "span" head: start
and end logits per token); segmentation models
get new per-pixel classifier convolutions (pixels marked 255 count in no loss); detectors get a new
box classifier for the classes plus the background (their losses are torchvision's own)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from zoo.builders.detection import DetectionNet
from zoo.builders.segmentation import SegmentationNet
from zoo.errors import BuildError
from zoo.schema import ModelEntry

HeadKind = Literal["multiclass", "binary", "token", "span"]
# What users choose; "token" (NER) and "span" (question answering) follow from the data.
IGNORE_TOKEN = -100  # label of sub-word continuations, special tokens and padding: no loss, no metric


class TextClassifier(nn.Module):
    """A text encoder (pooled vector) followed by dropout and a linear head."""

    def __init__(self, encoder: nn.Module, dim: int, outputs: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(input_ids, attention_mask)))


class TokenClassifier(nn.Module):
    """A text encoder's per-token hidden states followed by dropout and a linear layer: one row of
    label logits per token (named-entity recognition)."""

    def __init__(self, encoder: nn.Module, dim: int, outputs: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder  # zoo.builders.hf_encoder.TextEncoder; its pooling is not used
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(hidden))


def head_outputs(kind: str, num_labels: int) -> int:
    if kind == "span":
        return 2  # start and end logits per token
    if kind == "binary":
        if num_labels != 2:
            raise BuildError(f"a binary head needs exactly two labels, the data has {num_labels}; use --head multiclass")
        return 1
    return num_labels


def _last_linear_name(model: nn.Module) -> str:
    """The path of the model's last linear layer in module order: the classifier. (The last one registered,
    so a transformers model's `classifier`, a direct child registered after its encoder, and not the
    encoder's last linear layer, which a walk over parents' children would see last.)"""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise BuildError(f"{type(model).__name__} has no linear classifier layer to replace")
    return names[-1]


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    path = _last_linear_name(model)
    parent, _, name = path.rpartition(".")
    return model.get_submodule(parent), name, model.get_submodule(path)


def attach_head(model: nn.Module, entry: ModelEntry, kind: str, num_labels: int) -> nn.Module:
    """`model` with a freshly initialised head of the right size; the head's parameters are the
    ones `head_parameter_names` returns."""
    outputs = head_outputs(kind, num_labels)
    if isinstance(model, SegmentationNet):
        if kind != "multiclass":
            raise BuildError(f"segmentation takes a multiclass head (one logit per class and pixel), not {kind!r}")
        return _segmentation_head(model, entry.builder_args["num_classes"], outputs)
    if isinstance(model, DetectionNet):
        if kind != "multiclass":
            raise BuildError(f"detection takes a multiclass head (one score per class and box), not {kind!r}")
        return _detection_head(model, outputs)  # the labels include the background, index 0
    if entry.modality == "text":
        kind_class = TokenClassifier if kind in ("token", "span") else TextClassifier
        return kind_class(model, entry.output.dim, outputs)
    parent, name, old = _last_linear(model)
    setattr(parent, name, nn.Linear(old.in_features, outputs))
    return model


def _segmentation_head(model: SegmentationNet, upstream_classes: int, outputs: int) -> SegmentationNet:
    """The classifier's per-class 1x1 convolutions (LR-ASPP: low and high; DeepLabV3: the last) redrawn
    for `outputs` classes; the auxiliary classifier, used by neither forward nor the loss, is dropped."""
    replaced = 0
    for parent in model.net.classifier.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.out_channels == upstream_classes:
                setattr(parent, name, nn.Conv2d(child.in_channels, outputs, child.kernel_size, bias=child.bias is not None))
                replaced += 1
    if not replaced:
        raise BuildError(f"{type(model.net).__name__} has no {upstream_classes}-class convolution to replace")
    if getattr(model.net, "aux_classifier", None) is not None:
        model.net.aux_classifier = None
    return model


def _detection_head(model: DetectionNet, classes: int) -> DetectionNet:
    """Faster R-CNN: a new box predictor (class scores and per-class box deltas). SSDlite: a new
    classification head over the same anchors; its class-agnostic box regression head is kept."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.ssdlite import SSDLiteClassificationHead

    net = model.net
    if hasattr(net, "roi_heads"):
        predictor = net.roi_heads.box_predictor
        net.roi_heads.box_predictor = FastRCNNPredictor(predictor.cls_score.in_features, classes)
    else:
        old = net.head.classification_head
        in_channels = [block[0][0].in_channels for block in old.module_list]
        anchors = net.anchor_generator.num_anchors_per_location()
        norm = type(old.module_list[0][0][1])
        eps, momentum = old.module_list[0][0][1].eps, old.module_list[0][0][1].momentum
        net.head.classification_head = SSDLiteClassificationHead(
            in_channels, anchors, classes, lambda channels: norm(channels, eps=eps, momentum=momentum))
    return model


def head_prefix(model: nn.Module) -> str:
    """Parameter-name prefix of the head (`head.` for text, the decoder for segmentation, the replaced
    layer's path for images)."""
    if isinstance(model, (TextClassifier, TokenClassifier)):
        return "head."
    if isinstance(model, SegmentationNet):
        return "net.classifier."
    if isinstance(model, DetectionNet):
        return "net.roi_heads.box_predictor." if hasattr(model.net, "roi_heads") else "net.head.classification_head."
    return f"{_last_linear_name(model)}."
