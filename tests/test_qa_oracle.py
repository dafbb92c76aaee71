"""Extractive-QA span decoding against a brute-force oracle written here, independent of serve.qa:
every (start, end) pair of context tokens, P(start) * P(end) with each softmax over the context tokens
only, end >= start and at most `max_answer_tokens` long; the best pair over every window wins
(issue 19: the expected answers were computed with the same serve.qa functions before)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from serve.qa import answer, best_span


def _window(rng: np.random.Generator, tokens: int, context_from: int, first_char: int):
    """A window of `tokens` tokens: question (sequence 0) then context (sequence 1), then [SEP] (None);
    context token k spans characters [first_char + 4k, first_char + 4k + 3)."""
    sequence_ids = [None] + [0] * (context_from - 1) + [1] * (tokens - context_from - 1) + [None]
    offsets = [(0, 0)] * tokens
    for k, position in enumerate(range(context_from, tokens - 1)):
        offsets[position] = (first_char + 4 * k, first_char + 4 * k + 3)
    encoding = SimpleNamespace(ids=list(range(tokens)), sequence_ids=sequence_ids, offsets=offsets)
    return rng.normal(size=(tokens, 2)) * 3, encoding


def _oracle(logits: np.ndarray, encoding, max_answer_tokens: int):
    context = [i for i, sid in enumerate(encoding.sequence_ids) if sid == 1]
    start_z = sum(math.exp(logits[i, 0]) for i in context)
    end_z = sum(math.exp(logits[i, 1]) for i in context)
    best = None
    for i in context:
        for j in context:
            if j < i or j - i + 1 > max_answer_tokens:
                continue
            score = math.exp(logits[i, 0]) / start_z * math.exp(logits[j, 1]) / end_z
            if best is None or score > best[0]:
                best = (score, encoding.offsets[i][0], encoding.offsets[j][1])
    return best


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("max_answer_tokens", [1, 3, 30])
def test_best_span_is_the_brute_force_best_pair(seed: int, max_answer_tokens: int) -> None:
    rng = np.random.default_rng(seed)
    logits, encoding = _window(rng, tokens=int(rng.integers(6, 40)), context_from=int(rng.integers(2, 5)), first_char=0)
    score, start, end = best_span(logits, encoding, max_answer_tokens)
    expected = _oracle(logits, encoding, max_answer_tokens)
    assert (start, end) == expected[1:]
    assert score == pytest.approx(expected[0], rel=1e-9)


def test_padding_beyond_the_encoding_is_never_an_answer() -> None:
    rng = np.random.default_rng(0)
    logits, encoding = _window(rng, tokens=10, context_from=3, first_char=0)
    padded = np.concatenate([logits, np.full((6, 2), 50.0)])  # huge logits on padding positions
    assert best_span(padded, encoding, 30)[1:] == _oracle(logits, encoding, 30)[1:]


def test_answer_takes_the_best_window_and_its_characters() -> None:
    rng = np.random.default_rng(7)
    context = "".join(chr(ord("a") + i % 26) for i in range(400))
    windows = [_window(rng, tokens=24, context_from=4, first_char=offset) for offset in (0, 40, 80)]
    result = answer(context, [w[0] for w in windows], [w[1] for w in windows])
    best = max((_oracle(logits, encoding, 30) for logits, encoding in windows), key=lambda span: span[0])
    assert (result["score"], result["start"], result["end"]) == pytest.approx(best, rel=1e-9)
    assert result["answer"] == context[best[1]:best[2]]


def test_a_window_without_context_gives_no_answer() -> None:
    encoding = SimpleNamespace(ids=[0, 1, 2], sequence_ids=[None, 0, None], offsets=[(0, 0)] * 3)
    assert best_span(np.zeros((3, 2)), encoding) is None
    assert answer("text", [np.zeros((3, 2))], [encoding]) == {"answer": "", "start": 0, "end": 0, "score": 0.0}


def test_huge_logits_do_not_overflow() -> None:
    rng = np.random.default_rng(3)
    logits, encoding = _window(rng, tokens=12, context_from=3, first_char=0)
    score, start, end = best_span(logits + 800.0, encoding, 30)  # exp(800) overflows a float64
    expected = _oracle(logits, encoding, 30)  # softmax is shift-invariant: the same answer and score
    assert (start, end) == expected[1:] and score == pytest.approx(expected[0], rel=1e-9)


def test_answer_limits_every_window_to_max_answer_tokens() -> None:
    rng = np.random.default_rng(11)
    context = "".join(chr(ord("a") + i % 26) for i in range(400))
    windows = [_window(rng, tokens=24, context_from=4, first_char=offset) for offset in (0, 40)]
    result = answer(context, [w[0] for w in windows], [w[1] for w in windows], max_answer_tokens=1)
    best = max((_oracle(logits, encoding, 1) for logits, encoding in windows), key=lambda span: span[0])
    assert (result["score"], result["start"], result["end"]) == pytest.approx(best, rel=1e-9)
    assert result["end"] - result["start"] == 3  # one token of 3 characters


def test_the_best_score_wins_not_the_latest_position() -> None:
    """A later window with a worse span loses; of two windows scoring the same, the first wins."""
    rng = np.random.default_rng(5)
    logits, encoding = _window(rng, tokens=10, context_from=3, first_char=0)
    later = SimpleNamespace(ids=encoding.ids, sequence_ids=encoding.sequence_ids,
                            offsets=[(s + 40, e + 40) if e else (0, 0) for s, e in encoding.offsets])
    flat = np.zeros_like(logits)  # every span equally likely: a low score
    context = "x" * 100
    assert answer(context, [logits, flat], [encoding, later])["start"] < 40
    assert answer(context, [flat, logits], [encoding, later])["start"] >= 40
    assert answer(context, [logits, logits], [encoding, later])["start"] < 40
