"""Detector outputs (boxes, scores, labels from the graph, which has already decoded boxes into the
input image's pixels and run NMS) as the list `zoo predict` and the HTTP route return."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, names: Sequence[str],
               min_score: float) -> list[dict[str, Any]]:
    """Detections scoring at least `min_score`, best first: `{"box": [x1, y1, x2, y2], "score", "index",
    "label"}` (pixels of the image as given; `index` into the bundle's labels, 0 being the background)."""
    order = np.argsort(-scores, kind="stable")
    return [{"box": [float(v) for v in boxes[i]], "score": float(scores[i]), "index": int(labels[i]),
             "label": names[int(labels[i])] if int(labels[i]) < len(names) else str(int(labels[i]))}
            for i in order if scores[i] >= min_score]
