"""The end of a fine-tuning run: its model file, tokenizer files, reference outputs and, last, the card
(card.json) that marks the run complete and describes it (see zoo.runs for the layout)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from serve.files import sha256_file
from zoo.cache import fetch
from zoo.specs import model_name
from zoo.config import FinetuneConfig
from zoo.data import Dataset
from zoo.evaluation import reference_cases
from zoo.provenance import package_versions
from zoo.runs import CARD, RUN_WEIGHTS_FILE, load_weights, write_json_atomic
from zoo.schema import ModelEntry
from zoo.tolerances import REFERENCE_ATOL

if TYPE_CHECKING:
    from zoo.runtime import Runtime
    from zoo.trainer import Trainer

TRAINING_PACKAGES = ("zoo", "torch", "torchvision", "transformers", "tokenizers", "safetensors", "numpy")


def finish_run(trainer: Trainer, model: nn.Module, entry: ModelEntry, dataset: Dataset, config: FinetuneConfig,
               out: Path, weights: Path, fingerprint: str, best_epoch: int, best_metrics: dict[str, float],
               history: list[dict[str, Any]], runtime: Runtime, choices: list[str], refit: dict[str, Any] | None = None) -> None:
    """The selected `weights`, tokenizer files, reference outputs and, last, the card that marks the run
    complete. `best_epoch` and `best_metrics` are the selection's, on the validation split; with `refit`,
    the weights come from the pass on train + val that followed it."""
    model = model.to("cpu").to(memory_format=torch.contiguous_format)
    load_weights(model, weights)
    if entry.modality == "text":  # the reference outputs come from the graph the exporter traces
        from zoo.builders.hf_encoder import set_attention

        set_attention(model, "eager")
    shutil.copyfile(weights, out / RUN_WEIGHTS_FILE)
    files = {RUN_WEIGHTS_FILE: sha256_file(out / RUN_WEIGHTS_FILE)}
    if entry.modality == "text":
        fetched = fetch(entry)
        for spec in entry.files:
            if spec.role == "tokenizer":
                shutil.copyfile(fetched.files[spec.name], out / spec.name)
                files[spec.name] = fetched.sha256[spec.name]
    spec = entry.input
    card = {
        "format": "zoo-run", "format_version": 1,
        "base_model": model_name(entry), "base_origin": entry.provenance.origin, "license": entry.provenance.license,
        "labels": dataset.labels, "head": config.head,
        "positive_label": dataset.labels[1] if config.head == "binary" else None,
        "preprocessing": dataclasses.asdict(spec),
        "data": {**dataset.summary(), "fingerprint": fingerprint},
        "hyperparameters": dataclasses.asdict(config), "choices": choices,
        "probe": trainer.probe_info, "pairs": trainer.pairs_info,
        "best_epoch": best_epoch, "best_metrics": best_metrics, "epochs_run": sum(row["epoch"] > 0 for row in history),
        "refit": refit,
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(runtime.device), "processes": runtime.world_size,
        "packages": package_versions(TRAINING_PACKAGES), "files": files,
        "reference": {"producer": "the fine-tuned torch model at the end of the run", "atol": REFERENCE_ATOL,
                      "cases": reference_cases(trainer, model)},
    }
    write_json_atomic(out / CARD, card)

