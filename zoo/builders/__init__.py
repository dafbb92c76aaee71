"""Model builders: `builder` name in the registry -> function(entry, weights dir or None) -> module."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from zoo.builders.detection import build_torchvision_detection
from zoo.builders.efficientnet_lite import EfficientNetLite
from zoo.builders.hf_encoder import build_hf_encoder
from zoo.builders.hf_task import build_hf_task
from zoo.builders.segmentation import build_torchvision_segmentation
from zoo.builders.state_dict import load_state_dict_strict, read_state_dict
from zoo.schema import ModelEntry


def build_efficientnet_lite(entry: ModelEntry, weights: Path | None) -> nn.Module:
    model = EfficientNetLite(entry.builder_args.get("variant", "lite0"), entry.builder_args["num_classes"],
                             image_size=entry.input.crop)
    if weights is not None:
        load_state_dict_strict(model, read_state_dict(weights, entry.weights_format), entry.id)
    return model


def build_torchvision(entry: ModelEntry, weights: Path | None) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(entry.builder_args["arch"], weights=None,
                                         num_classes=entry.builder_args["num_classes"])
    if weights is not None:
        load_state_dict_strict(model, read_state_dict(weights, entry.weights_format), entry.id)
    return model


def build_timm(entry: ModelEntry, weights: Path | None) -> nn.Module:
    """timm.create_model(model) with the entry's classes, loaded strictly from its safetensors file."""
    import timm

    model = timm.create_model(entry.builder_args["model"], pretrained=False,
                              num_classes=entry.builder_args["num_classes"])
    if weights is not None:
        load_state_dict_strict(model, read_state_dict(weights, entry.weights_format), entry.id)
    return model


def build_run(entry: ModelEntry, weights: Path | None) -> nn.Module:
    """A fine-tuned run: the base architecture with the run's head, loaded with the run's weights."""
    from zoo.heads import attach_head
    from zoo.runs import resolve_name

    base = resolve_name(entry.builder_args["base"])  # a registry id or a model spec
    model = attach_head(BUILDERS[base.builder](base, None), base, entry.builder_args["head"],
                        entry.builder_args["num_labels"])
    if weights is not None:
        load_state_dict_strict(model, read_state_dict(weights, "safetensors"), entry.id)
    return model


BUILDERS: dict[str, Callable[[ModelEntry, Path | None], nn.Module]] = {
    "efficientnet_lite": build_efficientnet_lite,
    "torchvision": build_torchvision,
    "timm": build_timm,
    "torchvision_segmentation": build_torchvision_segmentation,
    "torchvision_detection": build_torchvision_detection,
    "hf_encoder": build_hf_encoder,
    "hf_task": build_hf_task,
    "run": build_run,
}
