"""Named entities from per-token label logits (IOB2 tags), with character offsets into the text.

Two aggregation strategies, as Hugging Face's token-classification pipeline names them:
- "first": each word takes the label of its first sub-word token (how zoo trains: only first
  sub-words carry a tag), so an entity always covers whole words;
- "simple": every token keeps its own label; adjacent tokens of one type form an entity (a word may
  be split between entities).
Then B-TYPE starts an entity, I-TYPE continues one of the same type (or starts one after O or
another type), O ends it; an entity's score is the mean of its words' (tokens') top probabilities."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from serve.activations import softmax
from serve.errors import InputError
from serve.kinds import Options, OutputKind

AGGREGATIONS = ("first", "simple")


def entities(text: str, logits: np.ndarray, encoding: Any, labels: Sequence[str], aggregation: str = "first") -> list[dict[str, Any]]:
    """`logits` (tokens x labels) of one text, `encoding` its `tokenizers.Encoding` (offsets, word ids,
    special-token mask) -> `[{"entity", "score", "start", "end", "text"}]` in text order."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation {aggregation!r}: expected one of {', '.join(AGGREGATIONS)}")
    probabilities = softmax(logits.astype(np.float64))
    units: list[tuple[int, float, int, int]] = []  # (label index, score, start, end) per word or token
    previous_word = None
    for position, (word, special) in enumerate(zip(encoding.word_ids, encoding.special_tokens_mask)):
        if special or word is None or position >= len(probabilities):
            continue
        start, end = encoding.offsets[position]
        if aggregation == "first" and word == previous_word:  # a continuation: extends the word's span
            label, score, first_start, _ = units[-1]
            units[-1] = (label, score, first_start, end)
            continue
        previous_word = word
        row = probabilities[position]
        units.append((int(row.argmax()), float(row.max()), start, end))
    found: list[dict[str, Any]] = []
    scores: list[float] = []
    for label, score, start, end in units:
        tag = labels[label] if label < len(labels) else "O"
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        current = found[-1]["entity"] if found and scores else None
        if kind is None:
            _close(found, scores)
            continue
        if tag.startswith("B-") or kind != current:
            _close(found, scores)
            found.append({"entity": kind, "score": 0.0, "start": start, "end": end})
        found[-1]["end"] = end
        scores.append(score)
    _close(found, scores)
    for entity in found:
        entity["text"] = text[entity["start"]:entity["end"]]
    return found


def _close(found: list[dict[str, Any]], scores: list[float]) -> None:
    """Give the open entity (the last one) the mean score of its units and mark it closed."""
    if found and scores:
        found[-1]["score"] = float(np.mean(scores))
    scores.clear()


class TokenClassification(OutputKind):
    name = "token-classification"
    options = frozenset({"aggregation"})

    def run(self, prepared: Sequence[Any]) -> list[Any]:
        """Per text: (token logits, its Encoding, the text), what `postprocess` groups into entities."""
        feeds, encodings = self.predictor.encode(prepared)
        return list(zip(self.predictor.run_by_length(feeds), encodings, prepared))

    def postprocess(self, row: Any, options: Options) -> dict[str, Any]:
        """`{"entities": [{"entity", "score", "start", "end", "text"}, ...]}`, by `aggregation` (default
        the bundle's, "first")."""
        logits, encoding, text = row
        strategy = options.aggregation or self.post.aggregation or "first"
        if strategy not in AGGREGATIONS:
            raise InputError(f"aggregation {strategy!r}: expected one of {', '.join(AGGREGATIONS)}")
        return {"entities": entities(text, logits, encoding, self.post.labels, strategy)}

    def render(self, result: dict[str, Any]) -> str:
        found = "; ".join(f"{e['entity']} {e['text']!r} [{e['start']}:{e['end']}] {e['score']:.3f}"
                          for e in result["entities"])
        return f"{result['input']}: {found or 'no entities'}"
