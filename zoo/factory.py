"""`build(name)`: the registry entry's architecture with its verified pretrained weights, in eval mode."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from zoo.builders import BUILDERS
from zoo.cache import fetch
from zoo.registry import get_model
from zoo.schema import ModelEntry, SourceSpec


def resolve(model: str | ModelEntry) -> ModelEntry:
    return model if isinstance(model, ModelEntry) else get_model(model)


def build(model: str | ModelEntry, pretrained: bool = True, extra_sources: Sequence[SourceSpec] = ()) -> nn.Module:
    """A torch module in eval mode. With `pretrained`, weights are fetched, hash-checked and loaded
    strictly (a missing or unexpected key is an error); without, parameters are randomly initialised."""
    entry = resolve(model)
    weights = None
    if pretrained:
        fetched = fetch(entry, extra_sources)
        weights = fetched.files[entry.file("weights").name]
    module = BUILDERS[entry.builder](entry, weights)
    return module.eval()
