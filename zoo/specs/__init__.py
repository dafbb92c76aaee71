"""Model specs beyond the registry, accepted wherever a registry id is (`zoo info | fetch | validate |
export | finetune | bench`, `zoo.build`): `torchvision:WEIGHTS_ENUM` (zoo.specs.torchvision),
`timm:NAME[.TAG]` (zoo.specs.timm) and `hf:ORG/NAME[@REVISION]` (zoo.specs.hf). Each resolves to a
registry record, validated by the registry's own schema, and so to the same ModelEntry a registry entry
gives."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from zoo.errors import InputError
from zoo.schema import ModelEntry

SPEC_MODULES = {"torchvision": "zoo.specs.torchvision", "timm": "zoo.specs.timm", "hf": "zoo.specs.hf"}  # kind -> module with record()

# Fine-tuning defaults per family (zoo.recipe: full fine-tuning after a linear probe, AdamW), measured in
# benchmarks/transfer.py; registry entries and spec records of image classifiers and text encoders carry
# them. Segmentation and detection have none: their new heads start from random weights (recipe fallback).
FINETUNE = {
    "cnn": {"lr": 3e-4, "weight_decay": 0.01},
    "vit": {"lr": 3e-5, "weight_decay": 0.05},
    "text-encoder": {"lr": 5e-5, "weight_decay": 0.01},
}
VIT_PREFIXES = ("vit_", "deit", "beit", "eva", "swin", "dinov2")  # transformer image classifiers: the "vit" family
VIT_TYPES = ("vit",)  # Hugging Face model_type names of the family that no prefix above matches


def is_spec(name: str) -> bool:
    return name.split(":", 1)[0] in SPEC_MODULES and ":" in name


def resolve_spec(name: str) -> ModelEntry:
    """The ModelEntry of spec `name` (KIND:WHAT); InputError naming the supported kinds otherwise."""
    return spec_entry(name, *spec_record(name))


def spec_entry(name: str, record: dict[str, Any], label_sets: dict[str, list[str]]) -> ModelEntry:
    """The ModelEntry of spec `name`'s record (spec_record), which names the spec for later (model_name)."""
    from zoo.registry import entry_from_record

    entry = entry_from_record(record, label_sets, origin=name)
    return dataclasses.replace(entry, extra={**entry.extra, "spec": name})


def model_name(entry: ModelEntry) -> str:
    """What names `entry` again later (a run's base model): its spec when it came from one, else its id."""
    return entry.extra.get("spec", entry.id)


def spec_record(name: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The registry record of spec `name` and the label sets it names that the shipped registry lacks."""
    kind, what = name.split(":", 1)
    if kind not in SPEC_MODULES:
        raise InputError(f"{kind}: specs are not supported yet; supported: "
                         + ", ".join(f"{k}:{_FORMS[k]}" for k in SPEC_MODULES))
    from zoo.registry import shipped_label_sets

    shipped = shipped_label_sets()
    record, label_sets = importlib.import_module(SPEC_MODULES[kind]).record(what, shipped)
    return with_finetune_defaults(record), {name: labels for name, labels in label_sets.items() if name not in shipped}


_FORMS = {"torchvision": "WEIGHTS_ENUM (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2)",
          "timm": "NAME[.TAG] (e.g. timm:convnext_tiny.fb_in1k)",
          "hf": "ORG/NAME[@REVISION] (e.g. hf:dslim/bert-base-NER)"}


def finetune_family(model: dict[str, Any]) -> str | None:
    """The FINETUNE family of a registry record, or None (segmentation, detection)."""
    if model["builder"] == "hf_encoder":
        return "text-encoder"
    if model["task"] != "image-classification":
        return None
    return "vit" if model["architecture"].startswith(VIT_PREFIXES) or model["architecture"] in VIT_TYPES else "cnn"


def with_finetune_defaults(model: dict[str, Any]) -> dict[str, Any]:
    family = finetune_family(model)
    return {**model, "finetune": FINETUNE[family]} if family is not None else model
