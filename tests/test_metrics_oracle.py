"""Validation metrics against values worked out by hand on tiny cases (issue 19): mean IoU and pixel
accuracy, COCO mAP at 0.5 and over 0.5:0.95 (101-point interpolation), entity F1."""

from __future__ import annotations

import pytest
import torch

from zoo.metrics import IGNORE_INDEX, classification_metrics, detection_metrics, entity_metrics, segmentation_metrics


def test_mean_iou_and_pixel_accuracy_by_hand() -> None:
    target = torch.tensor([[[0, 0, 1], [1, 2, IGNORE_INDEX]]])
    predicted = torch.tensor([[[0, 1, 1], [1, 2, 2]]])
    # five counted pixels (the last is ignored). IoU: class 0 1/2, class 1 2/3, class 2 1/1; class 3 is in
    # neither and does not count. Pixel accuracy 4/5.
    metrics = segmentation_metrics(predicted, target, num_classes=4)
    assert metrics["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3, abs=1e-6)
    assert metrics["pixel_accuracy"] == pytest.approx(4 / 5, abs=1e-6)


def test_coco_map_by_hand() -> None:
    """Two ground-truth boxes; detections: an exact hit (0.9), a false positive (0.8), a box at IoU 0.62
    with the second (0.7). IoU 0.5-0.6: TP FP TP, precision/recall (1, 1/2) (1/2, 1/2) (2/3, 1): the 51
    recall points up to 0.5 interpolate to 1, the 50 above to 2/3. IoU 0.65-0.95: TP FP FP: 51 points at 1."""
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), "labels": torch.tensor([1, 1])}]
    detections = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [20.0, 20.0, 30.0, 26.2]]),
                   "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 1])}]
    ap_low = (51 * 1.0 + 50 * (2 / 3)) / 101
    ap_high = 51 / 101
    metrics = detection_metrics(detections, targets)
    assert metrics["map50"] == pytest.approx(ap_low, abs=1e-4)
    assert metrics["map"] == pytest.approx((3 * ap_low + 7 * ap_high) / 10, abs=1e-4)


def test_entity_f1_by_hand() -> None:
    target = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-PER"], ["B-LOC", "B-LOC"]]
    # gold: PER, LOC, LOC (3); predicted: PER, PER, LOC, LOC (4); correct: PER (0-1), LOC (second 0)
    metrics = entity_metrics(predicted, target)
    assert metrics["entity_precision"] == pytest.approx(2 / 4)
    assert metrics["entity_recall"] == pytest.approx(2 / 3)
    assert metrics["entity_f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))


def test_classification_metrics_by_hand() -> None:
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])
    metrics = classification_metrics(predicted, target, num_classes=3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # F1 per class: 0: P 1, R 2/3 -> 0.8; 1: P 1/2, R 1/2 -> 0.5; 2: P 1/2, R 1 -> 2/3
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)


@pytest.mark.parametrize(("predicted", "target", "macro_f1"), [
    ([0, 0, 1, 1], [0, 0, 1, 1], 1.0),  # class 2 in neither: left out (it would make 2/3)
    ([0, 2, 1, 1], [0, 0, 1, 1], (2 / 3 + 1 + 0) / 3),  # class 2 only predicted: counts, with F1 0
    ([0, 0, 0, 0], [0, 0, 1, 1], (2 / 3 + 0) / 2),
])
def test_macro_f1_leaves_out_classes_in_neither_labels_nor_predictions(predicted, target, macro_f1) -> None:
    """scikit-learn's convention (its f1_score(average="macro") gives the same numbers): a validation split
    that lacks a class is not scored down for it."""
    metrics = classification_metrics(torch.tensor(predicted), torch.tensor(target), num_classes=3)
    assert metrics["macro_f1"] == pytest.approx(macro_f1, abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(sum(p == t for p, t in zip(predicted, target)) / 4)
