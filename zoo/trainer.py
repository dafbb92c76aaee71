"""The state of one fine-tuning pass: the model with its new head, the freeze policy, the data loaders,
one training epoch, and the stages before it (SetFit's contrastive pairs, the linear probe)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from serve.files import atomic_path
from zoo import recipe
from zoo.config import FinetuneConfig
from zoo.data import Dataset
from zoo.errors import DivergedError
from zoo.factory import build
from zoo.freeze import apply_freeze, backbone_blocks, freeze_batchnorm_statistics, frozen_count, parse_policy
from zoo.heads import attach_head, head_prefix
from zoo.loaders import make_loader
from zoo.preprocess import load_tokenizer
from zoo.probe import head_layer
from zoo.runtime import Runtime, seed_everything
from zoo.schema import ModelEntry
from zoo.tasks import get_task, implementation


class Trainer:
    """One pass over a data set (the first, or a refit on train + val); the loop is zoo.training's."""

    def __init__(self, entry: ModelEntry, dataset: Dataset, config: FinetuneConfig, runtime: Runtime,
                 quiet: bool, log: Callable[[str], None]):
        self.entry, self.dataset, self.config, self.runtime, self.quiet, self.log = entry, dataset, config, runtime, quiet, log
        seed_everything(config.seed)  # without pretrained weights the backbone's initialisation is random too
        backbone = build(entry, pretrained=config.pretrained)
        seed_everything(config.seed)  # the new head's initialisation depends on the seed only
        self.task = get_task(dataset.task)
        self.implementation = implementation(self.task)
        self.model = attach_head(backbone, entry, config.head, len(dataset.labels))
        if entry.modality == "text":  # fused attention kernels while training; eager again in _finish
            from zoo.builders.hf_encoder import set_attention

            set_attention(self.model, "sdpa")
        self.head_prefix = head_prefix(self.model)
        self.blocks = backbone_blocks(self.model, self.head_prefix)
        self.policy = parse_policy(config.freeze, len(self.blocks))
        self.tokenizer = None
        if entry.modality == "text":
            from zoo.cache import fetch

            self.tokenizer = load_tokenizer(fetch(entry).files[entry.input.tokenizer], entry.input)
        self.task_state: dict[str, object] = {}  # what a task module keeps for this pass (zoo.tasks)
        self.criterion = self.implementation.criterion(config)  # None: the model computes its own (detection)
        self.head_layer = head_layer(self.model, self.head_prefix)  # None: no single linear head (segmentation, ...)
        self.probe = None
        self.probe_info: dict[str, float] | None = None  # the probe's C and training loss (run.json state, card)
        self.pairs_info: dict[str, float] | None = None  # the contrastive stage's pairs, steps, losses (card)
        self._train_loader = None
        self.set_epoch_freeze(0)

    def set_epoch_freeze(self, epoch: int) -> int:
        """Freeze what the policy freezes during `epoch`; returns how many blocks that is."""
        frozen = frozen_count(*self.policy, len(self.blocks), epoch)
        apply_freeze(self.model, self.blocks, frozen)
        return frozen

    def loader(self, train: bool, epoch: int, examples: list | None = None):
        """Training batches (shuffled, augmented) or evaluation batches (in order, the eval transform) of
        the train or val split, or of `examples`."""
        if train and examples is None and self._train_loader is not None:  # one per run: its workers persist
            self._train_loader.set_epoch(epoch)
            return self._train_loader
        if examples is None:
            examples = self.dataset.train if train else self.dataset.val
        # Segmentation and detection are evaluated one image at a time, at its own size: exactly what serve
        # runs (a detector's batch pads its images to one size, which moves boxes near the borders).
        batch_size = 1 if self.task.evaluated_per_image and not train else self.config.batch_size
        dataset, collate = self.implementation.batching(examples, train, self)
        loader = make_loader(dataset, collate, train=train, batch_size=batch_size, workers=self.config.workers,
                             seed=self.config.seed, epoch=epoch, pin_memory=self.runtime.device.type == "cuda",
                             distributed=self.runtime.distributed and train)
        if train and examples is self.dataset.train:
            self._train_loader = loader
        return loader

    def release_loaders(self) -> None:
        """Ends the training loader's worker processes (a refit pass makes its own)."""
        self._train_loader = None

    def to_device(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        channels_last = self.entry.modality == "image"  # see _run
        moved = []
        for tensor in inputs.values():
            tensor = tensor.to(self.runtime.device, non_blocking=True)
            if channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            moved.append(tensor)
        return moved

    def target(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.to(self.runtime.device, non_blocking=True)

    def autocast(self):
        dtype = self.runtime.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        if hasattr(self.model, "mixed_precision"):  # a model that keeps parts in float32 (detectors' boxes)
            return self.model.mixed_precision(self.runtime.device.type, dtype)
        return torch.autocast(self.runtime.device.type, dtype=dtype)

    def train_epoch(self, model: nn.Module, optimizer, scheduler, scaler, epoch: int) -> tuple[float, int, float]:
        from tqdm.auto import tqdm

        model.train()
        freeze_batchnorm_statistics(model, all_layers=self.config.batchnorm == "frozen")
        loader = self.loader(True, epoch)
        accumulate = self.config.accumulate
        trainable = [p for p in model.parameters() if p.requires_grad]
        device = self.runtime.device
        # The running loss and the finite flag stay on the device: the host reads them once per optimizer
        # step (one synchronisation), not after every micro-batch.
        total_loss, finite = torch.zeros((), device=device), torch.ones((), device=device)
        seen, start = 0, time.perf_counter()
        step_loss, step_seen = torch.zeros((), device=device), 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False, file=sys.stderr,
                   disable=self.quiet or not self.runtime.is_main, dynamic_ncols=True)
        optimizer.zero_grad(set_to_none=True)
        for step, (inputs, labels) in enumerate(bar):
            last = (step + 1) % accumulate == 0 or step + 1 == len(loader)
            sync = contextlib.nullcontext() if last or not self.runtime.distributed else model.no_sync()
            with sync:
                with self.autocast():
                    if self.criterion is None:  # the model's own losses (detectors), as its task computes them
                        loss = self.implementation.model_loss(self, model, inputs, labels)
                    else:
                        logits = model(*self.to_device(inputs))
                        loss = self.criterion(logits.float(), self.target(labels))
                loss_value = loss.detach().float()
                finite = finite * torch.isfinite(loss_value)
                step_loss = step_loss + loss_value * len(labels)
                step_seen += len(labels)
                # A NaN loss makes NaN gradients, which are checked below, before they reach the weights.
                scaler.scale(loss / accumulate).backward()
            if last:
                mean = self._check_finite(finite, step_loss, step_seen, epoch, step)  # the step's one host sync
                bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
                total_loss = total_loss + step_loss
                finite, step_loss, step_seen = torch.ones((), device=device), torch.zeros((), device=device), 0
                if self.config.clip_grad:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, self.config.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            seen += len(labels)
        return float(total_loss) / max(1, seen), seen, time.perf_counter() - start

    def _check_finite(self, finite: torch.Tensor, loss_sum: torch.Tensor, examples: int, epoch: int, step: int) -> float:
        """DivergedError when a micro-batch of this optimizer step had a NaN/inf loss, before the step
        reaches the weights; else the step's mean loss. One read of the device (two
        numbers at once). Under DDP every rank takes the same decision (the flag all-reduced), so none
        is left waiting in a collective."""
        flag = finite.reshape(1)
        if self.runtime.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok, total = torch.stack([flag[0], loss_sum]).tolist()
        if not ok:
            raise DivergedError(
                f"epoch {epoch + 1}, step {step + 1}: the training loss is {total / max(1, examples):g}; the run "
                f"diverged (lr {self.config.lr:g}). Lower --lr, or add --warmup-epochs / --clip-grad, and start again "
                "(checkpoints of finished epochs are kept in the run's checkpoints/)")
        return total / max(1, examples)

    def train_pairs(self, model: nn.Module) -> None:
        """The contrastive stage (zoo.pairs) on the training split: the text encoder under the head learns
        from pairs of same-class and different-class texts before the head is fitted."""
        from zoo.pairs import train_pairs
        from zoo.preprocess import tokenize

        encoder = model.encoder

        def encode(texts: list[str]) -> torch.Tensor:
            with self.autocast():
                return encoder(*self.to_device(tokenize(self.tokenizer, texts)))

        examples = self.dataset.train
        apply_freeze(self.model, self.blocks, 0)  # the stage trains the whole encoder, whatever --freeze does after it
        try:
            stage = train_pairs(encoder, [e.item for e in examples], [e.label for e in examples], self.config.seed,
                                encode)
        finally:
            self.set_epoch_freeze(0)
        self.pairs_info = dataclasses.asdict(stage)
        self.log(stage.describe())

    def fit_probe(self, model: nn.Module, cache: Path | None) -> None:
        """Fit the head on the frozen backbone's features of the training split (zoo.probe) and load it
        into `model`. The features are extracted once, in order with the eval transform, and cached in
        `cache` (a safetensors file keyed by the data fingerprint)."""
        from safetensors.torch import load_file, save_file

        from zoo.probe import FOLDS, extract_features, fit_probe, load_probe

        start = time.perf_counter()
        head = self.head_layer
        fingerprint = self.dataset.fingerprint()
        stored = load_file(str(cache)) if cache is not None and cache.is_file() else {}
        if "fingerprint" in stored and bytes(stored["fingerprint"].tolist()).decode() == fingerprint:
            features, labels = stored["features"], stored["labels"]
        else:
            def run(inputs):
                with self.autocast():
                    return model(*self.to_device(inputs))

            features, labels = extract_features(model, head, self.loader(False, 0, self.dataset.train), run)
            if cache is not None and self.runtime.is_main:
                with atomic_path(cache) as tmp:
                    save_file({"features": features, "labels": labels,
                               "fingerprint": torch.tensor(list(fingerprint.encode()), dtype=torch.uint8)}, str(tmp))
        trained_on_labels = bool(self.pairs_info and self.pairs_info["steps"])  # zoo.probe.FIXED_C: no search
        folds = 0 if trained_on_labels else FOLDS
        self.probe = fit_probe(features, labels, head.out_features, folds=folds, seed=self.config.seed)
        self.probe_info = {"C": self.probe.C, "train_loss": self.probe.train_loss, "examples": len(features),
                           "cv_accuracy": self.probe.cv_accuracy}
        load_probe(head, self.probe)
        accuracy = "" if self.probe.cv_accuracy is None else f", out-of-fold accuracy {self.probe.cv_accuracy:.3f}"
        how = ("fixed: the features were trained on these labels, cross-validation would measure memory"
               if trained_on_labels else f"cross-validated log loss, up to {FOLDS} folds")
        self.log(f"linear probe on {len(features)} x {features.shape[1]} frozen features: C={self.probe.C:g} "
                 f"({how}){accuracy}, {time.perf_counter() - start:.1f}s")

    def probe_leaves_nothing(self) -> bool:
        """`--after-probe gated` and a probe without out-of-fold errors (zoo.recipe.fine_tuning_has_room): the
        probe is the result."""
        accuracy = (self.probe_info or {}).get("cv_accuracy")
        return self.config.after_probe == "gated" and not recipe.fine_tuning_has_room(accuracy)
