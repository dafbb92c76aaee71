"""Validation metrics of every task, from well-kept libraries where they exist: accuracy and macro-F1
(classification, torchmetrics), mIoU and pixel accuracy (segmentation, torchmetrics), COCO mAP (detection,
torchmetrics + pycocotools), entity-level F1 (NER, seqeval). Question answering's SQuAD scores are
computed where the answers are decoded (zoo.training)."""

from __future__ import annotations

import torch

from zoo.data import IGNORE_INDEX


def classification_metrics(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (torchmetrics): the mean F1 over the classes that occur in the labels or the
    predictions; a class absent from both (a small validation split) is left out, as scikit-learn does."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    kwargs = {"num_classes": num_classes, "validate_args": False}
    return {"accuracy": float(multiclass_accuracy(predicted, target, average="micro", **kwargs)),
            "macro_f1": float(multiclass_f1_score(predicted, target, average="macro", **kwargs))}


def segmentation_metrics(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Mean IoU over the classes present in prediction or target, and pixel accuracy; pixels marked
    IGNORE_INDEX count in neither (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index

    kwargs = {"num_classes": num_classes, "ignore_index": IGNORE_INDEX, "validate_args": False}
    return {"miou": float(multiclass_jaccard_index(predicted, target, average="macro", **kwargs)),
            "pixel_accuracy": float(multiclass_accuracy(predicted, target, average="micro", **kwargs))}


def detection_metrics(detections: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """COCO mAP at IoU 0.5 and averaged over IoU 0.5:0.95 (torchmetrics with pycocotools)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    metric.warn_on_many_detections = False  # COCO counts the 100 best per image; SSDlite returns up to 300
    metric.update([{k: d[k].cpu() for k in ("boxes", "scores", "labels")} for d in detections],
                  [{k: t[k].cpu() for k in ("boxes", "labels")} for t in targets])
    scores = metric.compute()
    # -1 means "no ground truth at all" (an empty validation split); report 0 rather than a negative score.
    return {"map50": max(0.0, float(scores["map_50"])), "map": max(0.0, float(scores["map"]))}


def entity_metrics(predicted: list[list[str]], target: list[list[str]]) -> dict[str, float]:
    """Entity-level micro F1, precision and recall over IOB2 tag sequences (seqeval, conlleval's rules)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    kwargs = {"zero_division": 0}
    return {"entity_f1": float(f1_score(target, predicted, **kwargs)),
            "entity_precision": float(precision_score(target, predicted, **kwargs)),
            "entity_recall": float(recall_score(target, predicted, **kwargs))}
