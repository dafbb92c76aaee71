"""`zoo finetune`: a pretrained backbone, a new head, a freeze policy, a training loop (CPU or
CUDA with AMP, single process or torchrun/DDP), and a resumable run directory (see zoo.runs)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from zoo.data import (Dataset, is_qa_data, is_token_data, load_dataset, load_detection, load_segmentation, load_squad,
                      load_token_tags)
from zoo.config import (CLASSIFICATION_METRICS, DETECTION_METRICS, METRIC_NAMES, QA_METRICS, SEGMENTATION_METRICS,
                        TOKEN_METRICS, FinetuneConfig)
from zoo.errors import DivergedError, InputError, ZooError
from zoo import recipe
from zoo.factory import build, resolve
from zoo.freeze import (
    apply_freeze,
    backbone_blocks,
    freeze_batchnorm_statistics,
    frozen_count,
    parameter_groups,
    parse_policy,
    trainable_table,
)
from serve.files import atomic_path
from zoo.heads import IGNORE_TOKEN, attach_head, head_prefix, head_outputs, loss_function, predictions
from zoo.loaders import make_loader
from zoo.probe import head_layer
from zoo.metrics import classification_metrics, detection_metrics, entity_metrics, segmentation_metrics
from zoo.preprocess import load_tokenizer
from zoo.provenance import package_versions
from zoo.reference import SENTENCES
from zoo.runs import (
    CARD,
    RUN_WEIGHTS_FILE,
    RUN_CONFIG,
    load_weights,
    save_weights,
    write_json_atomic,
    write_metrics,
)
from zoo.schema import ModelEntry
from zoo.tolerances import REFERENCE_ATOL

STATE_FILE = "training_state.pt"
PROBE_FEATURES = "probe_features.safetensors"  # the frozen features the probe was fitted on
TRAINING_PACKAGES = ("zoo", "torch", "torchvision", "transformers", "tokenizers", "safetensors", "numpy")


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


# ---------------------------------------------------------------------------------------------
# Environment: device, precision, distributed


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int
    world_size: int
    owns_process_group: bool = False  # finetune() initialised it, so finetune() destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def auto_amp(capability: tuple[int, int] | None) -> str:
    """`--amp auto`: bf16 where the GPU computes it natively (compute capability 8.0 and up: A100, H100,
    RTX 30xx and later), fp16 with loss scaling before that (V100, T4), off on CPU (`capability` None).
    Not `torch.cuda.is_bf16_supported()`: it counts emulation, which is slower than fp32 on a V100."""
    if capability is None:
        return "off"
    return "bf16" if capability[0] >= 8 else "fp16"


def _runtime(config: FinetuneConfig) -> Runtime:
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    use_cuda = cuda and config.device != "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                         "start at most that many processes per node (torchrun --nproc-per-node), or pass --device cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    amp = config.amp
    if amp == "auto":
        amp = auto_amp(torch.cuda.get_device_capability(device) if use_cuda else None)
    if amp != "off" and not use_cuda:
        raise InputError(f"--amp {amp}: mixed precision is for CUDA here; use --amp off on CPU")
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
        owns = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    return Runtime(device, dtype, rank, world_size, owns)


def _default_workers(runtime: Runtime) -> int:
    """DataLoader workers when --workers is not given: none on CPU (the training threads need the cores),
    on CUDA enough processes to decode and augment ahead of the GPU: the cores shared by the node's
    ranks, one left to each rank's training thread, at most 16 (JPEG decoding and resizing keep up with
    about 150 images/s per worker: an H200 trains EfficientNet-Lite0 at ~3,000/s, benchmarks/gpu_check.py)."""
    if runtime.device.type != "cuda":
        return 0
    per_rank = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", runtime.world_size)))
    return max(0, min(16, per_rank - 1))


@contextlib.contextmanager
def _cuda_math(runtime: Runtime):
    """TF32 matmuls and convolutions while training on CUDA (Ampere and later; a 10-bit mantissa on the
    inputs, fp32 accumulation: PyTorch's recommended setting for training), restored afterwards so the
    caller's own numerics (an export parity check, say) stay exact. cuDNN's algorithm search
    (`cudnn.benchmark`) stays off: on an H200 its first epoch took 11-18 s longer per run and precision for
    EfficientNet-Lite0, while a loop without it trained at 2,800-3,600 images/s (benchmarks/gpu_check.py)."""
    if runtime.device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _on_main(runtime: Runtime, action: Callable[[], None]) -> None:
    """`action` on rank 0 only, the other ranks waiting; a ZooError it raises is raised on every rank
    (so no rank is left waiting in a collective for one that stopped)."""
    if not runtime.distributed:
        action()
        return
    failure: list[str | None] = [None]
    if runtime.is_main:
        try:
            action()
        except ZooError as exc:
            failure = [str(exc)]
    dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise InputError(failure[0])


def _agree(runtime: Runtime, decision: bool) -> bool:
    """Rank 0's `decision` on every rank (early stopping: a rank that stopped alone would hang the others)."""
    if not runtime.distributed:
        return decision
    flag = torch.tensor([int(decision)], device=runtime.device if runtime.device.type == "cuda" else "cpu")
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Model, optimizer, schedule


def _optimizer(name: str, groups: list[dict], config: FinetuneConfig, cuda: bool = False) -> torch.optim.Optimizer:
    """`cuda`: Adam/AdamW use the fused CUDA kernel (one launch for every parameter instead of several per
    tensor; same update rule, works with the fp16 GradScaler)."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    fused = {"fused": True} if cuda else {}
    if name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, **fused)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, **fused)


def _schedule(optimizer: torch.optim.Optimizer, config: FinetuneConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _with_positive(dataset: Dataset, positive: str | None) -> Dataset:
    """Binary head: the positive class is label 1 (the second in sorted order unless --positive)."""
    if positive is None or positive == dataset.labels[1]:
        return dataset
    if positive not in dataset.labels:
        raise InputError(f"--positive {positive!r} is not one of the labels {dataset.labels}")
    swap = {0: 1, 1: 0}
    relabel = lambda examples: [dataclasses.replace(e, label=swap[e.label]) for e in examples]  # noqa: E731
    return dataclasses.replace(dataset, labels=dataset.labels[::-1], train=relabel(dataset.train), val=relabel(dataset.val))


# ---------------------------------------------------------------------------------------------
# Files


def _prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
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


# ---------------------------------------------------------------------------------------------
# The loop


class _Trainer:
    def __init__(self, entry: ModelEntry, dataset: Dataset, config: FinetuneConfig, runtime: Runtime,
                 quiet: bool, log: Callable[[str], None]):
        self.entry, self.dataset, self.config, self.runtime, self.quiet, self.log = entry, dataset, config, runtime, quiet, log
        _seed_everything(config.seed)  # without pretrained weights the backbone's initialisation is random too
        backbone = build(entry, pretrained=config.pretrained)
        _seed_everything(config.seed)  # the new head's initialisation depends on the seed only
        self.segmentation = dataset.task == "segmentation"
        self.detection = dataset.task == "detection"
        self.tokens = dataset.task == "token-classification"
        self.qa = dataset.task == "question-answering"
        self.model = attach_head(backbone, entry, config.head, len(dataset.labels))
        if entry.modality == "text":  # fused attention kernels while training; eager again in _finish
            from zoo.builders.hf_encoder import set_attention

            set_attention(self.model, "sdpa")
        self.head_prefix = head_prefix(self.model)
        self.blocks = backbone_blocks(self.model, self.head_prefix)
        self.policy = parse_policy(config.freeze, len(self.blocks))
        self.tokenizer = self.windows = None
        if entry.modality == "text":
            from zoo.cache import fetch

            tokenizer_file = fetch(entry).files[entry.input.tokenizer]
            self.tokenizer = load_tokenizer(tokenizer_file, entry.input)
            if self.qa:  # question + context windows, as serve cuts them
                from serve.qa import WindowTokenizer, default_stride

                length = entry.input.max_length
                self.windows = WindowTokenizer(tokenizer_file, length, default_stride(length),
                                               self.tokenizer.padding["pad_id"])
        self.criterion = None if self.detection else loss_function(config.head, config.label_smoothing, self.segmentation)
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
        batch_size = 1 if (self.segmentation or self.detection) and not train else self.config.batch_size
        loader = make_loader(examples, train=train, spec=self.entry.input, tokenizer=self.windows if self.qa else self.tokenizer,
                             batch_size=batch_size, workers=self.config.workers, seed=self.config.seed,
                             epoch=epoch, pin_memory=self.runtime.device.type == "cuda",
                             distributed=self.runtime.distributed and train, augment=self.config.augment)
        if train and examples is self.dataset.train:
            self._train_loader = loader
        return loader

    def release_loaders(self) -> None:
        """Ends the training loader's worker processes (a refit pass makes its own)."""
        self._train_loader = None

    def _to_device(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        channels_last = self.entry.modality == "image"  # see _run
        moved = []
        for tensor in inputs.values():
            tensor = tensor.to(self.runtime.device, non_blocking=True)
            if channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            moved.append(tensor)
        return moved

    def _target(self, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(self.runtime.device, non_blocking=True)
        return labels.float().unsqueeze(1) if self.config.head == "binary" else labels

    def _autocast(self):
        dtype = self.runtime.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        if self.detection:  # boxes in float32 (DetectionNet.mixed_precision)
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
                with self._autocast():
                    if self.detection:  # torchvision's own losses (classification + box regression)
                        images, targets = self._detection_batch(inputs, labels)
                        loss = sum(model(images, targets).values())
                    else:
                        logits = model(*self._to_device(inputs))
                        loss = self.criterion(logits.float(), self._target(labels))
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

    def _detection_batch(self, inputs, targets):
        device = self.runtime.device
        return ([image.to(device, non_blocking=True) for image in inputs["images"]],
                [{k: v.to(device, non_blocking=True) for k, v in target.items()} for target in targets])

    def train_pairs(self, model: nn.Module) -> None:
        """The contrastive stage (zoo.pairs) on the training split: the text encoder under the head learns
        from pairs of same-class and different-class texts before the head is fitted."""
        from zoo.pairs import train_pairs
        from zoo.preprocess import tokenize

        encoder = model.encoder

        def encode(texts: list[str]) -> torch.Tensor:
            with self._autocast():
                return encoder(*self._to_device(tokenize(self.tokenizer, texts)))

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
                with self._autocast():
                    return model(*self._to_device(inputs))

            features, labels = extract_features(model, head, self.loader(False, 0, self.dataset.train), run)
            if cache is not None and self.runtime.is_main:
                with atomic_path(cache) as tmp:
                    save_file({"features": features, "labels": labels,
                               "fingerprint": torch.tensor(list(fingerprint.encode()), dtype=torch.uint8)}, str(tmp))
        self.probe = fit_probe(features, labels, head.out_features, seed=self.config.seed)
        self.probe_info = {"C": self.probe.C, "train_loss": self.probe.train_loss, "examples": len(features),
                           "cv_accuracy": self.probe.cv_accuracy}
        load_probe(head, self.probe)
        accuracy = "" if self.probe.cv_accuracy is None else f", out-of-fold accuracy {self.probe.cv_accuracy:.3f}"
        self.log(f"linear probe on {len(features)} x {features.shape[1]} frozen features: C={self.probe.C:g} "
                 f"(cross-validated log loss, up to {FOLDS} folds){accuracy}, {time.perf_counter() - start:.1f}s")

    def probe_leaves_nothing(self) -> bool:
        """`--after-probe gated` and a probe without out-of-fold errors (zoo.recipe.fine_tuning_has_room): the
        probe is the result."""
        accuracy = (self.probe_info or {}).get("cv_accuracy")
        return self.config.after_probe == "gated" and not recipe.fine_tuning_has_room(accuracy)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        if self.qa:
            return self._evaluate_answers(model)
        if self.detection:
            detections, targets = [], []
            for inputs, labels in self.loader(False, 0):
                images, moved = self._detection_batch(inputs, labels)
                with self._autocast():
                    detections += model.detect(images)
                targets += moved
            return {"loss": None, **detection_metrics(detections, targets)}
        losses, predicted, target = 0.0, [], []
        for inputs, labels in self.loader(False, 0):
            with self._autocast():
                logits = model(*self._to_device(inputs)).float()
            losses += float(self.criterion(logits, self._target(labels))) * len(labels)
            predicted.append(predictions(self.config.head, logits).cpu())  # NER: (batch, tokens) per batch
            target.append(labels)
        if self.tokens:  # one tag per word (its first sub-word); words cut off by max_length are not scored
            names = self.dataset.labels
            predicted_tags, target_tags = [], []
            for batch_predicted, batch_target in zip(predicted, target):
                for row_predicted, row_target in zip(batch_predicted, batch_target):
                    keep = row_target != IGNORE_TOKEN
                    predicted_tags.append([names[i] for i in row_predicted[keep].tolist()])
                    target_tags.append([names[i] for i in row_target[keep].tolist()])
            return {"loss": losses / max(1, len(self.dataset.val)), **entity_metrics(predicted_tags, target_tags)}
        predicted_all, target_all = torch.cat([p.flatten() for p in predicted]), torch.cat([t.flatten() for t in target])
        score = segmentation_metrics if self.segmentation else classification_metrics
        metrics = score(predicted_all, target_all, len(self.dataset.labels))
        examples = len(self.dataset.val)
        return {"loss": losses / max(1, examples), **metrics}

    def _evaluate_answers(self, model: nn.Module) -> dict[str, float]:
        """Each held-out question through its windows and serve.qa's decoding (what serve answers), scored
        against every reference answer with SQuAD's exact match and F1 (torchmetrics); the loss is per window."""
        from torchmetrics.functional.text import squad

        from serve.qa import answer
        from zoo.loaders import span_target

        predictions_, targets, loss, windows = [], [], 0.0, 0
        for index, example in enumerate(self.dataset.val):
            encodings = self.windows.windows(example.question, example.item)
            feeds = self.windows.pad(encodings)
            with self._autocast():
                logits = model(*[torch.from_numpy(feeds[name]).to(self.runtime.device)
                                 for name in ("input_ids", "attention_mask")]).float()
            target = torch.tensor([span_target(e, *example.answers[0]) for e in encodings], device=logits.device)
            loss += float(self.criterion(logits, target)) * len(encodings)
            windows += len(encodings)
            found = answer(example.item, list(logits.cpu().numpy()), encodings)
            predictions_.append({"prediction_text": found["answer"], "id": str(index)})
            targets.append({"id": str(index), "answers": {"answer_start": [a[0] for a in example.answers],
                                                          "text": [a[1] for a in example.answers]}})
        scores = squad(predictions_, targets)
        return {"loss": loss / max(1, windows), "squad_f1": float(scores["f1"]) / 100,
                "exact_match": float(scores["exact_match"]) / 100}

    def reference_cases(self, model: nn.Module) -> list[dict[str, Any]]:
        """The fine-tuned model's own outputs on fixed inputs: what `zoo validate RUN_DIR` checks."""
        from zoo.validation import case_inputs, run_model

        model.eval()
        if self.segmentation:  # per-pixel logits: small inputs keep the card small (2 x classes x 48 x 64)
            cases: list[dict[str, Any]] = [{"input": "synthetic:48x64", "batch": 2}]
        elif self.detection:  # one image per case; rows of x1 y1 x2 y2 score label
            cases = [{"input": "synthetic:240x320", "batch": 1}, {"input": "asset:flower.jpg", "batch": 1}]
        elif self.entry.modality == "image":
            cases = [{"input": "synthetic", "batch": 2}, {"input": "asset:flower.jpg", "batch": 1}]
        else:
            cases = [{"input": "texts", "batch": len(SENTENCES), "texts": list(SENTENCES)}]
        for case in cases:
            inputs = case_inputs(self.entry, case["input"], case.pop("batch"), case.get("texts", ()), self.tokenizer)
            output = run_model(model, inputs)  # 8 significant digits hold a float32 exactly enough
            case["output"] = np.array([float(f"{v:.8g}") for v in output.ravel()]).reshape(output.shape).tolist()
        return cases


def finetune(model: str | ModelEntry, data: str | Path, out: str | Path | None, config: FinetuneConfig | None = None,
             *, resume: bool = False, overwrite: bool = False, quiet: bool = False, dry_run: bool = False,
             on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None, **overrides: Any) -> FinetuneResult:
    """Fine-tune registry model `model` on `data` into run directory `out`; `overrides` set
    FinetuneConfig fields. With `resume`, the configuration stored in `out` is used as it is."""
    out_dir = Path(out) if out is not None else None
    if resume:
        if out_dir is None:
            raise InputError("--resume needs the run directory")
        _prepare_run_dir(out_dir, resume=True, overwrite=False)
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
    segmentation, detection = entry.output.kind == "segmentation", entry.output.kind == "detection"
    qa = entry.modality == "text" and data is not None and is_qa_data(data)
    tokens = entry.modality == "text" and data is not None and not qa and is_token_data(data)
    allowed = (SEGMENTATION_METRICS if segmentation else DETECTION_METRICS if detection else TOKEN_METRICS if tokens
               else QA_METRICS if qa else CLASSIFICATION_METRICS)
    if config.metric == "auto":
        config = dataclasses.replace(config, metric=allowed[0])
    elif config.metric not in allowed:
        raise InputError(f"--metric {config.metric}: {entry.id} is a model for {entry.task}; expected one of {', '.join(allowed)}")
    if segmentation:
        if config.head != "multiclass":
            raise InputError(f"--head {config.head}: segmentation takes the multiclass head (one logit per class and pixel)")
        dataset = load_segmentation(data, config.val_fraction, config.seed)
    elif detection:
        if config.head != "multiclass":
            raise InputError(f"--head {config.head}: detection takes the multiclass head (one score per class and box)")
        dataset = load_detection(data, config.val_fraction, config.seed)
    elif tokens:
        if config.head not in ("multiclass", "token"):
            raise InputError(f"--head {config.head}: token classification takes one multiclass label per token")
        config = dataclasses.replace(config, head="token")
        dataset = load_token_tags(data, config.val_fraction, config.seed)
    elif qa:
        if config.head not in ("multiclass", "span"):
            raise InputError(f"--head {config.head}: question answering takes the span head (start and end per token)")
        config = dataclasses.replace(config, head="span")
        dataset = load_squad(data, config.val_fraction, config.seed)
    else:
        dataset = load_dataset(data, entry.modality, config.val_fraction, config.seed)
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
    runtime = _runtime(config)
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
        config = dataclasses.replace(config, workers=_default_workers(runtime))
        choices = [*choices, f"workers {config.workers} (DataLoader processes; --workers)"]
    if not dry_run and not resume:  # rank 0 alone: concurrent deletes under --overwrite, and a slow rank
        _on_main(runtime, lambda: _prepare_run_dir(out_dir, resume=False, overwrite=overwrite))  # seeing run.json
    log = (lambda message: print(message, file=sys.stderr, flush=True)) if runtime.is_main else (lambda message: None)
    trainer = _Trainer(entry, dataset, config, runtime, quiet, log)
    if not resume:  # after every check: a user mistake stays a one-line error
        log("settings:\n" + "\n".join(f"  {line}" for line in choices))
    table = trainable_table(trainer.model, trainer.blocks, trainer.head_prefix)
    if dry_run:
        return FinetuneResult(None, -1, {}, trainable=table)
    refit = config.refit == "on"
    with _cuda_math(runtime):
        result = _run(trainer, entry, dataset, config, runtime, out_dir, fingerprint, resume, table, choices,
                      on_epoch_end, log, finish=not refit)
        if refit:
            result = _refit(result, entry, dataset, config, runtime, out_dir, fingerprint, table, choices, quiet, log)
    return result


def _refit(first: FinetuneResult, entry: ModelEntry, dataset: Dataset, config: FinetuneConfig, runtime: Runtime,
           out: Path, fingerprint: str, table, choices: list[str], quiet: bool, log) -> FinetuneResult:
    """The selected procedure (the probe alone, or probe + fine-tuning for the same epochs) again, from the
    pretrained weights with the same seed, on train + val: the validation split decided, then trains too.
    Its pass lives in OUT/refit/ (restarted from scratch by --resume: it is deterministic); its weights
    are the run's model."""
    merged = dataclasses.replace(dataset, train=dataset.train + dataset.val, val=[])
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
    trainer = _Trainer(entry, merged, second_config, runtime, quiet, log)
    second = _run(trainer, entry, merged, second_config, runtime, folder, merged.fingerprint(), False, table, choices,
                  None, log, finish=False)
    refit = {"examples": len(merged.train), "selected": "probe" if probe_only else "fine-tuned",
             "epochs": 0 if probe_only else config.epochs, "history": "refit/metrics.jsonl"}
    if runtime.is_main:
        _finish(trainer, trainer.model, entry, dataset, config, out, folder / "checkpoints" / "best.safetensors",
                fingerprint, first.best_epoch, first.best_metrics, first.history, runtime, choices, refit)
    if runtime.distributed:
        dist.barrier()
    return dataclasses.replace(first, last_weights_sha256=second.last_weights_sha256, refit_history=second.history)


def _run(trainer: _Trainer, entry: ModelEntry, dataset: Dataset, config: FinetuneConfig, runtime: Runtime,
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
    optimizer = _optimizer(config.optimizer, groups, config, cuda=runtime.device.type == "cuda")
    steps_per_epoch = math.ceil(len(trainer.loader(True, 0)) / config.accumulate)
    scheduler = _schedule(optimizer, config, steps_per_epoch)
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
            "base_model": entry.id, "config": dataclasses.asdict(config), "choices": choices, "labels": dataset.labels,
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
        metrics = trainer.evaluate(model) if validate else {"loss": None}
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
        _seed_everything(config.seed * 1_000 + epoch)  # each epoch's randomness depends on (seed, epoch) only
        frozen = trainer.set_epoch_freeze(epoch)
        if runtime.distributed and frozen != wrapped_frozen:
            wrapped = None  # the previous wrapper (and its gradient hooks) goes first
            wrapped = DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.type == "cuda"
                                              else None)
            wrapped_frozen = frozen
        train_loss, seen, seconds = trainer.train_epoch(wrapped, optimizer, scheduler, scaler, epoch)
        if runtime.distributed:
            _sync_buffers(model)
        metrics = trainer.evaluate(model) if validate else {"loss": None}
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": metrics["loss"],
               **{f"val_{name}": value for name, value in metrics.items() if name != "loss"},
               "lr": optimizer.param_groups[0]["lr"], "samples_per_second": seen * runtime.world_size / max(seconds, 1e-9),
               "frozen_blocks": frozen}
        record(epoch, row)
        if _agree(runtime, bool(config.patience) and bad_epochs >= config.patience):
            stopped_early = epoch + 1 < config.epochs
            log(f"early stop: no {config.metric} improvement for {bad_epochs} epoch(s)")
            break
    trainer.release_loaders()
    last_sha = _state_sha256(model)
    best_row = history[best_index]
    best_metrics = {key[len("val_"):]: value for key, value in best_row.items()
                    if key.startswith("val_") and value is not None}
    if runtime.is_main and finish:
        _finish(trainer, model, entry, dataset, config, out, checkpoints / "best.safetensors", fingerprint,
                best_row["epoch"], best_metrics, history, runtime, choices)
    if runtime.distributed:
        dist.barrier()
    return FinetuneResult(out, best_row["epoch"], best_metrics, history, stopped_early, table, last_sha)


def _sync_buffers(model: nn.Module) -> None:
    """BatchNorm running statistics from rank 0 to every rank: DDP syncs gradients, not buffers
    updated after its last broadcast, so without this the ranks' evaluations would differ."""
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def _state_sha256(model: nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def _finish(trainer: _Trainer, model: nn.Module, entry: ModelEntry, dataset: Dataset, config: FinetuneConfig,
            out: Path, weights: Path, fingerprint: str, best_epoch: int, best_metrics: dict[str, float],
            history: list[dict[str, Any]], runtime: Runtime, choices: list[str], refit: dict[str, Any] | None = None) -> None:
    """The selected `weights`, tokenizer files, reference outputs and, last, the card that marks the run
    complete. `best_epoch` and `best_metrics` are the selection's, on the validation split; with `refit`,
    the weights come from the pass on train + val that followed it."""
    from serve.files import sha256_file
    from zoo.cache import fetch

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
        "base_model": entry.id, "base_origin": entry.provenance.origin, "license": entry.provenance.license,
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
                      "cases": trainer.reference_cases(model)},
    }
    write_json_atomic(out / CARD, card)


def describe_trainable(rows: list[tuple[str, int, int]]) -> list[str]:
    """The --dry-run table: which blocks train and how many parameters."""
    lines = [f"{'block':40} {'trainable':>12} {'total':>12}"]
    lines += [f"{name:40} {trainable:>12,} {total:>12,}" for name, trainable, total in rows]
    lines.append(f"{'all':40} {sum(r[1] for r in rows):>12,} {sum(r[2] for r in rows):>12,}")
    return lines


__all__ = ["FinetuneConfig", "FinetuneResult", "ZooError", "classification_metrics", "describe_trainable", "finetune"]
