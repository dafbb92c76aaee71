"""Tasks, named as the registry names them: one vocabulary from the registry entry to the data, the head,
the metrics and the run's model. This module is the metadata, importable without torch; each task's
torch side (data loading, evaluation, reference inputs, data summary) is one module of this package,
loaded by `implementation`, and follows `TaskImplementation`.

A base model is fine-tuned for the task its entry names, or, for a text encoder (feature-extraction,
sentence-embedding), for the task `--task` names: text-classification unless said otherwise. The data
file is read as that task's data, never sniffed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from zoo.errors import InputError
from zoo.tolerances import DETECTION_ATOL

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    from torch import nn

    from serve.manifest import Postprocessing

    from zoo.config import FinetuneConfig
    from zoo.data import Dataset, Example
    from zoo.reference import Comparison
    from zoo.schema import ModelEntry
    from zoo.tasks.inputs import ExportIO, ParityCase
    from zoo.trainer import Trainer


@dataclass(frozen=True)
class Task:
    """What zoo knows about a task before torch is imported."""

    name: str  # the registry's task name
    module: str  # zoo.tasks.<module>: the torch side
    output_kind: str  # OutputSpec.kind of a model for this task
    metrics: tuple[str, ...] = ()  # --metric choices of a run; the first is the default
    heads: tuple[str, ...] = ("multiclass",)  # --head values; the first when --head is not given
    head: str | None = None  # the head this task always attaches, whatever --head says (token, span)
    head_rule: str = ""  # what the error says when --head is not one of `heads`
    linear_head: bool = False  # one linear layer on pooled features: a linear probe can fit it (zoo.probe)
    finetunes_into: tuple[str, ...] = ()  # a base model's tasks for fine-tuning; the first is the default
    refused_formats: tuple[tuple[str, str], ...] = ()  # (export format, why it is refused)
    static_shape: str | None = None  # why --static-shape is refused (None: it is not)
    raw_pixels: bool = False  # the exported graph takes pixels in [0, 1] and resizes and normalises itself
    evaluated_per_image: bool = False  # validation runs one image at a time, at its own size, as serve does
    new_decoder: bool = False  # new layers beyond one linear head (a decoder): they learn the data's BatchNorm statistics
    # ONNX export: the TorchScript exporter (the dynamo one cannot export the graph; export.onnx_export), and
    # the tolerance of the export's parity with torch when it is not EXPORT_ATOL's float32 one
    torchscript_export: bool = False
    export_atol: float | None = None


CLASSIFICATION_METRICS = ("macro_f1", "accuracy", "loss")
# How a run's log names each task's metrics (a name means one thing in every task)
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "miou": "mIoU", "pixel_accuracy": "pixel accuracy",
                "map50": "mAP@0.5", "map": "mAP@[.5:.95]", "entity_f1": "entity F1", "entity_precision": "entity precision",
                "entity_recall": "entity recall", "squad_f1": "SQuAD F1", "exact_match": "exact match",
                "mean_ap": "mean AP", "micro_f1": "micro-F1"}
# Measured with onnx2tf 1.29.24 at a fixed 1x3x240x320 input: SSDlite stops at a constant anchor tensor
# ("Output tensors of a Functional model must be the output of a TensorFlow Layer"), Faster R-CNN inside
# a Mul of its box decoding (ValueError in tf.math.multiply).
_DETECTION_SAVEDMODEL = ("onnx2tf does not convert torchvision's detection graphs, even at a fixed image size; "
                         "serve the ONNX model (onnxruntime, Triton)")
_EMBEDDING_TARGETS = ("text-classification", "token-classification", "question-answering")

TASKS: dict[str, Task] = {task.name: task for task in (
    Task("image-classification", "classification", "logits", CLASSIFICATION_METRICS, ("multiclass", "binary"),
         head_rule="the multiclass or the binary head", linear_head=True,
         finetunes_into=("image-classification", "multi-label-image-classification")),
    Task("multi-label-image-classification", "multi_label", "logits", ("mean_ap", "micro_f1", "macro_f1", "loss"),
         ("multiclass", "multilabel"), head="multilabel", head_rule="one sigmoid logit per label"),
    Task("text-classification", "classification", "logits", CLASSIFICATION_METRICS, ("multiclass", "binary"),
         head_rule="the multiclass or the binary head", linear_head=True),
    Task("semantic-segmentation", "segmentation", "segmentation", ("miou", "pixel_accuracy", "loss"),
         head_rule="the multiclass head (one logit per class and pixel)", finetunes_into=("semantic-segmentation",),
         evaluated_per_image=True, new_decoder=True,
         static_shape="exported for any image size (its masks come back at each image's resolution)"),
    # torchvision's detectors compute their losses in training mode only: no validation loss to select on
    Task("object-detection", "detection", "detection", ("map50", "map"),
         head_rule="the multiclass head (one score per class and box)", finetunes_into=("object-detection",),
         refused_formats=(("onnx-int8", "int8 quantization of detection graphs (NMS, RoIAlign, box decoding) is not "
                                        "supported; export onnx"),
                          ("savedmodel", _DETECTION_SAVEDMODEL), ("tf-serving", _DETECTION_SAVEDMODEL)),
         static_shape="exported for one image of any size", raw_pixels=True, evaluated_per_image=True,
         new_decoder=True, torchscript_export=True, export_atol=DETECTION_ATOL),
    Task("token-classification", "token_classification", "token-logits",
         ("entity_f1", "entity_precision", "entity_recall", "loss"), ("multiclass", "token"), head="token",
         head_rule="one multiclass label per token"),
    Task("question-answering", "question_answering", "span-logits", ("squad_f1", "exact_match", "loss"),
         ("multiclass", "span"), head="span", head_rule="the span head (start and end per token)"),
    Task("feature-extraction", "embedding", "embedding", finetunes_into=_EMBEDDING_TARGETS),
    Task("sentence-embedding", "embedding", "embedding", finetunes_into=_EMBEDDING_TARGETS),
)}
FINETUNE_TASKS = tuple(name for name, task in TASKS.items() if task.metrics)  # what runs are trained for


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None


def finetune_task(entry: ModelEntry, requested: str | None) -> Task:
    """The task `entry` is fine-tuned for: `requested` (--task) when the model can learn it, else the
    first its task allows. InputError naming the choices otherwise."""
    allowed = get_task(entry.task).finetunes_into
    if not allowed:
        raise InputError(f"{entry.id} is a {entry.task} model; zoo fine-tunes base models for "
                         f"{', '.join(FINETUNE_TASKS)}")
    if requested is None:
        return TASKS[allowed[0]]
    if requested not in allowed:
        raise InputError(f"--task {requested}: {entry.id} ({entry.task}) can be fine-tuned for "
                         f"{', '.join(allowed)}")
    return TASKS[requested]


class TaskImplementation(Protocol):
    """The torch side of a task, one module each (zoo.tasks.classification, ...); tasks nothing is
    fine-tuned for (zoo.tasks.embedding) have the export side only (parity_cases, compare,
    bundle_postprocessing, export_io)."""

    def load_data(self, path: str | Path, entry: ModelEntry, config: FinetuneConfig) -> Dataset:
        """The labelled examples at `path`, split into train and val (a given split, or config.val_fraction
        with config.seed)."""

    def batching(self, examples: Sequence[Example], train: bool, trainer: Trainer) -> tuple[Sequence[Any], Callable]:
        """A map-style dataset of `examples` (training: with the run's augmentation) and the collate that
        makes its batches: ({input name: tensor}, target) for the model and `criterion`."""

    def criterion(self, config: FinetuneConfig) -> nn.Module | None:
        """The training loss of (logits, target batch); None where the model computes its own (detectors),
        which the module's model_loss(trainer, model, inputs, targets) then returns."""

    def evaluate(self, trainer: Trainer, model: nn.Module) -> dict[str, float | None]:
        """The task's metrics on the validation split, and "loss" (None where the model has none in eval)."""

    def reference_cases(self, entry: ModelEntry) -> list[dict[str, Any]]:
        """The fixed inputs whose outputs a run's card stores ({"input", "batch"[, "texts"]})."""

    def summary(self, dataset: Dataset) -> dict[str, Any]:
        """What the card says about the data beyond source, split and labels (counts per class, ...)."""

    def parity_cases(self, entry: ModelEntry, tokenizer: Any = None) -> list[ParityCase]:
        """The inputs an export of `entry` is compared with torch on (every task, trainable or not)."""

    def compare(self, label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None,
                cosine_floor: float | None = None, scale: float | None = None) -> Comparison:
        """An export's (or a stored reference's) outputs against torch's, judged as this task decides: max
        |diff| within `atol` (or each row's cosine above `cosine_floor`) and the agreement of its decisions."""

    def bundle_postprocessing(self, entry: ModelEntry) -> Postprocessing:
        """The manifest's postprocessing: what serve makes of the outputs (serve.kinds)."""

    def export_io(self, entry: ModelEntry, tokenizer: Any = None) -> ExportIO:
        """The export's example inputs, their dynamic axes (and outputs'), and the output names."""


def implementation(task: Task) -> TaskImplementation:
    """The torch side of `task` (imports torch)."""
    return importlib.import_module(f"zoo.tasks.{task.module}")  # type: ignore[return-value]


__all__ = ["CLASSIFICATION_METRICS", "FINETUNE_TASKS", "METRIC_NAMES", "TASKS", "Task", "TaskImplementation", "finetune_task",
           "get_task", "implementation"]
