"""The default recipe of `zoo finetune`: every setting left to "auto" (or None) is chosen here from the
model's registry card, the task and the size of the data, the same way for every data set. Each choice
comes with its reason; the run prints them and stores them in run.json and the card. A value the user
gave is kept and reported as given.

For classifiers (measured in benchmarks/transfer.py):
- linear probe, then fine-tuning (LP-FT): the head is first fitted on the frozen backbone's features
  (zoo.probe), then everything trains at the card's learning rate (CNNs and transformers differ);
- no contrastive pair stage (zoo.pairs, SetFit's) before the probe, yet: since its probe takes SetFit's
  fixed C (zoo.probe.FIXED_C) it measured ahead of LP-FT alone (rotten tomatoes 10 and 25 per class, drug
  reviews 25 per class on one seed), at 1.2-3.6x the time, but it has not been run on every text row; with
  --pairs on, fine-tuning follows the probe without the gate below (the pair-trained features saw every
  training label);
- a budget in optimizer steps rather than epochs: small data sets get more epochs, large ones fewer;
  warm-up over the first tenth, cosine decay to zero, no early stopping;
- fine-tuning runs unless the probe made no error in cross-validation on the training split (faces:
  fine-tuning such a probe cost 2-5 points of test accuracy, unseen on a validation split of 2-24 images);
- the weights kept are the final ones, unless the probe (evaluated as epoch 0) scored better on the
  validation split by more than its noise (a 95 % margin): picking the best of many epochs on a few
  dozen validation examples picks noise
  (digits, 10 per class: the best-validation epoch tested 0.85, the final one 0.89-0.94);
- BatchNorm running statistics stay frozen; no augmentation (crops and flips cost accuracy within this
  budget);
- when zoo split the validation examples off small data itself, the chosen procedure is run again on
  train + val (refit): at 10 examples per class the held-out fifth is a fifth of the evidence; with
  --pairs on there is nothing for a validation pass to decide, and the one pass trains on all examples
  (refit direct: the procedure a refit runs, without the first pass and its pair stage).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from zoo.errors import InputError
from zoo.schema import ModelEntry
from zoo.tasks import get_task

if TYPE_CHECKING:
    from zoo.data import Dataset
    from zoo.config import FinetuneConfig

TARGET_STEPS = 80  # optimizer steps of fine-tuning, before the epoch bounds below
MIN_EPOCHS, MAX_EPOCHS = 3, 40
WARMUP_FRACTION = 0.1
REFIT_MAX_EXAMPLES = 500  # above: no second pass on train + val (see resolve)
PATIENCE_FRACTION = 0.25  # early stopping after this share of the epochs without improvement (at least 3)
# What fine-tunes a random head, when there is no probe (segmentation, detection, NER, QA, --head-init
# random) and the card gives no rate: the previous default of every task.
FALLBACK_LR, FALLBACK_WEIGHT_DECAY = 1e-3, 0.01
# Architectures without BatchNorm (LayerNorm only): --batchnorm has no effect on them.
NORMALISED_BY_LAYERS = {"bert", "distilbert", "roberta", "vit_b_16", "convnext_tiny"}


def fine_tuning_has_room(probe_accuracy: float | None) -> bool:
    """Whether fine-tuning has anything to fix that the data can show: not when the probe classified every
    training example right while it was held out (out-of-fold accuracy 1). Unknown (too few examples to
    fold): fine-tuning runs. A looser bound (under one expected error on the validation split) stopped
    rotten tomatoes at 10 per class with a probe at 0.81, where fine-tuning gains 3 points."""
    return probe_accuracy is None or probe_accuracy < 1.0


def resolve(config: FinetuneConfig, entry: ModelEntry, dataset: Dataset) -> tuple[FinetuneConfig, list[str]]:
    """`config` with every automatic setting decided, and one line per setting: value and reason."""
    choices: list[str] = []
    values: dict[str, Any] = {}

    def choose(field: str, value: Any, reason: str) -> None:
        given = getattr(config, field)
        if given is None or given == "auto":
            values[field] = value
            choices.append(f"{field} = {value}: {reason}")
        else:
            choices.append(f"{field} = {given}: given")

    others = [name for name in get_task(entry.task).finetunes_into if name != dataset.task]
    choose("task", dataset.task, f"what {entry.id} ({entry.task}) learns by default"
           + (f"; --task {' | '.join(others)} for the others it can learn" if others else ""))
    linear_head = get_task(dataset.task).linear_head
    if config.probe_only:
        if not linear_head:
            raise InputError(f"--probe fits a linear classifier on frozen features; {dataset.task} has no such head")
        choose("head_init", "probe", "--probe: the head is fitted on frozen features and is the result")
        values["freeze"] = "head"
        choices.append("freeze = head: --probe trains nothing but the head")
    elif linear_head:
        choose("head_init", "probe", "linear probe first, then fine-tuning (LP-FT): training starts from a fitted "
                                     "head instead of a random one that would distort the pretrained features")
    else:
        choose("head_init", "random", f"{dataset.task} has no single linear head to fit on frozen features")
    head_init = values.get("head_init", config.head_init)
    if not (linear_head and entry.modality == "text"):
        if config.pairs == "on":
            raise InputError(f"--pairs on trains a text encoder for classification; {entry.id} on {dataset.task} "
                             f"data has none (drop --pairs)")
        choose("pairs", "off", "contrastive pairs train sentence encoders for text classification")
    elif entry.task != "sentence-embedding":
        choose("pairs", "off", f"{entry.id} is not trained for cosine similarity ({entry.task}): the pair loss "
                               "assumes the cosine of two embeddings already means something")
    else:
        choose("pairs", "off", "not measured on every text row yet (benchmarks/transfer.py: ahead of LP-FT alone "
                               "where measured, at 1.2-3.6x the time); --pairs on to try (--probe --pairs on is SetFit)")
    pairs = values.get("pairs", config.pairs)
    if head_init == "probe" and not config.probe_only and pairs == "on":
        choose("after_probe", "finetune", "fine-tune after the probe: the pairs trained on every training example, so "
                                          "the probe's out-of-fold accuracy is no evidence to skip it on")
    elif head_init == "probe" and not config.probe_only:
        choose("after_probe", "gated", "fine-tune after the probe unless the probe classified every training example "
                                       "right while it was held out (cross-validation): then nothing is left to show")
    else:
        choose("after_probe", "finetune", "no probe to gate on" if head_init != "probe" else "--probe: no fine-tuning")
    card = entry.finetune
    if card is not None and head_init == "probe":
        choose("lr", card.lr, f"the registry card's fine-tuning rate for {entry.architecture}")
        choose("weight_decay", card.weight_decay, f"the registry card's weight decay for {entry.architecture}")
    else:
        choose("lr", FALLBACK_LR, "a new head trained from random initialisation")
        choose("weight_decay", FALLBACK_WEIGHT_DECAY, "a new head trained from random initialisation")
    if entry.modality != "image":
        choose("augment", "none", f"{entry.modality} input: image augmentation does not apply")
    else:
        choose("augment", "none", "no augmentation: within this short budget, crops and flips cost accuracy "
                                  "(digits: 0.88 vs 0.94 test accuracy; --augment light|trivial to try)")
    if entry.architecture in NORMALISED_BY_LAYERS:
        choose("batchnorm", "frozen", f"{entry.architecture} has no BatchNorm layers (LayerNorm only): nothing to do")
    elif not config.pretrained:
        choose("batchnorm", "train", "random initialisation: running statistics have nothing to keep")
    elif get_task(dataset.task).new_decoder:
        choose("batchnorm", "train", f"{dataset.task}: a new head and decoder learn with the statistics of the data")
    else:
        choose("batchnorm", "frozen", "running statistics kept from pretraining; small batches of new data would "
                                      "move them away from what evaluation uses")
    total = len(dataset.train) + len(dataset.val)
    if dataset.split == "given":
        choose("refit", "off", "the data came with its own validation split; it stays held out")
    elif not linear_head:
        choose("refit", "off", f"{dataset.task}: the validation split stays held out")
    elif total > REFIT_MAX_EXAMPLES:
        choose("refit", "off", f"{total} examples: the held-out fifth costs little accuracy at this size, and a "
                               "second pass would double the time")
    elif pairs == "on":
        decides = ("the probe is the result" if config.probe_only else "fine-tuning follows the probe, which is kept "
                   "only if it validates better by more than the noise of a few held-out examples")
        choose("refit", "direct", f"one pass on all {total} examples: with --pairs on a validation pass would "
                                  f"decide nothing ({decides}) and would run the pair stage twice; no validation "
                                  "metrics (give the data a split column or a val/ folder for them)")
    else:
        choose("refit", "on", f"the {len(dataset.val)} validation examples were split off the data to decide "
                              "between the probe and fine-tuning; once decided, that procedure runs again on all "
                              f"{total} examples (the reported metrics stay the validation's)")
    direct = values.get("refit", config.refit) == "direct"
    examples = len(dataset.train) + (len(dataset.val) if direct else 0)  # the examples the fine-tuning pass sees
    steps_per_epoch = max(1, math.ceil(math.ceil(examples / config.batch_size) / config.accumulate))
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))
    choose("epochs", epochs, f"~{TARGET_STEPS} optimizer steps at {steps_per_epoch} per epoch ({examples} training "
                             f"examples, batch {config.batch_size}), within {MIN_EPOCHS}..{MAX_EPOCHS} epochs")
    epochs = values.get("epochs", config.epochs)
    choose("warmup_epochs", round(WARMUP_FRACTION * epochs, 2), f"the first {WARMUP_FRACTION:.0%} of the steps")
    if direct:
        choose("select", "last", "the final weights of the schedule: no validation split to select on")
    else:
        choose("select", "last", "the final weights of the schedule, or the probe's if it validated better by more "
                                 "than the split's noise (a 95 % margin): picking the best of many epochs on a "
                                 "small validation split picks its noise")
    choose("patience", 0, "no early stopping: the schedule runs to its end")
    return dataclasses.replace(config, **values), choices
