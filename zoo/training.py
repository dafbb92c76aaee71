"""`zoo finetune`: a pretrained backbone, a new head, a freeze policy, a training loop (CPU or
CUDA with AMP, single process or torchrun/DDP), and a resumable run directory (see zoo.runs).

This module holds the run's course: the data and settings (finetune), the loop with its checkpoints,
selection and early stopping (_run), and the refit on train + val. What one pass trains is
zoo.trainer's, where it runs zoo.runtime's, what it writes at the end zoo.run_card's."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from serve.files import atomic_path
from zoo import recipe
from zoo.config import FinetuneConfig
from zoo.data import Dataset
from zoo.errors import InputError, ZooError
from zoo.evaluation import evaluate
from zoo.factory import resolve
from zoo.freeze import describe_trainable, parameter_groups, trainable_table
from zoo.heads import head_outputs
from zoo.optimization import lr_schedule, make_optimizer
from zoo.provenance import package_versions
from zoo.run_card import TRAINING_PACKAGES, finish_run
from zoo.runs import RUN_CONFIG, STATE_FILE, load_weights, prepare_run_dir, save_weights, write_json_atomic, write_metrics
from zoo.runtime import Runtime, agree, cuda_math, default_workers, on_main, seed_everything, start_runtime, state_sha256, sync_buffers
from zoo.schema import ModelEntry
from zoo.specs import model_name
from zoo.tasks import METRIC_NAMES, finetune_task, implementation
from zoo.trainer import Trainer

PROBE_FEATURES = "probe_features.safetensors"  # the frozen features the probe was fitted on


@dataclass
class FinetuneResult:
    run_dir: Path | None
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    trainable: list[tuple[str, int, int]] = field(default_factory=list)
    last_weights_sha256: str = ""  # of this process's in-memory weights after the last epoch (DDP ranks agree)
    refit_history: list[dict[str, Any]] = field(default_factory=list)  # the pass on train + val (--refit)


def _with_positive(dataset: Dataset, positive: str | None) -> Dataset:
    """Binary head: the positive class is label 1 (the second in sorted order unless --positive)."""
    if positive is None or positive == dataset.labels[1]:
        return dataset
    if positive not in dataset.labels:
        raise InputError(f"--positive {positive!r} is not one of the labels {dataset.labels}")
    swap = {0: 1, 1: 0}
    relabel = lambda examples: [dataclasses.replace(e, label=swap[e.label]) for e in examples]  # noqa: E731
    return dataclasses.replace(dataset, labels=dataset.labels[::-1], train=relabel(dataset.train), val=relabel(dataset.val))


def finetune(model: str | ModelEntry, data: str | Path, out: str | Path | None, config: FinetuneConfig | None = None,
             *, resume: bool = False, overwrite: bool = False, quiet: bool = False, dry_run: bool = False,
             on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None, **overrides: Any) -> FinetuneResult:
    """Fine-tune registry model `model` on `data` into run directory `out`; `overrides` set
    FinetuneConfig fields. With `resume`, the configuration stored in `out` is used as it is."""
    out_dir = Path(out) if out is not None else None
    if resume:
        if out_dir is None:
            raise InputError("--resume needs the run directory")
        prepare_run_dir(out_dir, resume=True, overwrite=False)
        stored = json.loads((out_dir / RUN_CONFIG).read_text())
        if overrides or config is not None:
            raise InputError(f"--resume continues with the settings stored in {out_dir / RUN_CONFIG}; "
                             f"drop {', '.join(sorted(overrides)) or 'the configuration'}")
        if model is not None and model != stored["base_model"]:
            raise InputError(f"--resume: {out_dir} fine-tunes {stored['base_model']!r}, not {model!r}")
        config = FinetuneConfig(**stored["config"])
        model, data = stored["base_model"], data or stored["data"]["source"]
    config = dataclasses.replace(config or FinetuneConfig(), **overrides)
    config.check()
    entry = resolve(model)
    if entry.builder == "run":
        raise InputError("fine-tuning a fine-tuned run is not supported yet; start from its base model "
                         f"{entry.builder_args['base']!r}")
    task = finetune_task(entry, config.task)  # stored in the config by recipe.resolve
    if config.metric == "auto":
        config = dataclasses.replace(config, metric=task.metrics[0])
    elif config.metric not in task.metrics:
        raise InputError(f"--metric {config.metric}: {entry.id} fine-tuned for {task.name}; expected one of "
                         f"{', '.join(task.metrics)}")
    if config.head not in task.heads:
        raise InputError(f"--head {config.head}: {task.name} takes {task.head_rule}")
    if task.head is not None:
        config = dataclasses.replace(config, head=task.head)
    implementation(task).criterion(config)  # its refusals come before anything is read or written
    dataset = implementation(task).load_data(data, entry, config)
    if config.head == "binary":
        head_outputs("binary", len(dataset.labels))
        dataset = _with_positive(dataset, config.positive)
    elif config.positive is not None:
        raise InputError("--positive applies to --head binary only")
    fingerprint = dataset.fingerprint()
    if resume and stored["data"]["fingerprint"] != fingerprint:
        raise InputError(f"--resume: the data in {data} changed since the run started (fingerprint "
                         f"{stored['data']['fingerprint'][:12]} -> {fingerprint[:12]}); start a new run")
    if not dry_run and not resume and out_dir is None:
        raise InputError("--out is required (or use --dry-run)")
    if resume:
        choices = stored.get("choices", [])
    else:
        config, choices = recipe.resolve(config, entry, dataset)
        config.check()
    runtime = start_runtime(config)
    try:
        return _finetune(entry, dataset, config, runtime, out_dir, fingerprint, choices, resume, overwrite, quiet,
                         dry_run, on_epoch_end)
    finally:
        if runtime.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def _finetune(entry: ModelEntry, dataset: Dataset, config: FinetuneConfig, runtime: Runtime, out_dir: Path | None,
              fingerprint: str, choices: list[str], resume: bool, overwrite: bool, quiet: bool, dry_run: bool,
              on_epoch_end) -> FinetuneResult:
    """finetune() once the configuration is resolved and the processes are up."""
    if config.workers is None:  # stored resolved; a resumed run keeps its own
        config = dataclasses.replace(config, workers=default_workers(runtime))
        choices = [*choices, f"workers {config.workers} (DataLoader processes; --workers)"]
    if not dry_run and not resume:  # rank 0 alone: concurrent deletes under --overwrite, and a slow rank
        on_main(runtime, lambda: prepare_run_dir(out_dir, resume=False, overwrite=overwrite))  # seeing run.json
    if config.refit == "direct":  # one pass on everything; `fingerprint` stays the split data's (--resume checks it)
        dataset = _merged(dataset, "none: every example trains (--refit direct)")
    log = (lambda message: print(message, file=sys.stderr, flush=True)) if runtime.is_main else (lambda message: None)
    trainer = Trainer(entry, dataset, config, runtime, quiet, log)
    if not resume:  # after every check: a user mistake stays a one-line error
        log("settings:\n" + "\n".join(f"  {line}" for line in choices))
    table = trainable_table(trainer.model, trainer.blocks, trainer.head_prefix)
    if dry_run:
        return FinetuneResult(None, -1, {}, trainable=table)
    refit = config.refit == "on"
    with cuda_math(runtime):
        result = _run(trainer, entry, dataset, config, runtime, out_dir, fingerprint, resume, table, choices,
                      on_epoch_end, log, finish=not refit)
        if refit:
            result = _refit(result, entry, dataset, config, runtime, out_dir, fingerprint, table, choices, quiet, log)
    return result


def _merged(dataset: Dataset, split: str) -> Dataset:
    """`dataset` with its validation examples moved into training."""
    return dataclasses.replace(dataset, train=dataset.train + dataset.val, val=[], split=split)


def _refit(first: FinetuneResult, entry: ModelEntry, dataset: Dataset, config: FinetuneConfig, runtime: Runtime,
           out: Path, fingerprint: str, table, choices: list[str], quiet: bool, log) -> FinetuneResult:
    """The selected procedure (the probe alone, or probe + fine-tuning for the same epochs) again, from the
    pretrained weights with the same seed, on train + val: the validation split decided, then trains too.
    Its pass lives in OUT/refit/ (restarted from scratch by --resume: it is deterministic); its weights
    are the run's model."""
    merged = _merged(dataset, dataset.split)
    probe_only = config.probe_only or first.best_epoch == 0
    second_config = dataclasses.replace(config, probe_only=probe_only, freeze="head" if probe_only else config.freeze,
                                        after_probe="finetune")  # decided by the first pass
    log(f"refit on all {len(merged.train)} examples (train + val): "
        + ("the probe" if probe_only else f"the probe, then {config.epochs} epochs of fine-tuning"))
    folder = out / "refit"
    if runtime.is_main and folder.exists():
        shutil.rmtree(folder)
    if runtime.distributed:
        dist.barrier()
    trainer = Trainer(entry, merged, second_config, runtime, quiet, log)
    second = _run(trainer, entry, merged, second_config, runtime, folder, merged.fingerprint(), False, table, choices,
                  None, log, finish=False)
    refit = {"examples": len(merged.train), "selected": "probe" if probe_only else "fine-tuned",
             "epochs": 0 if probe_only else config.epochs, "history": "refit/metrics.jsonl"}
    if runtime.is_main:
        finish_run(trainer, trainer.model, entry, dataset, config, out, folder / "checkpoints" / "best.safetensors",
                fingerprint, first.best_epoch, first.best_metrics, first.history, runtime, choices, refit)
    if runtime.distributed:
        dist.barrier()
    return dataclasses.replace(first, last_weights_sha256=second.last_weights_sha256, refit_history=second.history)


def _run(trainer: Trainer, entry: ModelEntry, dataset: Dataset, config: FinetuneConfig, runtime: Runtime,
         out: Path, fingerprint: str, resume: bool, table, choices: list[str], on_epoch_end, log,
         finish: bool = True) -> FinetuneResult:
    """Train and select (probe, epochs) into the run directory `out`; with `finish`, write the run's model
    and card. A dataset without validation examples (a refit pass) is not evaluated: its last weights
    are selected."""
    from torch.nn.parallel import DistributedDataParallel

    validate = bool(dataset.val)

    model = trainer.model.to(runtime.device)
    if entry.modality == "image":  # channels_last: 1.4x the training throughput of NCHW on this 2-core CPU too
        model = model.to(memory_format=torch.channels_last)
    groups = parameter_groups(model, trainer.blocks, trainer.head_prefix, config.lr, config.lr_decay,
                              config.weight_decay)
    optimizer = make_optimizer(config.optimizer, groups, config, cuda=runtime.device.type == "cuda")
    steps_per_epoch = math.ceil(len(trainer.loader(True, 0)) / config.accumulate)
    scheduler = lr_schedule(optimizer, config, steps_per_epoch)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    checkpoints = out / "checkpoints"
    history: list[dict[str, Any]] = []  # one row per evaluation: the probe (epoch 0), then each epoch
    best: list[float] | None = None  # the best validation key(row) so far (early stopping)
    best_index, bad_epochs, start_epoch = -1, 0, 0
    if resume:
        load_weights(model, checkpoints / "last.safetensors")
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best, best_index, bad_epochs = state["history"], state["best"], state["best_index"], state["bad_epochs"]
        trainer.probe_info, trainer.pairs_info = state["probe"], state.get("pairs")
        start_epoch = state["epoch"] + 1
        log(f"resuming {out} at epoch {start_epoch + 1}/{config.epochs}")
    elif runtime.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RUN_CONFIG, {
            "base_model": model_name(entry), "config": dataclasses.asdict(config), "choices": choices, "labels": dataset.labels,
            "data": {**dataset.summary(), "fingerprint": fingerprint, "val_items": dataset.val_items()},
            "packages": package_versions(TRAINING_PACKAGES)})
    if runtime.distributed:
        dist.barrier()
    trained = sum(n for _, n, _ in table)
    log(f"{entry.id}: {len(dataset.train)} train / {len(dataset.val)} val examples, {len(dataset.labels)} labels, "
        f"{config.head} head, freeze {config.freeze}: {trained:,} trainable parameters, device {runtime.device}"
        + (f", {runtime.world_size} processes" if runtime.distributed else "")
        + (f", amp {runtime.amp_dtype}" if runtime.amp_dtype else ""))
    if dataset.skipped:
        log(f"skipped {len(dataset.skipped)} file(s) that are not readable images, e.g. {dataset.skipped[0]}")

    def key(row: dict[str, Any]) -> tuple[float, float]:
        """How good a row is on validation: the metric (the loss, negated), then the lower loss."""
        loss = row["val_loss"] if row["val_loss"] is not None else 0.0
        return (-loss if config.metric == "loss" else row[f"val_{config.metric}"], -loss)

    def probe_clearly_better(probe_row: dict[str, Any], row: dict[str, Any]) -> bool:
        """The probe beats fine-tuning on the validation metric by more than the split's noise: a 95 %
        margin, 1.96 binomial standard errors sqrt(m (1 - m) / n) of a rate m measured on n examples
        (strictly better for the loss). Fine-tuning is the procedure that measured better
        (benchmarks/transfer.py); on a few dozen validation examples a difference of two or three
        examples is noise, and a tie-break on the loss would pick the probe's softer logits every time.
        A run that diverged (chance against a probe near 1.0) still falls back to the probe."""
        if config.metric == "loss":
            return key(probe_row)[0] > key(row)[0]
        a, b = key(probe_row)[0], key(row)[0]
        m = min(max((a + b) / 2, 0.0), 1.0)
        return a - b > 1.96 * math.sqrt(m * (1 - m) / max(1, len(dataset.val)))

    def record(epoch: int, row: dict[str, Any]) -> None:
        """Append the row; checkpoint last, and best (the row `config.select` picks); save the resumable
        state."""
        nonlocal best, best_index, bad_epochs
        history.append(row)
        probe, last = (0 if history[0]["epoch"] == 0 else None), len(history) - 1
        if validate and (best is None or key(row) > tuple(best)):  # early stopping: epochs without a new best
            best, bad_epochs = list(key(row)), 0
        elif validate:
            bad_epochs += 1
        if validate and config.select == "best":
            chosen = max(range(len(history)), key=lambda i: (key(history[i]), i))
        elif validate and probe is not None and probe_clearly_better(history[probe], row):
            chosen = probe  # "last": the newest weights, unless the probe validated clearly better
        else:
            chosen = last
        improved, best_index = chosen == last, chosen
        if runtime.is_main:
            save_weights(model, checkpoints / "last.safetensors")
            if row["epoch"] == 0:
                shutil.copyfile(checkpoints / "last.safetensors", checkpoints / "probe.safetensors")
            source = "last" if improved else "probe" if chosen == probe else None
            if source is not None:
                shutil.copyfile(checkpoints / f"{source}.safetensors", checkpoints / "best.safetensors")
            write_metrics(out, history)
            with atomic_path(out / STATE_FILE) as tmp:
                torch.save({"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict(), "history": history, "best": best, "best_index": best_index,
                            "bad_epochs": bad_epochs, "probe": trainer.probe_info, "pairs": trainer.pairs_info}, tmp)
        parts = [f"train loss {row['train_loss']:.4f}"] + ([] if row["val_loss"] is None else [f"val loss {row['val_loss']:.4f}"])
        parts += [f"{METRIC_NAMES[name[4:]]} {value:.4f}" for name, value in row.items()
                  if name.startswith("val_") and name != "val_loss"]
        stage = "probe" if row["epoch"] == 0 else f"epoch {row['epoch']}/{config.epochs}"
        log(f"{stage}: {', '.join(parts)}" + (" (selected)" if improved and validate else "")
            + f", {row['samples_per_second']:.1f} samples/s")
        if runtime.distributed:
            dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if config.head_init == "probe" and not resume:  # a resumed run has its probe in `history`
        start = time.perf_counter()
        if config.pairs == "on":  # the encoder changes: the probe's features are not those of the backbone
            trainer.train_pairs(model)
        trainer.fit_probe(model, None if config.pairs == "on" else out / PROBE_FEATURES)
        metrics = evaluate(trainer, model) if validate else {"loss": None}
        record(-1, {"epoch": 0, "train_loss": trainer.probe.train_loss, "val_loss": metrics["loss"],
                    **{f"val_{name}": value for name, value in metrics.items() if name != "loss"}, "lr": 0.0,
                    "samples_per_second": len(dataset.train) / max(time.perf_counter() - start, 1e-9),
                    "frozen_blocks": len(trainer.blocks)})
    # DDP registers the parameters that require gradients when it is built: it is built again whenever the
    # freeze policy unfreezes blocks, or those blocks would train on each rank alone and the replicas drift.
    # Building it broadcasts rank 0's parameters and buffers, so every rank starts the new stage equal.
    wrapped, wrapped_frozen = model, None
    stopped_early = False
    skip = not config.probe_only and trainer.probe_leaves_nothing()
    if skip and not resume:
        log(f"fine-tuning skipped (--after-probe gated): the probe classified all {trainer.probe_info['examples']} "
            "training examples right while each was held out (cross-validation); nothing is left to show")
    for epoch in range(start_epoch, 0 if config.probe_only or skip else config.epochs):
        seed_everything(config.seed * 1_000 + epoch)  # each epoch's randomness depends on (seed, epoch) only
        frozen = trainer.set_epoch_freeze(epoch)
        if runtime.distributed and frozen != wrapped_frozen:
            wrapped = None  # the previous wrapper (and its gradient hooks) goes first
            wrapped = DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.type == "cuda"
                                              else None)
            wrapped_frozen = frozen
        train_loss, seen, seconds = trainer.train_epoch(wrapped, optimizer, scheduler, scaler, epoch)
        if runtime.distributed:
            sync_buffers(model)
        metrics = evaluate(trainer, model) if validate else {"loss": None}
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": metrics["loss"],
               **{f"val_{name}": value for name, value in metrics.items() if name != "loss"},
               "lr": optimizer.param_groups[0]["lr"], "samples_per_second": seen * runtime.world_size / max(seconds, 1e-9),
               "frozen_blocks": frozen}
        record(epoch, row)
        if agree(runtime, bool(config.patience) and bad_epochs >= config.patience):
            stopped_early = epoch + 1 < config.epochs
            log(f"early stop: no {config.metric} improvement for {bad_epochs} epoch(s)")
            break
    trainer.release_loaders()
    last_sha = state_sha256(model)
    best_row = history[best_index]
    best_metrics = {key[len("val_"):]: value for key, value in best_row.items()
                    if key.startswith("val_") and value is not None}
    if runtime.is_main and finish:
        finish_run(trainer, model, entry, dataset, config, out, checkpoints / "best.safetensors", fingerprint,
                best_row["epoch"], best_metrics, history, runtime, choices)
    if runtime.distributed:
        dist.barrier()
    return FinetuneResult(out, best_row["epoch"], best_metrics, history, stopped_early, table, last_sha)


__all__ = ["FinetuneConfig", "FinetuneResult", "ZooError", "describe_trainable", "finetune"]
