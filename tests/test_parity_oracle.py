"""zoo/reference.py and export/parity.py against values worked out by hand: the comparisons every export
and `zoo validate` are judged by, the inputs they run, and the static-shape chunking (issue 19)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from export.parity import ParityCase, at_static_shape, check_parity, comparison_record, parity_cases, summary
from zoo.reference import (
    Comparison,
    compare,
    compare_detections,
    compare_outputs,
    min_cosine,
    synthetic_images,
    synthetic_pixels,
)
from zoo.registry import get_model


def with_task(name: str, task: str):
    """Registry model `name` as a run fine-tuned for `task` (its task decides how outputs are compared)."""
    from zoo.tasks import TASKS

    entry = get_model(name)
    return dataclasses.replace(entry, task=task, output=dataclasses.replace(entry.output, kind=TASKS[task].output_kind))


# ---------------------------------------------------------------------------------------------
# compare / Comparison


def test_compare_by_hand() -> None:
    expected = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    actual = np.array([[1.0, 2.25, 0.5], [0.0, -1.0, 2.5]])  # |diff| 0.25 and 0.5; both argmaxes kept
    result = compare("case", actual, expected, atol=0.5, classifier=True)
    assert result.max_abs_diff == 0.5 and result.top1_agreement == 1.0 and result.ok
    assert not compare("case", actual, expected, atol=0.49, classifier=True).ok
    # row 2's argmax moves from 2 to 0: half the rows agree, and a classifier needs all of them
    flipped = np.array([[1.0, 2.0, 0.5], [4.0, -1.0, 3.0]])
    result = compare("case", flipped, expected, atol=10.0, classifier=True)
    assert result.top1_agreement == 0.5 and not result.ok
    assert compare("case", flipped, expected, atol=10.0, classifier=False).top1_agreement is None
    assert compare("case", flipped, expected, atol=10.0, classifier=False).ok
    # segmentation reports agreement without requiring it
    assert compare("case", flipped, expected, atol=10.0, classifier=True, top1_required=False).ok


def test_binary_head_agreement_is_the_sign() -> None:
    expected = np.array([[0.2], [-0.1], [3.0], [-2.0]])
    actual = np.array([[-0.1], [-0.3], [2.0], [-1.0]])  # the first row's sign flips
    result = compare("case", actual, expected, atol=2.0, classifier=True)
    assert result.top1_agreement == 0.75 and not result.ok


def test_shape_mismatch_and_non_finite_never_pass() -> None:
    result = compare("case", np.zeros((2, 3)), np.zeros((3, 2)), atol=1.0, classifier=True)
    assert result.max_abs_diff == math.inf and not result.ok and "shape (2, 3) != expected (3, 2)" in result.label
    nan = np.array([[0.0, np.nan]])
    assert compare("case", nan, np.zeros((1, 2)), atol=1e9, classifier=False).max_abs_diff == math.inf
    inf = np.array([[0.0, np.inf]])
    assert not compare("case", inf, np.zeros((1, 2)), atol=None, classifier=False, cosine_floor=-1.0).ok
    # empty outputs: nothing differs
    assert compare("case", np.zeros((0, 3)), np.zeros((0, 3)), atol=0.0, classifier=False).max_abs_diff == 0.0


def test_cosine_floor_replaces_atol() -> None:
    expected = np.array([[1.0, 0.0], [0.0, 2.0]])
    actual = np.array([[1.0, 1.0], [0.0, 5.0]])  # row 1: cos 45 deg = 0.7071; row 2: cos 1; |diff| 3
    result = compare("case", actual, expected, atol=None, classifier=False, cosine_floor=0.7)
    assert result.min_cosine == pytest.approx(1 / math.sqrt(2)) and result.max_abs_diff == 3.0 and result.ok
    assert not compare("case", actual, expected, atol=None, classifier=False, cosine_floor=0.71).ok


def test_min_cosine_by_hand() -> None:
    assert min_cosine(np.array([[3.0, 4.0]]), np.array([[4.0, 3.0]])) == pytest.approx(24 / 25)
    assert min_cosine(np.array([[1.0, 0.0]]), np.array([[-1.0, 0.0]])) == pytest.approx(-1.0)
    assert min_cosine(np.zeros((1, 2)), np.zeros((1, 2))) == 1.0  # two zero rows agree
    assert min_cosine(np.zeros((1, 2)), np.array([[1.0, 0.0]])) == 0.0  # one zero row: no direction shared
    assert min_cosine(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]])) == -1.0
    assert min_cosine(np.zeros((0, 4)), np.zeros((0, 4))) == 1.0
    # the lowest row counts, across leading axes
    a = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    b = np.array([[[1.0, 0.0], [1.0, 1.0]]])
    assert min_cosine(a, b) == pytest.approx(1 / math.sqrt(2))


def test_comparison_lines() -> None:
    assert Comparison("a", 1e-5, 1e-4, 1.0).line() == "✓ a: max |diff| 1e-05 (atol 0.0001)  top-1 agreement 100%"
    assert Comparison("b", 2e-4, 1e-4, None).line() == "✗ b: max |diff| 0.0002 (atol 0.0001)"
    assert Comparison("c", 0.1, None, 0.5, min_cosine=0.995, cosine_floor=0.99).line() == (
        "✓ c: max |diff| 0.1 min cosine 0.9950 (floor 0.99)  top-1 agreement 50.000%")
    assert Comparison("d", 0.0, 0.0, 0.0).line().endswith("top-1 agreement 0%")
    assert not Comparison("e", 0.0, 0.0, 0.999).ok and Comparison("f", 0.0, 0.0, 0.999, top1_required=False).ok


def test_comparison_record_is_the_reports_schema() -> None:
    """The record each bundle's parity report stores per case (manifest readers and scripts key on it)."""
    record = comparison_record(Comparison("c", 0.1, None, 0.5, min_cosine=0.995, cosine_floor=0.99))
    assert record == {"case": "c", "max_abs_diff": 0.1, "atol": None, "min_cosine": 0.995, "cosine_floor": 0.99,
                      "top1_agreement": 0.5, "agreement": "top-1 agreement", "ok": True}


# ---------------------------------------------------------------------------------------------
# compare_outputs: each task's decision


def test_segmentation_agreement_is_per_pixel() -> None:
    entry = get_model("lraspp_mobilenet_v3_large")
    expected = np.zeros((1, 3, 2, 2))
    expected[0, 1] = 1.0  # class 1 wins at every pixel
    actual = expected.copy()
    actual[0, 2, 0, 0] = 2.0  # class 2 wins at one pixel of four
    result = compare_outputs(entry, "case", actual, expected, atol=5.0)
    assert result.top1_agreement == 0.75 and result.ok  # reported, not required
    assert result.min_cosine == pytest.approx(1 / math.sqrt(5))  # that pixel: (0,1,0) vs (0,1,2)


def test_span_logits_agreement_is_the_start_and_end() -> None:
    entry = with_task("all-minilm-l6-v2", "question-answering")
    expected = np.zeros((1, 4, 2))  # (batch, tokens, start/end)
    expected[0, 1, 0] = expected[0, 2, 1] = 5.0  # answer: tokens 1..2
    actual = expected.copy()
    actual[0, 3, 1] = 6.0  # the end moves to token 3
    result = compare_outputs(entry, "case", actual, expected, atol=10.0)
    assert result.top1_agreement == 0.5 and not result.ok


def test_token_logits_agreement_is_per_token_and_embeddings_have_none() -> None:
    expected = np.array([[[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]])
    actual = expected.copy()
    actual[0, 2] = [0.0, 3.0]
    result = compare_outputs(with_task("all-minilm-l6-v2", "token-classification"), "case", actual, expected, atol=10.0)
    assert result.top1_agreement == pytest.approx(2 / 3) and not result.ok
    embedding = compare_outputs(get_model("all-minilm-l6-v2"), "case", actual, expected, atol=10.0)
    assert embedding.top1_agreement is None and embedding.ok


# ---------------------------------------------------------------------------------------------
# compare_detections


def test_detections_match_as_sets_in_any_order() -> None:
    expected = np.array([[10, 10, 50, 50, 0.9, 1], [60, 60, 90, 90, 0.8, 2], [0, 0, 20, 20, 0.7, 1]], dtype=float)
    actual = expected[[2, 0, 1]].copy()
    actual[1, 0] += 1.0  # one corner moved by 1 px of a 100 px image: 0.01
    result = compare_detections("case", actual, expected, atol=0.02, scale=100.0)
    assert result.top1_agreement == 1.0 and result.max_abs_diff == pytest.approx(0.01) and result.ok
    assert result.label == "case (3 detections)"
    # the same move against a tighter atol: that detection is unpaired and above the cut (0.7 + 0.005)
    tight = compare_detections("case", actual, expected, atol=0.005, scale=100.0)
    assert tight.top1_agreement == pytest.approx(1 - 2 / 3) and not tight.ok  # the expected and the actual one


def test_detection_labels_must_match_and_the_score_cut_excuses() -> None:
    expected = np.array([[10, 10, 50, 50, 0.9, 1], [0, 0, 20, 20, 0.3, 1]], dtype=float)
    relabelled = expected.copy()
    relabelled[0, 5] = 2
    result = compare_detections("case", relabelled, expected, atol=0.01, scale=100.0)
    assert result.top1_agreement == 0.0 and not result.ok  # 0.9 unpaired on both sides: 2 wrong of 2
    # the lowest detection missing from the export sits at the cut (0.3): excused
    result = compare_detections("case", expected[:1], expected, atol=0.01, scale=100.0)
    assert result.top1_agreement == 1.0 and result.ok and "1 in the export" in result.label
    assert "1 unpaired at the score cut" in result.label
    # scores differing by more than atol do not pair
    rescored = expected.copy()
    rescored[0, 4] = 0.95
    assert not compare_detections("case", rescored, expected, atol=0.01, scale=100.0).ok
    nan = expected.copy()
    nan[1, 0] = np.nan
    assert compare_detections("case", nan, expected, atol=0.01, scale=100.0).max_abs_diff == math.inf


def test_a_detection_below_the_served_score_may_be_unpaired_one_above_it_not() -> None:
    """A proposal cut inside a two-stage detector can add a low-scoring detection on one side only: excused
    below `served` (serve's default score), counted against the agreement from it up."""
    expected = np.array([[10, 10, 50, 50, 0.9, 1], [0, 0, 20, 20, 0.3, 1]], dtype=float)
    extra = np.concatenate([expected, [[60, 60, 90, 90, 0.43, 2]]])  # 0.43: above the cut (0.3 + atol)
    assert not compare_detections("case", extra, expected, atol=0.01, scale=100.0).ok
    result = compare_detections("case", extra, expected, atol=0.01, scale=100.0, served=0.5)
    assert result.ok and result.top1_agreement == 1.0 and "1 unpaired below the served score 0.5" in result.label
    missing = expected[[1]]  # the 0.9 detection gone from the export: served, so wrong whatever `served` is
    assert not compare_detections("case", missing, expected, atol=0.01, scale=100.0, served=0.5).ok
    assert compare_detections("case", missing, expected, atol=0.01, scale=100.0, served=0.95).ok


def test_no_detections_on_either_side_agree() -> None:
    empty = np.zeros((0, 6))
    result = compare_detections("case", empty, empty, atol=0.01, scale=320.0)
    assert result.ok and result.top1_agreement == 1.0 and result.max_abs_diff == 0.0


# ---------------------------------------------------------------------------------------------
# The inputs


def test_synthetic_pixels_are_the_closed_formula() -> None:
    pixels = synthetic_pixels(2, (3, 4))
    assert pixels.shape == (2, 3, 3, 4) and pixels.dtype == torch.float64
    n, c, y, x = 1, 2, 2, 3
    value = 0.5 + 0.5 * math.sin(0.05 * x * (c + 1) + 0.031 * y + 0.7 * n) * math.cos(0.017 * (x - y) + n)
    assert pixels[n, c, y, x].item() == pytest.approx(value, abs=1e-15)
    assert pixels[0, 0, 0, 0].item() == 0.5  # sin(0) = 0
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0


def test_synthetic_images_are_normalised_with_the_entry() -> None:
    spec = get_model("efficientnet_lite0").input  # mean 127/255-style constants from the card
    images = synthetic_images(spec, 1)
    assert images.shape == (1, 3, *spec.size) and images.dtype == torch.float32
    raw = synthetic_pixels(1, spec.size)
    for channel in range(3):
        expected = (raw[0, channel, 5, 7].item() - spec.mean[channel]) / spec.std[channel]
        assert images[0, channel, 5, 7].item() == pytest.approx(expected, rel=1e-6)
    assert synthetic_images(spec, 2, (30, 40)).shape == (2, 3, 30, 40)


def test_parity_cases_cover_every_dynamic_axis() -> None:
    image = parity_cases(get_model("efficientnet_lite0"))
    assert [c.inputs["pixel_values"].shape[0] for c in image] == [1, 5, 2] and [c.real for c in image] == [False, False, True]
    segmentation = parity_cases(get_model("lraspp_mobilenet_v3_large"))
    assert [tuple(c.inputs["pixel_values"].shape) for c in segmentation[:2]] == [(1, 3, 520, 520), (2, 3, 390, 520)]
    detection = parity_cases(get_model("ssdlite320_mobilenet_v3_large"))
    assert [tuple(c.inputs["image"].shape[1:]) for c in detection[:2]] == [(3, 240, 320), (3, 300, 200)]
    assert len(detection) == 4 and all(c.real for c in detection[2:])


def test_parity_case_labels_and_inputs_are_pinned() -> None:
    """The labels are what a bundle's parity report shows; the real flag decides which cases judge
    top-1 agreement on real inputs; each case feeds the input the graph takes."""
    image = parity_cases(get_model("efficientnet_lite0"))
    assert [c.label for c in image] == ["synthetic batch 1", "synthetic batch 5", "photos batch 2"]
    assert all(list(c.inputs) == ["pixel_values"] and c.inputs["pixel_values"].shape[1:] == (3, 224, 224) for c in image)
    segmentation = parity_cases(get_model("lraspp_mobilenet_v3_large"))
    assert [c.label for c in segmentation] == ["synthetic batch 1", "synthetic batch 2 at 390x520", "photo batch 1"]
    assert [c.real for c in segmentation] == [False, False, True]
    assert list(segmentation[2].inputs) == ["pixel_values"] and segmentation[2].inputs["pixel_values"].shape[0] == 1
    detection = parity_cases(get_model("ssdlite320_mobilenet_v3_large"))
    assert [c.label for c in detection] == ["synthetic 240x320", "synthetic 300x200", "photo flower.jpg", "photo china.jpg"]
    assert [tuple(c.inputs["image"].shape) for c in detection[:2]] == [(1, 3, 240, 320), (1, 3, 300, 200)]
    assert [c.real for c in detection] == [False, False, True, True]
    assert all(list(c.inputs) == ["image"] and c.inputs["image"].shape[:2] == (1, 3) for c in detection)


def test_answer_cases_are_the_windows_serve_feeds() -> None:
    """Question answering: a short context in one window, a long one in several overlapping windows of at
    most max_length tokens, each starting with [CLS] and the question, padded together."""
    import dataclasses

    from zoo.cache import fetch
    from zoo.preprocess import load_tokenizer
    from zoo.schema import OutputSpec

    minilm = get_model("all-minilm-l6-v2")
    entry = dataclasses.replace(minilm, task="question-answering",
                                output=OutputSpec(kind="span-logits", labels=("start", "end")))
    tokenizer = load_tokenizer(fetch(entry).files[entry.input.tokenizer], entry.input)
    short, long = parity_cases(entry, tokenizer)
    assert all(c.real and list(c.inputs) == ["input_ids", "attention_mask"] for c in (short, long))
    question = tokenizer.encode("Who jumps?").ids[:-1]  # [CLS] who jumps ? (without [SEP])
    ids, mask = long.inputs["input_ids"], long.inputs["attention_mask"]
    windows, width = ids.shape
    assert windows >= 2 and width == entry.input.max_length
    assert long.label == f"question + long context (windows): {windows}x{width}"
    assert all(row[:len(question)].tolist() == question for row in ids)
    assert mask[:-1].sum(1).tolist() == [width] * (windows - 1) and 0 < mask[-1].sum() <= width  # the last is padded
    assert short.inputs["input_ids"].shape[0] == 1 and short.label.startswith("question + short context: 1x")
    assert int(short.inputs["attention_mask"].sum()) == short.inputs["input_ids"].shape[1]


def test_text_parity_cases_reach_max_length() -> None:
    from zoo.cache import fetch
    from zoo.preprocess import load_tokenizer

    entry = get_model("all-minilm-l6-v2")
    tokenizer = load_tokenizer(fetch(entry).files[entry.input.tokenizer], entry.input)
    cases = parity_cases(entry, tokenizer)
    shapes = [tuple(c.inputs["input_ids"].shape) for c in cases]
    # "ok" is [CLS] ok [SEP]; the four texts pad to the longest of them (the fox, 20 tokens); the long
    # text is truncated at max_length
    assert shapes == [(1, 3), (1, 20), (4, 20), (2, entry.input.max_length)]
    assert [c.label for c in cases] == ["1 text, 3 tokens: seq 3", "1 text: seq 20", "4 texts, mixed lengths (padded): seq 20",
                                        f"2 texts, truncated at max_length: seq {entry.input.max_length}"]
    assert all(c.real for c in cases)
    assert cases[2].inputs["attention_mask"].sum(1).tolist()[3] == 3  # "ok" among them: padding masked


# ---------------------------------------------------------------------------------------------
# Static shapes


def test_static_batches_are_chunks_filled_with_the_first_row() -> None:
    rows = torch.arange(5.0).view(5, 1)
    cases = at_static_shape([ParityCase("five", {"x": rows}, real=True)], (2,))
    assert [c.inputs["x"].flatten().tolist() for c in cases] == [[0.0, 1.0], [2.0, 3.0], [4.0, 4.0]]
    assert [c.label for c in cases] == ["five, rows 0+ at 2", "five, rows 2+ at 2", "five, rows 4+ at 2"]
    assert all(c.real for c in cases)


def test_static_text_is_truncated_or_padded_with_the_pad_id() -> None:
    ids = torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    short = at_static_shape([ParityCase("t", {"input_ids": ids, "attention_mask": mask})], (2, 3), pad_id=5)
    assert short[0].inputs["input_ids"].tolist() == [[101, 7, 8], [101, 9, 102]]
    long = at_static_shape([ParityCase("t", {"input_ids": ids, "attention_mask": mask})], (1, 6), pad_id=5)
    assert [c.inputs["input_ids"].tolist() for c in long] == [[[101, 7, 8, 102, 5, 5]], [[101, 9, 102, 0, 5, 5]]]
    assert [c.inputs["attention_mask"].tolist() for c in long] == [[[1, 1, 1, 1, 0, 0]], [[1, 1, 1, 0, 0, 0]]]
    assert long[1].label == "t, rows 1+ at 1x6"


# ---------------------------------------------------------------------------------------------
# check_parity against a runtime stand-in computed independently


class NumpyLinear:
    """An onnxruntime-session stand-in: the same affine map in numpy, plus a planted offset."""

    def __init__(self, layer: torch.nn.Linear, offset: float):
        self.weight, self.bias, self.offset = layer.weight.detach().numpy(), layer.bias.detach().numpy(), offset
        self.asked: list[list[str]] = []

    def run(self, names, feeds):
        self.asked.append(names)
        (x,) = feeds.values()
        return [x @ self.weight.T + self.bias + self.offset]


def test_check_parity_judges_each_case_against_torch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).eval()
    entry = get_model("efficientnet_lite0")
    cases = [ParityCase("one", {"pixel_values": torch.randn(1, 4)}), ParityCase("three", {"pixel_values": torch.randn(3, 4)})]
    close = NumpyLinear(model, 5e-5)
    results = check_parity(model, close, entry, cases, 1e-4, "logits")
    assert [r.ok for r in results] == [True, True] and close.asked == [["logits"], ["logits"]]
    assert all(abs(r.max_abs_diff - 5e-5) < 1e-6 for r in results)
    far = check_parity(model, NumpyLinear(model, 2e-4), entry, cases, 1e-4, "logits")
    assert [r.ok for r in far] == [False, False]
    # a cosine floor judges instead of atol: a constant offset of 2e-4 keeps the rows' direction
    floor = check_parity(model, NumpyLinear(model, 2e-4), entry, cases, None, "logits", cosine_floor=0.99)
    assert all(r.ok for r in floor)
    report = summary(far)
    assert report["ok"] is False and report["max_abs_diff"] == max(r.max_abs_diff for r in far)
    assert report["cases"][0] == comparison_record(far[0]) and report["cases"][0]["case"] == "one"
    assert summary([])["ok"] is True and math.isnan(summary([])["max_abs_diff"])
