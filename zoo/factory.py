"""`build(name)`: the registry entry's architecture with its verified pretrained weights, in eval mode."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from zoo.builders import BUILDERS
from zoo.cache import fetch
from zoo.schema import ModelEntry, SourceSpec


def resolve(model: str | ModelEntry) -> ModelEntry:
    """An entry, a registry id, or the path of a finished `zoo finetune` run."""
    from zoo.runs import resolve_name

    return model if isinstance(model, ModelEntry) else resolve_name(model)


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
