"""Entity aggregation on hand-worked examples, against Hugging Face's documented token-classification
strategies (transformers' TokenClassificationPipeline: "simple" groups adjacent tokens of one entity
type, a B- tag starting a new one, scored by the mean of the tokens' probabilities; "first" gives each
word the label and probability of its first token, then groups words the same way). The expected
entities and scores are worked out by hand here, not computed with serve.entities (issue 19)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from serve.entities import entities

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _tokens(text: str, pieces: list[tuple[str, int, str, float]]):
    """pieces: (surface text, word index, label, probability of that label); [CLS] and [SEP] around.
    Each piece's logits are the log of a distribution giving `label` that probability, the rest spread
    evenly, so softmax gives back exactly the hand-written numbers."""
    offsets, words, special, rows = [(0, 0)], [None], [1], [np.zeros(len(LABELS))]
    cursor = 0
    for surface, word, label, probability in pieces:
        start = text.index(surface, cursor)
        cursor = start + len(surface)
        offsets.append((start, cursor))
        words.append(word)
        special.append(0)
        row = np.full(len(LABELS), (1 - probability) / (len(LABELS) - 1))
        row[LABELS.index(label)] = probability
        rows.append(np.log(row))
    offsets.append((0, 0)), words.append(None), special.append(1), rows.append(np.zeros(len(LABELS)))
    return np.array(rows), SimpleNamespace(offsets=offsets, word_ids=words, special_tokens_mask=special)


def _summary(found):
    return [(e["entity"], e["text"], round(e["score"], 6)) for e in found]


TEXT = "Ann Lee met Bo in Oslo"
PIECES = [("Ann", 0, "B-PER", 0.9), ("Lee", 1, "I-PER", 0.8), ("met", 2, "O", 0.95), ("Bo", 3, "B-PER", 0.6),
          ("in", 4, "O", 0.9), ("Os", 5, "B-LOC", 0.7), ("lo", 5, "I-LOC", 0.5)]


@pytest.mark.parametrize("strategy", ["simple", "first"])
def test_whole_words_and_clean_tags(strategy: str) -> None:
    logits, encoding = _tokens(TEXT, PIECES)
    found = entities(TEXT, logits, encoding, LABELS, strategy)
    oslo = 0.6 if strategy == "simple" else 0.7  # simple: mean(0.7, 0.5); first: the first piece's 0.7
    assert _summary(found) == [("PER", "Ann Lee", 0.85), ("PER", "Bo", 0.6), ("LOC", "Oslo", oslo)]
    assert [(e["start"], e["end"]) for e in found] == [(0, 7), (12, 14), (18, 22)]
    assert all(list(e) == ["entity", "score", "start", "end", "text"] for e in found)  # the documented record, no more


def test_a_word_whose_pieces_disagree() -> None:
    """"Oslo" as Os (B-LOC 0.7) + lo (B-PER 0.9): simple follows the pieces, first keeps the word whole."""
    text = "to Oslo"
    logits, encoding = _tokens(text, [("to", 0, "O", 0.9), ("Os", 1, "B-LOC", 0.7), ("lo", 1, "B-PER", 0.9)])
    assert _summary(entities(text, logits, encoding, LABELS, "simple")) == [("LOC", "Os", 0.7), ("PER", "lo", 0.9)]
    assert _summary(entities(text, logits, encoding, LABELS, "first")) == [("LOC", "Oslo", 0.7)]


def test_b_starts_a_new_entity_and_i_without_b_opens_one() -> None:
    text = "Ann Bo met Lee Kim"
    pieces = [("Ann", 0, "B-PER", 0.9), ("Bo", 1, "B-PER", 0.7), ("met", 2, "O", 0.9),
              ("Lee", 3, "I-PER", 0.6), ("Kim", 4, "I-LOC", 0.8)]
    logits, encoding = _tokens(text, pieces)
    # B after B: two people; I-PER after O opens PER; I-LOC after PER: a type change opens LOC
    assert _summary(entities(text, logits, encoding, LABELS, "simple")) == [
        ("PER", "Ann", 0.9), ("PER", "Bo", 0.7), ("PER", "Lee", 0.6), ("LOC", "Kim", 0.8)]


def test_special_tokens_and_padding_are_never_entities() -> None:
    text = "Ann"
    logits, encoding = _tokens(text, [("Ann", 0, "B-PER", 0.9)])
    logits[0] = logits[-1] = np.log([0.01, 0.96, 0.01, 0.01, 0.01])  # [CLS]/[SEP] scored as B-PER
    padded = np.concatenate([logits, np.log(np.full((3, len(LABELS)), 0.2))])
    assert _summary(entities(text, padded, encoding, LABELS, "simple")) == [("PER", "Ann", 0.9)]
    assert math.isclose(entities(text, padded, encoding, LABELS, "first")[0]["score"], 0.9)


def test_first_is_the_default_and_unknown_strategies_are_named() -> None:
    logits, encoding = _tokens(TEXT, PIECES)
    assert _summary(entities(TEXT, logits, encoding, LABELS))[-1] == ("LOC", "Oslo", 0.7)
    with pytest.raises(ValueError, match=r"aggregation 'max': expected one of first, simple"):
        entities(TEXT, logits, encoding, LABELS, "max")


def test_rows_of_very_different_scales_keep_their_own_probabilities() -> None:
    """Each token's softmax is its own: a row of logits near 1000 next to rows near -1000 (an unbounded
    head) must neither overflow nor wash the others out."""
    logits, encoding = _tokens(TEXT, PIECES)
    scaled = logits.copy()
    scaled[1] += 1000.0
    scaled[4] -= 1000.0
    for strategy in ("simple", "first"):
        assert _summary(entities(TEXT, scaled, encoding, LABELS, strategy)) == \
            _summary(entities(TEXT, logits, encoding, LABELS, strategy))


def test_a_special_token_inside_the_text_ends_the_entity_and_the_rest_still_counts() -> None:
    """A [SEP] between two sentences (special, no word) and a pad-like token without a word but not marked
    special: neither is an entity, and the tokens after them are still read."""
    text = "Ann Lee Bo"
    logits, encoding = _tokens(text, [("Ann", 0, "B-PER", 0.9), ("Lee", 1, "I-PER", 0.8), ("Bo", 2, "B-PER", 0.6)])
    logits = np.insert(logits, [3, 3], np.log([0.01, 0.01, 0.96, 0.01, 0.01]), axis=0)  # both scored I-PER
    encoding.offsets[3:3] = [(0, 0), (0, 0)]
    encoding.word_ids[3:3] = [None, 7]
    encoding.special_tokens_mask[3:3] = [0, 1]  # a word-less token not marked special, a special with a word id
    for strategy in ("simple", "first"):
        assert _summary(entities(text, logits, encoding, LABELS, strategy)) == [
            ("PER", "Ann Lee", 0.85), ("PER", "Bo", 0.6)]


def test_tokens_beyond_the_logits_and_labels_beyond_the_list() -> None:
    """Fewer logit rows than tokens (a fixed-length model cut the text): the rest is ignored; an argmax
    on a column the label list does not name (a head wider than its labels) is no entity."""
    logits, encoding = _tokens(TEXT, PIECES)
    assert _summary(entities(TEXT, logits[:3], encoding, LABELS, "simple")) == [("PER", "Ann Lee", 0.85)]
    wider = np.concatenate([logits, np.full((len(logits), 1), -50.0)], axis=1)
    wider[1, -1] = 50.0  # "Ann" argmax: column 5, beyond the 5 labels
    assert _summary(entities(TEXT, wider, encoding, LABELS, "simple"))[0] == ("PER", "Lee", 0.8)


def test_first_reads_on_after_a_word_of_several_pieces() -> None:
    text = "Oslo Ann"
    logits, encoding = _tokens(text, [("Os", 0, "B-LOC", 0.7), ("lo", 0, "I-LOC", 0.5), ("Ann", 1, "B-PER", 0.9)])
    assert _summary(entities(text, logits, encoding, LABELS, "first")) == [("LOC", "Oslo", 0.7), ("PER", "Ann", 0.9)]
