"""Run directories written by `zoo finetune`, and reading a finished run back as a model entry so
`zoo validate RUN_DIR` and `zoo export RUN_DIR` treat it like a registry model.

    RUN/run.json              configuration, base model, labels, head, data summary + fingerprint
    RUN/checkpoints/{best,last}.safetensors, RUN/training_state.pt (optimizer, schedule, progress)
    RUN/metrics.jsonl, metrics.csv, metrics.png
    RUN/model.safetensors     the best weights (backbone + head)
    RUN/<tokenizer files>     text models
    RUN/card.json             written last: a run without it is incomplete and is never loaded
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve.files import atomic_path, write_text_atomic
from zoo.errors import InputError
from zoo.registry import get_model
from zoo.schema import FileSpec, Metric, ModelEntry, OutputSpec, Reference, ReferenceCase, SourceSpec
from zoo.tasks import get_task

if TYPE_CHECKING:
    from torch import nn

CARD = "card.json"
RUN_CONFIG = "run.json"
RUN_WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"  # optimizer, schedule, progress: what --resume needs


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """InputError unless `out` can hold a new run (empty or absent; a previous run with `overwrite`, which
    is deleted) or, with `resume`, holds an interrupted one."""
    if resume:
        if not (out / RUN_CONFIG).is_file() or not (out / STATE_FILE).is_file():
            raise InputError(f"--resume {out}: no interrupted run there (expected {RUN_CONFIG} and {STATE_FILE})")
        if (out / CARD).is_file():
            raise InputError(f"--resume {out}: that run already finished; start a new one with another --out")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise InputError(f"--out {out} exists and is not empty; pass --resume to continue that run, "
                             "--overwrite to replace it, or choose another folder")
        if not (out / RUN_CONFIG).is_file():
            raise InputError(f"--overwrite: {out} is not a run directory (no {RUN_CONFIG}); refusing to delete it")
        shutil.rmtree(out)


def is_run_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and ((Path(path) / CARD).is_file() or (Path(path) / RUN_CONFIG).is_file())


def load_run_entry(run_dir: str | Path) -> ModelEntry:
    """A finished run as a ModelEntry (builder 'run': base architecture + head + the run's weights)."""
    run_dir = Path(run_dir).resolve()
    card_path = run_dir / CARD
    if not card_path.is_file():
        raise InputError(f"{run_dir} is not a finished fine-tuning run (no {CARD}); "
                         f"resume it with `zoo finetune ... --resume` or start it again")
    card = json.loads(card_path.read_text())
    base = resolve_name(card["base_model"])  # a registry id or a model spec
    task = get_task(card["hyperparameters"].get("task") or _task_of_older_run(base, card["head"]))
    tokens = task.output_kind in ("token-logits", "span-logits")  # per-token rows of the encoder's width
    files = tuple(FileSpec(name=name, role="weights" if name == RUN_WEIGHTS_FILE else "tokenizer", sha256=digest)
                  for name, digest in card["files"].items())
    reference = Reference(
        producer=card["reference"]["producer"], atol=card["reference"]["atol"],
        cases=tuple(ReferenceCase(input=c["input"], output=tuple(tuple(r) for r in c["output"]),
                                  texts=tuple(c.get("texts", ()))) for c in card["reference"]["cases"]))
    return dataclasses.replace(
        base,
        id=f"run-{card['files'][RUN_WEIGHTS_FILE][:12]}",
        description=f"{base.id} fine-tuned on {card['data']['source']} ({card['head']} head)",
        task=task.name,
        builder="run",
        builder_args={"base": card["base_model"], "head": card["head"], "num_labels": len(card["labels"]),
                      "run_dir": str(run_dir)},
        weights_format="safetensors",
        files=files,
        sources=(SourceSpec(kind="path", path=str(run_dir)),),
        params=card["params"],
        output=OutputSpec(kind=task.output_kind, labels=tuple(card["labels"]), dim=base.output.dim if tokens else None),
        metrics=tuple(Metric(name=f"val/{k}", value=v, source=f"zoo finetune {run_dir}")
                      for k, v in card["best_metrics"].items()),
        reference=reference,
        gflops=None,
    )


def _task_of_older_run(base: ModelEntry, head: str) -> str:
    """The task of a run written before run cards stored it: the base's own (segmentation, detection), or
    what a text encoder's head was for."""
    if base.task in ("semantic-segmentation", "object-detection"):
        return base.task
    return {"token": "token-classification", "span": "question-answering"}.get(head, f"{base.modality}-classification")


def resolve_name(name: str) -> ModelEntry:
    """A registry id, a model spec (zoo.specs: KIND:WHAT), or the path of a finished run directory."""
    from zoo.specs import is_spec, resolve_spec

    kind = name.split(":", 1)[0]
    if is_spec(name) or (":" in name and kind.isalpha() and len(kind) > 1 and not Path(name).exists()):
        return resolve_spec(name)  # an unknown KIND: is refused naming the supported ones
    if os.sep in name or name.startswith(".") or Path(name).is_dir():
        if is_run_dir(name):
            return load_run_entry(name)
        if Path(name).exists():
            raise InputError(f"{name} is neither a registry model nor a fine-tuning run directory")
        raise InputError(f"{name} does not exist; expected a registry model name or a fine-tuning run directory")
    return get_model(name)


# Writing a run (zoo.training). safetensors and matplotlib are imported inside the functions:
# reading a finished run (the CLI's name resolution) must not need them.


def save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)), strict=True)


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    import csv

    with open(run_dir / "metrics.jsonl", "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in history)
    columns = list(history[0])
    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    _plot(run_dir / "metrics.png", history)


def _plot(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    if history[0]["val_loss"] is not None:  # detectors report no validation loss
        left.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    scores = [key for key in history[0] if key.startswith("val_") and key != "val_loss"]  # accuracy, macro_f1, ...
    for key in scores:
        right.plot(epochs, [r[key] for r in history], "o-", label=key.replace("_", " "))
    right.set_xlabel("epoch")
    right.set_ylim(0, 1.02)
    if scores:  # a refit pass has no validation split
        right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
