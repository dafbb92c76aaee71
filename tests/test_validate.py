"""`zoo validate`: both real backbones agree with their independent upstream references, and a
disagreement is reported case by case before raising."""

from __future__ import annotations

import dataclasses

import pytest

from zoo.errors import NoReferenceError, ToleranceExceeded
from zoo.registry import get_model
from zoo.validation import validate


@pytest.mark.parametrize("name", ["efficientnet_lite0", "all-minilm-l6-v2"])
def test_real_backbones_match_their_references(name: str) -> None:
    report = validate(name)
    assert report.ok, "\n".join(report.lines())
    numeric = [c for c in report.comparisons if hasattr(c, "max_abs_diff")]
    assert numeric and all(c.max_abs_diff <= 1e-4 for c in numeric)


def test_photo_semantic_check() -> None:
    report = validate("efficientnet_lite0")
    lines = "\n".join(report.lines())
    assert "top-1 is 'daisy'" in lines and "top-1 is 'palace'" in lines


def test_every_failing_case_is_reported_then_raised() -> None:
    entry = get_model("efficientnet_lite0")
    cases = list(entry.reference.cases)
    shifted = tuple(tuple(v + 0.01 for v in row) for row in cases[0].output)
    cases[0] = dataclasses.replace(cases[0], output=shifted)
    cases[1] = dataclasses.replace(cases[1], top1_label="tabby")
    broken = dataclasses.replace(entry, reference=dataclasses.replace(entry.reference, cases=tuple(cases)))
    report = validate(broken)
    assert not report.ok
    with pytest.raises(ToleranceExceeded) as info:
        report.raise_for_failures()
    message = str(info.value)
    assert "2 output(s) out of tolerance" in message
    assert "synthetic: max |diff| 0.01" in message and "expected 'tabby'" in message


def test_entry_without_reference() -> None:
    with pytest.raises(NoReferenceError, match="no reference outputs"):
        validate("resnet18")


def test_comparisons_by_atol_and_by_cosine_floor() -> None:
    import numpy as np

    from zoo.reference import compare

    expected = np.array([[3.0, 1.0, -2.0], [0.5, 2.5, 0.0]])
    close = compare("close", expected + 1e-6, expected, 1e-4, classifier=True)
    assert close.ok and close.top1_agreement == 1.0 and close.min_cosine > 0.999999
    moved = expected + np.array([[0.5, -0.5, 0.3], [0.2, -0.2, 0.4]])  # int8-like: same direction, far in atol
    assert not compare("moved", moved, expected, 1e-4, classifier=True).ok
    judged = compare("moved", moved, expected, None, classifier=True, cosine_floor=0.9)
    assert judged.ok and "floor 0.9" in judged.line()
    flipped = compare("flipped", -expected, expected, None, classifier=True, cosine_floor=0.9)
    assert not flipped.ok and flipped.min_cosine == pytest.approx(-1.0) and flipped.line().startswith("✗")
    broken = compare("nan", np.full_like(expected, np.nan), expected, None, classifier=True, cosine_floor=0.9)
    assert not broken.ok
