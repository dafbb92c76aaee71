"""zoo.tasks: one vocabulary (the registry's task names) from the entry to the run, without torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from zoo.errors import InputError
from zoo.registry import get_model, load_registry
from zoo.tasks import FINETUNE_TASKS, METRIC_NAMES, TASKS, finetune_task, get_task, implementation


def test_every_registry_task_is_a_task_and_every_trainable_one_has_its_module() -> None:
    assert {entry.task for entry in load_registry().values()} <= set(TASKS)
    for name in FINETUNE_TASKS:
        module = implementation(TASKS[name])
        for function in ("load_data", "batching", "criterion", "evaluate", "reference_cases", "summary"):
            assert callable(getattr(module, function)), (name, function)
        assert TASKS[name].metrics and TASKS[name].heads and TASKS[name].head_rule
        assert set(TASKS[name].metrics) - {"loss"} <= set(METRIC_NAMES), name  # the run's log names each
    for task in TASKS.values():  # every task's export is checked on its own inputs and says what serve makes of it
        assert callable(implementation(task).parity_cases) and callable(implementation(task).compare), task.name
    for entry in load_registry().values():
        post = implementation(get_task(entry.task)).bundle_postprocessing(entry)
        assert post.kind == {"embedding": "embedding", "logits": "classification", "span-logits": "question-answering",
                             "token-logits": "token-classification"}.get(entry.output.kind, entry.output.kind)
    for entry in load_registry().values():  # every base model can be fine-tuned for its default task
        assert get_task(entry.task).output_kind == entry.output.kind, entry.id
        if entry.builder == "hf_task" and entry.modality == "text":  # ready-made task models are endpoints
            with pytest.raises(InputError, match="zoo fine-tunes base models for"):
                finetune_task(entry, None)
        else:
            assert finetune_task(entry, None).name in FINETUNE_TASKS


def test_the_task_of_a_fine_tuning_run() -> None:
    encoder, image = get_model("all-minilm-l6-v2"), get_model("efficientnet_lite0")
    assert finetune_task(encoder, None).name == "text-classification"
    assert finetune_task(encoder, "question-answering").head == "span"
    assert finetune_task(image, None).name == "image-classification"
    with pytest.raises(InputError, match=r"--task question-answering: efficientnet_lite0 \(image-classification\) "
                                         r"can be fine-tuned for image-classification"):
        finetune_task(image, "question-answering")
    with pytest.raises(InputError, match="unknown task 'nope'"):
        get_task("nope")
    run = dataclasses.replace(encoder, task="text-classification")
    with pytest.raises(InputError, match="is a text-classification model; zoo fine-tunes base models"):
        finetune_task(run, None)


def test_task_metadata_and_the_command_line_import_without_torch() -> None:
    code = "import sys, zoo.tasks, zoo.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_refused_formats_are_formats_and_the_format_list_needs_no_torch() -> None:
    from export.formats import FORMAT_NAMES, FORMATS, with_needs

    for task in TASKS.values():
        assert {fmt for fmt, why in task.refused_formats} <= set(FORMAT_NAMES) and all(why for _, why in task.refused_formats)
    assert with_needs(["tf-serving", "onnx"]) == ("onnx", "savedmodel", "tf-serving")  # in FORMATS order
    assert all(FORMATS[name].outputs for name in FORMAT_NAMES) and FORMATS["onnx"].module is None
    code = "import sys, export.formats; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_export_io_is_the_tasks() -> None:
    """Each task names its export's outputs: a token or span head outputs logits (not the encoder's
    sentence_embedding), a detector its boxes, scores and labels for one image of any size."""
    from zoo.cache import fetch
    from zoo.preprocess import load_tokenizer

    encoder = get_model("all-minilm-l6-v2")
    tokenizer = load_tokenizer(fetch(encoder).files[encoder.input.tokenizer], encoder.input)
    names = {task: implementation(TASKS[task]).export_io(encoder, tokenizer)[2]
             for task in ("sentence-embedding", "token-classification", "question-answering", "text-classification")}
    assert names == {"sentence-embedding": ["sentence_embedding"], "token-classification": ["logits"],
                     "question-answering": ["logits"], "text-classification": ["logits"]}
    detector = get_model("ssdlite320_mobilenet_v3_large")
    example, axes, outputs = implementation(get_task(detector.task)).export_io(detector)
    assert list(example) == ["image"] and axes["image"] == {2: "height", 3: "width"} and len(outputs) == 3
    assert get_task(detector.task).raw_pixels and not get_task("semantic-segmentation").raw_pixels


def test_each_task_owns_its_loss() -> None:
    """The loss comes from the task module: binary and multi-class heads differ, a detector has its own,
    and a head that takes no label smoothing refuses it before any data is read."""
    import torch

    from zoo.config import FinetuneConfig

    classification = implementation(TASKS["image-classification"])
    logits, target = torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 0])
    binary = classification.criterion(FinetuneConfig(head="binary"))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    assert torch.allclose(binary(logits, target), expected)
    multiclass = classification.criterion(FinetuneConfig(label_smoothing=0.1))
    assert multiclass.label_smoothing == 0.1
    assert implementation(TASKS["object-detection"]).criterion(FinetuneConfig()) is None
