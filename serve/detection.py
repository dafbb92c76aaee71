"""Detector outputs (boxes, scores, labels from the graph, which has already decoded boxes into the
input image's pixels and run NMS) as the list `zoo predict` and the HTTP route return."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from serve.errors import InputError
from serve.kinds import Options, OutputKind


def detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, names: Sequence[str],
               min_score: float) -> list[dict[str, Any]]:
    """Detections scoring at least `min_score`, best first: `{"box": [x1, y1, x2, y2], "score", "index",
    "label"}` (pixels of the image as given; `index` into the bundle's labels, 0 being the background)."""
    order = np.argsort(-scores, kind="stable")
    return [{"box": [float(v) for v in boxes[i]], "score": float(scores[i]), "index": int(labels[i]),
             "label": names[int(labels[i])] if int(labels[i]) < len(names) else str(int(labels[i]))}
            for i in order if scores[i] >= min_score]


class Detection(OutputKind):
    """A detector's graph takes one image at its own size and gives three outputs."""

    name = "detection"
    options = frozenset({"min_score"})
    one_image_per_run = True

    def run(self, prepared: Sequence[np.ndarray]) -> list[Any]:
        """(boxes, scores, labels) per image, each image run alone."""
        return [tuple(self.predictor.run_all({self.predictor.input_names[0]: array[None]}).values())
                for array in prepared]

    def raw(self, feeds: dict[str, np.ndarray], chunk: int | None = None) -> dict[str, np.ndarray]:
        """Boxes, scores and labels from one run at the graph's batch of one image."""
        return self.predictor.run_all(feeds)

    def postprocess(self, row: Any, options: Options) -> dict[str, Any]:
        """`{"size", "detections"}`: every detection scoring at least `min_score` (default: the bundle's
        threshold; `top_k` does not apply), best first."""
        threshold = self.post.score_threshold if options.min_score is None else options.min_score
        if threshold is not None and not 0 <= threshold <= 1:
            raise InputError(f"min_score {threshold}: expected a score between 0 and 1")
        return {"size": list(options.size) if options.size else None,
                "detections": detections(*row, self.post.labels, threshold or 0.0)}

    def render(self, result: dict[str, Any]) -> str:
        found = "; ".join(f"{d['label']} {d['score']:.3f} at [{', '.join(f'{v:.0f}' for v in d['box'])}]"
                          for d in result["detections"])
        return f"{result['input']}: {len(result['detections'])} detection(s)" + (f": {found}" if found else "")
