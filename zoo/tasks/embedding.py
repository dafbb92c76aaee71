"""Feature extraction and sentence embeddings: base models that nothing is fine-tuned into; their exports
are checked on the modality's inputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from serve.manifest import Postprocessing
from zoo import reference
from zoo.reference import Comparison
from zoo.schema import ModelEntry
from zoo.tasks.inputs import ExportIO, ParityCase, image_io, modality_cases, text_io


def parity_cases(entry: ModelEntry, tokenizer: Any = None) -> list[ParityCase]:
    return modality_cases(entry, tokenizer)


def compare(label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None, cosine_floor: float | None = None,
            scale: float | None = None) -> Comparison:
    """Values and cosine only: a vector has no decision to agree on."""
    return reference.compare(label, actual, expected, atol, classifier=False, cosine_floor=cosine_floor)


def bundle_postprocessing(entry: ModelEntry) -> Postprocessing:
    """The vector as the graph outputs it: its pooling and normalisation are recorded, not applied by serve."""
    return Postprocessing(kind="embedding", pooling=entry.output.pooling, normalized=entry.output.normalize,
                          dim=entry.output.dim)


def export_io(entry: ModelEntry, tokenizer: Any = None) -> ExportIO:
    return image_io(entry) if entry.modality == "image" else text_io(tokenizer, "sentence_embedding")
