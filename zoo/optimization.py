"""The optimizer and the learning-rate schedule of a fine-tuning run."""

from __future__ import annotations

import math

import torch

from zoo.config import FinetuneConfig


def make_optimizer(name: str, groups: list[dict], config: FinetuneConfig, cuda: bool = False) -> torch.optim.Optimizer:
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


def lr_schedule(optimizer: torch.optim.Optimizer, config: FinetuneConfig, steps_per_epoch: int):
    """Linear warm-up over `config.warmup_epochs`, then cosine decay to zero at the last step (or constant)."""
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

