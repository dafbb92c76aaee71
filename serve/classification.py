"""Classifier and embedding outputs: logits -> the top-k labels with probabilities (softmax, or a
binary head's sigmoid), and an embedding vector as it comes."""

from __future__ import annotations

from typing import Any

import numpy as np

from serve.activations import sigmoid, softmax
from serve.kinds import Options, OutputKind


class Classification(OutputKind):
    name = "classification"

    def postprocess(self, row: Any, options: Options) -> dict[str, Any]:
        """`{"top_k": [{"index", "label", "score"}, ...]}`, most probable first (ties in index order)."""
        if self.post.activation == "sigmoid":  # one logit: P(positive) = sigmoid(x), the positive label is labels[1]
            positive = float(sigmoid(row[0]))
            probabilities = np.array([1.0 - positive, positive])
        else:
            probabilities = softmax(row.astype(np.float64))
        labels = self.post.labels
        order = np.argsort(-probabilities, kind="stable")[:options.top_k]
        return {"top_k": [{"index": int(i), "label": labels[i] if i < len(labels) else str(i),
                           "score": float(probabilities[i])} for i in order]}

    def render(self, result: dict[str, Any]) -> str:
        best = ", ".join(f"{p['label']} {p['score']:.3f}" for p in result["top_k"])
        return f"{result['input']}: {best}"


class Embedding(OutputKind):
    name = "embedding"

    def postprocess(self, row: Any, options: Options) -> dict[str, Any]:
        """`{"embedding": [...]}`: the model's vector (normalised by the graph where the model is)."""
        return {"embedding": [float(v) for v in row]}

    def render(self, result: dict[str, Any]) -> str:
        vector = result["embedding"]
        return f"{result['input']}: [{len(vector)}] " + " ".join(f"{v:+.4f}" for v in vector[:6]) + " ..."
