"""The numbers users rely on, pinned as literals: loosening a tolerance, a gate, a limit or a default
is a visible change to this file, not a silent one in the code the other tests import it from. Each
gate is also fed a case just inside and just outside it (issue 19)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.onnx_export import DEFAULT_OPSET
from serve.http import ServerConfig
from serve.limits import DEFAULT_LIMITS
from zoo import tolerances
from zoo.reference import compare, compare_detections, compare_outputs
from zoo.registry import get_model


def test_tolerances_are_pinned() -> None:
    assert tolerances.REFERENCE_ATOL == 1e-4
    assert tolerances.EXPORT_ATOL == {"float32": 1e-4, "float16": 0.1}
    assert tolerances.DETECTION_ATOL == 5e-3
    assert tolerances.INT8_MIN_COSINE == 0.8
    assert tolerances.END_TO_END_ATOL == 1e-4
    assert tolerances.MIN_TOP1_AGREEMENT == 1.0


def test_defaults_users_deploy_with_are_pinned() -> None:
    assert DEFAULT_OPSET == 20
    config = ServerConfig(bundle=None)
    assert (config.inference_timeout_s, config.body_timeout_s, config.max_body_bytes) == (30.0, 30.0, 16 * 1024 * 1024)
    assert (config.max_batch_size, config.max_wait_ms, config.preprocess_workers) == (16, 5.0, 2)
    assert (DEFAULT_LIMITS.max_inputs, DEFAULT_LIMITS.max_image_pixels, DEFAULT_LIMITS.max_aspect_ratio,
            DEFAULT_LIMITS.max_text_chars) == (64, 40_000_000, 20.0, 100_000)


def _logits(rows: int = 4, classes: int = 10, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(rows, classes)) * 3
    logits[np.arange(rows), np.arange(rows) % classes] += 10  # a clear top-1: a tiny shift cannot flip it
    return logits


@pytest.mark.parametrize("atol", [tolerances.EXPORT_ATOL["float32"], tolerances.EXPORT_ATOL["float16"]])
def test_atol_gate_passes_just_inside_and_refuses_just_outside(atol: float) -> None:
    expected = _logits()
    entry = get_model("efficientnet_lite0")
    for factor, ok in ((0.99, True), (1.0, True), (1.01, False)):
        actual = expected.copy()
        actual[1, 3] += factor * atol
        assert compare_outputs(entry, "case", actual, expected, atol).ok is ok, (factor, atol)


def test_top1_gate_refuses_one_flipped_row_within_atol() -> None:
    expected = np.array([[1.0, 1.00005, 0.0], [5.0, 0.0, 0.0]])
    actual = expected.copy()
    actual[0, 0] += 1e-4  # within atol 1e-4, but the argmax of row 0 flips
    result = compare_outputs(get_model("efficientnet_lite0"), "case", actual, expected, 1e-4)
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 0.5 and not result.ok


def test_int8_cosine_floor_refuses_just_below_it() -> None:
    floor = tolerances.INT8_MIN_COSINE
    expected = np.zeros((1, 2))
    expected[0] = [1.0, 0.0]
    for cosine, ok in ((floor + 0.005, True), (floor - 0.005, False)):
        actual = np.array([[cosine, math.sqrt(1 - cosine**2)]])  # unit vectors: the cosine is exact
        result = compare("int8", actual, expected, None, classifier=True, cosine_floor=floor)
        assert abs(result.min_cosine - cosine) < 1e-12 and result.ok is ok, (cosine, result)


def test_detection_atol_is_a_fraction_of_the_image_side() -> None:
    atol, side = tolerances.DETECTION_ATOL, 640.0
    # two detections: a lone one sits at the score cut, where a miss is excused (compare_detections)
    expected = np.array([[10.0, 20.0, 200.0, 300.0, 0.9, 3.0], [50.0, 60.0, 90.0, 120.0, 0.5, 1.0]])
    for shift, ok in ((0.99 * atol * side, True), (1.01 * atol * side, False)):
        actual = expected.copy()
        actual[0, 2] += shift
        result = compare_detections("case", actual, expected, atol, side)
        assert (result.max_abs_diff <= atol and result.top1_agreement == 1.0) is ok, (shift, result)
    actual = expected.copy()
    actual[0, 4] += 1.01 * atol  # the score too
    assert compare_detections("case", actual, expected, atol, side).top1_agreement < 1.0


def test_a_non_finite_output_never_passes() -> None:
    expected = _logits()
    actual = expected.copy()
    actual[0, 0] = np.nan
    assert not compare_outputs(get_model("efficientnet_lite0"), "case", actual, expected, 1.0).ok
    assert not compare("int8", actual, expected, None, classifier=True, cosine_floor=0.0).ok
