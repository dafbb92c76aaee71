"""zoo finetune: its options are zoo.config's choices and defaults."""

from __future__ import annotations

from pathlib import Path

import click

from zoo import config


@click.command()
@click.argument("name")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Image folder (one subfolder per class, optional train/ val/), CSV/JSONL with text,label, or for "
                   "segmentation labels.txt + images/ + masks/, for detection annotations.json + images/ (COCO) or "
                   "Annotations/ + JPEGImages/ (Pascal VOC) (each with optional train/ val/), for token classification "
                   "(NER) a CoNLL file or JSONL with tokens,tags, for question answering SQuAD JSON.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory to write.")
@click.option("--task", type=click.Choice(config.FINETUNE_TASKS),
              help="What to fine-tune for; --data is read as that task's data. Default: the model's own task; "
                   "text-classification for a text encoder (token-classification: NER, question-answering: SQuAD).")
@click.option("--epochs", type=int, help="Default: a budget of optimizer steps scaled to the data (zoo.recipe).")
@click.option("--batch-size", type=int, default=config.default("batch_size"), show_default=True)
@click.option("--lr", type=float, help="Learning rate of the head (blocks below: see --lr-decay). Default: the "
                                      "registry card's fine-tuning rate, or 1e-3 for a randomly initialised head.")
@click.option("--optimizer", type=click.Choice(config.OPTIMIZERS), default=config.default("optimizer"), show_default=True)
@click.option("--momentum", type=float, default=config.default("momentum"), show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=float, help="Default: the registry card's.")
@click.option("--warmup-epochs", type=float, help="Default: the first tenth of the epochs.")
@click.option("--schedule", type=click.Choice(config.SCHEDULES), default=config.default("schedule"), show_default=True)
@click.option("--clip-grad", type=float, help="Clip the gradient norm to this value.")
@click.option("--accumulate", type=int, default=config.default("accumulate"), show_default=True,
              help="Gradient accumulation steps.")
@click.option("--patience", type=int, help="Early stopping: epochs without improvement of --metric (0: never stop "
                                           "early). Default: a quarter of the epochs, at least 3.")
@click.option("--metric", type=click.Choice(config.METRICS), default=config.default("metric"), show_default=True,
              help="Model selection and early stopping: auto = macro_f1 (classification), miou (segmentation), "
                   "map50 (detection), entity_f1 (token classification) or squad_f1 (question answering).")
@click.option("--label-smoothing", type=float, default=config.default("label_smoothing"), show_default=True)
@click.option("--seed", type=int, default=config.default("seed"), show_default=True)
@click.option("--freeze", default=config.default("freeze"), show_default=True,
              help="full | head (backbone and its BatchNorm statistics frozen) | N (first N blocks) | gradual:K.")
@click.option("--lr-decay", type=float, default=config.default("lr_decay"), show_default=True,
              help="Discriminative LR: each block below the head trains at this factor of the one above.")
@click.option("--head", type=click.Choice(config.HEAD_KINDS), default=config.default("head"), show_default=True)
@click.option("--head-init", type=click.Choice(config.HEAD_INITS), default=config.default("head_init"), show_default=True,
              help="probe: fit the head on frozen features before fine-tuning (LP-FT; auto for classifiers).")
@click.option("--probe", "probe_only", is_flag=True,
              help="Linear probe only: fit the head on frozen features in seconds; the backbone never trains.")
@click.option("--after-probe", type=click.Choice(config.AFTER_PROBE), default=config.default("after_probe"),
              show_default=True,
              help="gated (auto with a probe): fine-tune after the probe unless it made no error in "
                   "cross-validation on the training examples; finetune: always.")
@click.option("--pairs", type=click.Choice(config.PAIRS), default=config.default("pairs"), show_default=True,
              help="on: contrastive pair training of the text encoder before the probe (SetFit's first stage; "
                   "off by default until measured on every text benchmark row); --probe --pairs on is SetFit.")
@click.option("--augment", type=click.Choice(config.AUGMENTS), default=config.default("augment"),
              show_default=True, help="Image augmentation: none (auto); light = random crops >= half the image + flips; "
                                      "trivial adds TrivialAugmentWide; imagenet crops down to 8 percent.")
@click.option("--refit", type=click.Choice(config.REFIT), default=config.default("refit"), show_default=True,
              help="on (auto when zoo split the validation set off the data): once selection is done, train the "
                   "selected procedure again on train + val; direct (auto with --pairs on): one pass on train + "
                   "val, no selection, no validation metrics; off: the validation split stays held out.")
@click.option("--select", type=click.Choice(config.SELECT), default=config.default("select"), show_default=True,
              help="Weights kept: last (auto) = the final epoch's, or the probe's if it validated better; best = "
                   "the epoch with the best validation --metric.")
@click.option("--batchnorm", type=click.Choice(config.BATCHNORM), default=config.default("batchnorm"), show_default=True,
              help="frozen (auto): BatchNorm keeps its pretrained running statistics; train: updates them.")
@click.option("--positive", help="Binary head: the positive label (default: the second in sorted order).")
@click.option("--val-fraction", type=float, default=config.default("val_fraction"), show_default=True,
              help="Held out per class when the data has no validation split (seeded, stratified).")
@click.option("--scratch", is_flag=True, help="Random initialisation instead of the pretrained weights (baselines).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes [default: 0 on CPU; on CUDA the cores per rank less one, at most 16].")
@click.option("--device", type=click.Choice(config.DEVICES), default=config.default("device"), show_default=True)
@click.option("--amp", type=click.Choice(config.AMP), default=config.default("amp"), show_default=True,
              help="Mixed precision on CUDA. auto: bf16 on GPUs that compute it natively (compute capability 8.0+), "
                   "fp16 with loss scaling before them, off on CPU.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out with its stored settings.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("--dry-run", is_flag=True, help="Print which blocks train and how many parameters, then stop.")
@click.option("--quiet", is_flag=True, help="Log lines only, no progress bars.")
def finetune(name: str, data: Path, out: Path | None, scratch: bool, resume: bool, overwrite: bool, dry_run: bool,
             quiet: bool, **options) -> None:
    """Fine-tune NAME on --data into the run directory --out (under torchrun: DDP)."""
    from zoo.runs import resolve_name

    resolve_name(name)  # unknown names fail before torch is imported
    from zoo.freeze import describe_trainable
    from zoo.training import finetune as run_finetune

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if resume:  # the stored settings apply; only the model name and data location are checked
        result = run_finetune(name, data, out, resume=True, quiet=quiet)
    else:
        result = run_finetune(name, data, out, overwrite=overwrite, quiet=quiet, dry_run=dry_run,
                              pretrained=not scratch, **options)
    if dry_run:
        click.echo("\n".join(describe_trainable(result.trainable)))
        return
    if not result.best_metrics:  # --refit direct: nothing was held out
        click.echo(f"{result.run_dir}: trained to epoch {result.best_epoch} on every example; no validation "
                   "split, so no validation metrics")
        return
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
    click.echo(f"{result.run_dir}: best epoch {result.best_epoch}: {metrics}")
