"""What a bundle's model is for, as serving sees it: one `OutputKind` per manifest postprocessing kind
(classification, embedding, segmentation, detection, token-classification, question-answering), each in
the module of its decoding. A kind checks a raw input, runs a batch of prepared inputs through the
predictor's session, turns one output row into the result, and renders that result as one line for
`zoo predict`. The Predictor, the micro-batcher, the HTTP routes and the command line ask the kind
instead of testing which kind it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

if TYPE_CHECKING:
    from serve.predictor import Predictor


@dataclass(frozen=True)
class Options:
    """What a request may ask beyond its input; each kind reads the fields in its `options`."""

    top_k: int = 5
    size: tuple[int, int] | None = None  # the image's own (width, height): where a mask goes back to
    min_score: float | None = None
    aggregation: str | None = None


class OutputKind:
    """The default behaviour: one output row per input, images of one shape or texts of similar length run
    together."""

    name: ClassVar[str]
    options: ClassVar[frozenset[str]] = frozenset()  # request options beyond top_k: min_score, aggregation, ...
    one_image_per_run: ClassVar[bool] = False  # the graph's batch is one image (its batch axis is no chunk size)

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.post = predictor.manifest.postprocessing

    def check(self, item: Any) -> None:
        """InputError for a text input this kind cannot take (images are checked by preprocessing)."""
        from serve.preprocess import check_text  # serve.manifest imports serve.entities, which imports this module

        check_text(item, self.predictor.limits)

    def run(self, prepared: Sequence[Any]) -> list[Any]:
        """One output row per prepared input: CHW image arrays or texts."""
        if self.predictor.manifest.modality == "image":
            return self.predictor.run_by_shape(prepared)
        feeds, _ = self.predictor.encode(prepared)
        return self.predictor.run_by_length(feeds)

    def raw(self, feeds: dict[str, np.ndarray], chunk: int | None = None) -> dict[str, np.ndarray]:
        """The model's outputs by name for preprocessed inputs (the HTTP tensor route, the warm-up)."""
        return {self.predictor.output_name: self.predictor.run(feeds, chunk=chunk)}

    def postprocess(self, row: Any, options: Options) -> dict[str, Any]:
        raise NotImplementedError

    def render(self, result: dict[str, Any]) -> str:
        """One line for `zoo predict`."""
        raise NotImplementedError


# Every manifest postprocessing kind and the class that serves it ("module:class"; imported on use: each
# kind's module imports this one). A new kind is one module and one line here.
KIND_CLASSES = {
    "classification": "serve.classification:Classification",
    "embedding": "serve.classification:Embedding",
    "segmentation": "serve.segmentation:Segmentation",
    "detection": "serve.detection:Detection",
    "token-classification": "serve.entities:TokenClassification",
    "question-answering": "serve.qa:QuestionAnswering",
    "multi-label": "serve.multi_label:MultiLabel",
}


def kinds() -> dict[str, type[OutputKind]]:
    """Every kind by its manifest name."""
    import importlib

    found = {}
    for name, target in KIND_CLASSES.items():
        module, attribute = target.split(":")
        found[name] = getattr(importlib.import_module(module), attribute)
    return found


def kinds_taking(option: str) -> list[str]:
    """The kinds a request option applies to (for the error that names them)."""
    return [name for name, kind in kinds().items() if option in kind.options]
