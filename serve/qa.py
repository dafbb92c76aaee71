"""Extractive question answering: (question, context) -> windows of tokens -> span logits -> the answer
text with its character offsets in the context and a score. Used by `serve` and, for the same decoding
in validation, by `zoo finetune`.

A context longer than the model's max_length is cut into overlapping windows (`stride` tokens shared
between neighbours), each holding the whole question; every window proposes its best span and the best
across windows wins, as in Hugging Face's question-answering pipeline: score = P(start) x P(end), the
probabilities over that window's context tokens, end >= start and at most `max_answer_tokens` long."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from serve.activations import log_softmax
from serve.errors import InputError
from serve.kinds import Options, OutputKind
from serve.limits import DEFAULT_LIMITS, Limits
from serve.preprocess import check_text, describe

MAX_ANSWER_TOKENS = 30


def default_stride(max_length: int) -> int:
    """Tokens shared by neighbouring windows: a quarter of the window, at most 128 (Hugging Face's doc_stride)."""
    return min(128, max_length // 4)


class WindowTokenizer:
    """The bundle's tokenizer set for question + context pairs: truncation of the context only, with
    overflowing windows; padding is done per batch by `pad`. A question so long that no context token
    fits raises InputError."""

    def __init__(self, path: Path | Any, max_length: int, stride: int, pad_id: int, fixed_length: int | None = None):
        """`path`: the tokenizer file, or a `tokenizers.Tokenizer` (copied, not changed)."""
        from tokenizers import Tokenizer

        source = path if isinstance(path, Tokenizer) else None
        self.tokenizer = Tokenizer.from_str(source.to_str()) if source else Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length, stride=stride, strategy="only_second")
        self.max_length, self.pad_id, self.fixed_length = max_length, pad_id, fixed_length

    def windows(self, question: str, context: str) -> list[Any]:
        """The Encoding of every window of `context` (each with the question first)."""
        try:
            encoding = self.tokenizer.encode(question, context)
        except Exception as exc:  # tokenizers raises a plain Exception when the question leaves no room
            raise InputError(f"question of {len(question)} characters leaves no room for the context in "
                             f"{self.max_length} tokens: {exc}") from None
        return [encoding, *encoding.overflowing]

    def pad(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        """input_ids / attention_mask of the windows, padded to the longest (or to a fixed-shape bundle's length)."""
        length = self.fixed_length or max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
            mask[row, :len(encoding.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def best_span(span_logits: np.ndarray, encoding: Any, max_answer_tokens: int = MAX_ANSWER_TOKENS):
    """(score, start char, end char) of one window's best span, or None when it has no context token.
    `span_logits` is (tokens, 2): start and end logits."""
    context = np.array([sid == 1 for sid in encoding.sequence_ids] + [False] * (len(span_logits) - len(encoding.ids)))
    if not context.any():
        return None
    start = np.where(context, log_softmax(np.where(context, span_logits[:, 0], -np.inf)), -np.inf)
    end = np.where(context, log_softmax(np.where(context, span_logits[:, 1], -np.inf)), -np.inf)
    pairs = start[:, None] + end[None, :]  # log P(start = i) + log P(end = j)
    positions = np.arange(len(span_logits))
    valid = (positions[None, :] >= positions[:, None]) & (positions[None, :] - positions[:, None] < max_answer_tokens)
    pairs = np.where(valid, pairs, -np.inf)
    i, j = np.unravel_index(int(np.argmax(pairs)), pairs.shape)
    return float(np.exp(pairs[i, j])), encoding.offsets[i][0], encoding.offsets[j][1]


def answer(context: str, window_logits: Sequence[np.ndarray], encodings: Sequence[Any],
           max_answer_tokens: int = MAX_ANSWER_TOKENS) -> dict[str, Any]:
    """The best span over every window: `{"answer", "start", "end", "score"}` (characters of `context`)."""
    spans = [span for logits, encoding in zip(window_logits, encodings)
             if (span := best_span(logits, encoding, max_answer_tokens)) is not None]
    if not spans:
        return {"answer": "", "start": 0, "end": 0, "score": 0.0}
    score, start, end = max(spans, key=lambda span: span[0])
    return {"answer": context[start:end], "start": int(start), "end": int(end), "score": score}


def question_and_context(item: Any, limits: Limits = DEFAULT_LIMITS) -> tuple[str, str]:
    """A question-answering input: `{"question": str, "context": str}`."""
    if not (isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("context"), str)):
        raise InputError(f'question-answering input {describe(item)}: expected {{"question": "...", "context": "..."}}')
    if not item["question"].strip() or not item["context"].strip():
        raise InputError("question-answering input: the question and the context must not be empty")
    return check_text(item["question"], limits), check_text(item["context"], limits)


class QuestionAnswering(OutputKind):
    """Inputs are `{"question", "context"}`; a long context is cut into windows, all run together."""

    name = "question-answering"
    options = frozenset({"question"})  # zoo predict --question: the INPUTS are the contexts

    def __init__(self, predictor):
        super().__init__(predictor)
        spec, length = predictor.manifest.preprocessing, predictor.fixed_length
        self.windows = WindowTokenizer(predictor.directory / spec.tokenizer, length or spec.max_length,
                                       self.post.stride, spec.pad_id, length)

    def check(self, item: Any) -> None:
        question_and_context(item, self.predictor.limits)

    def run(self, prepared: Sequence[Any]) -> list[Any]:
        """Every window of every (question, context) in one run; per item, the (window logits, window
        encodings, context) that `postprocess` decodes."""
        pairs = [question_and_context(item, self.predictor.limits) for item in prepared]
        windows = [self.windows.windows(question, context) for question, context in pairs]
        logits = self.predictor.run(self.windows.pad([w for item_windows in windows for w in item_windows]))
        rows, start = [], 0
        for (_, context), item_windows in zip(pairs, windows):
            rows.append((list(logits[start:start + len(item_windows)]), item_windows, context))
            start += len(item_windows)
        return rows

    def postprocess(self, row: Any, options: Options) -> dict[str, Any]:
        """`{"answer", "start", "end", "score"}`: the best span over the context's windows."""
        window_logits, encodings, context = row
        return answer(context, window_logits, encodings, self.post.max_answer_tokens)

    def render(self, result: dict[str, Any]) -> str:
        return f"{result['input']}: {result['answer']!r} [{result['start']}:{result['end']}] {result['score']:.3f}"
