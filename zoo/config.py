"""The settings of `zoo finetune` and their allowed values, without torch: the training code checks a
FinetuneConfig with them, and the command line takes its choices and defaults from here, so each is
written once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from zoo.errors import InputError
from zoo.tasks import FINETUNE_TASKS, TASKS


OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad")
SCHEDULES = ("cosine", "constant")
HEAD_KINDS = ("multiclass", "binary")  # what --head chooses; a task's own head follows from --task (zoo.tasks)
TASK_HEADS = tuple(task.head for task in TASKS.values() if task.head)
AUGMENTATIONS = ("none", "light", "trivial", "imagenet")  # zoo.loaders.train_image_transform
REFIT = ("auto", "on", "off", "direct")
DEVICES = ("auto", "cpu", "cuda")
AMP = ("auto", "bf16", "fp16", "off")
HEAD_INITS = ("auto", "probe", "random")
AFTER_PROBE = ("auto", "finetune", "gated")
AUGMENTS = ("auto", *AUGMENTATIONS)
BATCHNORM = ("auto", "frozen", "train")
SELECT = ("auto", "last", "best")
PAIRS = ("auto", "on", "off")
METRICS = ("auto", *dict.fromkeys(metric for task in TASKS.values() for metric in task.metrics))  # each task's: zoo.tasks


@dataclass
class FinetuneConfig:
    """Every hyper-parameter of a run; stored in run.json and the card. `None` and "auto" are chosen by
    the default recipe (zoo.recipe) from the model's registry card and the data, and stored resolved."""

    task: str | None = None  # what the model is fine-tuned for (zoo.tasks); None: the one its entry allows
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    schedule: str = "cosine"
    clip_grad: float | None = None
    accumulate: int = 1
    patience: int | None = None  # 0: no early stopping
    metric: str = "auto"
    label_smoothing: float = 0.0
    seed: int = 0
    freeze: str = "full"
    lr_decay: float = 1.0
    head: str = "multiclass"
    positive: str | None = None
    val_fraction: float = 0.2
    pretrained: bool = True
    head_init: str = "auto"  # probe (fitted on frozen features first: LP-FT) | random
    probe_only: bool = False  # `--probe`: the fitted head is the result; the backbone never trains
    after_probe: str = "auto"  # finetune: always | gated: not when the probe made no out-of-fold error
    pairs: str = "auto"  # on: contrastive pair training of a sentence encoder before the probe (zoo.pairs) | off
    augment: str = "auto"  # images: none | light | imagenet | trivial (zoo.loaders.train_image_transform)
    select: str = "auto"  # the weights kept: last (the final epoch's, or the probe's if it validated better) | best
    refit: str = "auto"  # on: once selection is done, train the selected procedure again on train + val | off
    # | direct: no selection pass, one pass on train + val (nothing to select, e.g. --pairs on)
    batchnorm: str = "auto"  # frozen (running statistics kept, eval mode) | train
    workers: int | None = None  # DataLoader worker processes; None: resolved per device (zoo.runtime.default_workers)
    device: str = "auto"
    amp: str = "auto"

    def check(self) -> None:
        """InputError naming the first bad value."""
        rules = [
            (self.task is None or self.task in FINETUNE_TASKS,
             f"--task {self.task}: expected one of {', '.join(FINETUNE_TASKS)}"),
            (self.epochs is None or self.epochs >= 1, f"--epochs {self.epochs}: must be at least 1"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1"),
            (self.lr is None or self.lr > 0, f"--lr {self.lr}: must be positive"),
            (self.optimizer in OPTIMIZERS, f"--optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}"),
            (self.weight_decay is None or self.weight_decay >= 0, f"--weight-decay {self.weight_decay}: must be >= 0"),
            (self.warmup_epochs is None or self.warmup_epochs >= 0, f"--warmup-epochs {self.warmup_epochs}: must be >= 0"),
            (self.warmup_epochs is None or self.epochs is None or self.warmup_epochs < self.epochs,
             f"--warmup-epochs {self.warmup_epochs}: must be less than --epochs {self.epochs}"),
            (self.schedule in SCHEDULES, f"--schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}"),
            (self.clip_grad is None or self.clip_grad > 0, f"--clip-grad {self.clip_grad}: must be positive"),
            (self.accumulate >= 1, f"--accumulate {self.accumulate}: must be at least 1"),
            (self.patience is None or self.patience >= 0, f"--patience {self.patience}: must be >= 0 (0: no early stopping)"),
            (self.metric in METRICS, f"--metric {self.metric!r}: expected one of {', '.join(METRICS)}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing {self.label_smoothing}: must be in [0, 1)"),
            (0 < self.lr_decay <= 1, f"--lr-decay {self.lr_decay}: must be in (0, 1]"),
            # a task's own head ("token", "span") is set by finetune() from --task (read back from run.json on --resume)
            (self.head in (*HEAD_KINDS, *TASK_HEADS), f"--head {self.head!r}: expected one of {', '.join(HEAD_KINDS)}"),
            (self.head_init in HEAD_INITS, f"--head-init {self.head_init!r}: expected one of {', '.join(HEAD_INITS)}"),
            (self.augment in AUGMENTS, f"--augment {self.augment!r}: expected one of {', '.join(AUGMENTS)}"),
            (self.batchnorm in BATCHNORM, f"--batchnorm {self.batchnorm!r}: expected one of {', '.join(BATCHNORM)}"),
            (self.select in SELECT, f"--select {self.select!r}: expected one of {', '.join(SELECT)}"),
            (self.refit in REFIT, f"--refit {self.refit!r}: expected one of {', '.join(REFIT)}"),
            (self.pairs in PAIRS, f"--pairs {self.pairs!r}: expected one of {', '.join(PAIRS)}"),
            (not (self.pairs == "on" and self.head_init == "random"),
             "--pairs on trains the encoder before the probe; it excludes --head-init random"),
            (self.after_probe in AFTER_PROBE, f"--after-probe {self.after_probe!r}: expected one of {', '.join(AFTER_PROBE)}"),
            (not (self.probe_only and self.head_init == "random"), "--probe fits the head; it excludes --head-init random"),
            (self.workers is None or self.workers >= 0, f"--workers {self.workers}: must be >= 0"),
            (self.device in DEVICES, f"--device {self.device!r}: expected one of {', '.join(DEVICES)}"),
            (self.amp in AMP, f"--amp {self.amp!r}: expected one of {', '.join(AMP)}"),
            (not (self.head == "binary" and self.label_smoothing), "--label-smoothing applies to multiclass heads only"),
        ]
        for ok, message in rules:
            if not ok:
                raise InputError(message)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}


def default(name: str) -> Any:
    """FinetuneConfig's default for the field `name` (what the command line shows and passes)."""
    return _DEFAULTS[name]
