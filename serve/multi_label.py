"""Multi-label outputs: one logit per label -> every label whose sigmoid reaches the threshold (the
bundle's score_threshold, or the request's min_score), most probable first."""

from __future__ import annotations

from typing import Any

import numpy as np

from serve.activations import sigmoid
from serve.errors import InputError
from serve.kinds import Options, OutputKind


class MultiLabel(OutputKind):
    name = "multi-label"
    options = frozenset({"min_score"})

    def postprocess(self, row: Any, options: Options) -> dict[str, Any]:
        """`{"labels": [{"index", "label", "score"}, ...], "threshold"}`: each label scoring at least the
        threshold, best first (ties in index order; `top_k` does not apply)."""
        threshold = self.post.score_threshold if options.min_score is None else options.min_score
        if threshold is None or not 0 <= threshold <= 1:
            raise InputError(f"min_score {threshold}: expected a score between 0 and 1")
        scores = sigmoid(row)
        names = self.post.labels
        order = np.argsort(-scores, kind="stable")
        return {"threshold": float(threshold),
                "labels": [{"index": int(i), "label": names[i] if i < len(names) else str(i), "score": float(scores[i])}
                           for i in order if scores[i] >= threshold]}

    def render(self, result: dict[str, Any]) -> str:
        found = ", ".join(f"{p['label']} {p['score']:.3f}" for p in result["labels"])
        return f"{result['input']}: {found or 'no label'} (threshold {result['threshold']:.2f})"
