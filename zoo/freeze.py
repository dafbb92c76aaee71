"""Which parameters train: the backbone split into ordered blocks (stem, one per stage/layer,
top), freeze policies over them, discriminative learning rates, and frozen BatchNorm statistics."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from zoo.errors import InputError

# Repeated blocks of every backbone family in the registry, in forward order.
_BLOCK_PATTERNS = [
    re.compile(p) for p in (
        r"^(_blocks\.\d+)\.",                                        # EfficientNet-Lite
        r"^(layer\d+)\.",                                           # torchvision ResNet
        r"^(features\.\d+)\.",                                      # VGG, MobileNet, EfficientNet, ConvNeXt
        r"^(net\.backbone\.\d+)\.",                                  # torchvision segmentation (MobileNetV3)
        r"^(net\.backbone\.(?:body|features\.0)\.\d+)\.",               # torchvision detection (MobileNetV3)
        r"^(encoder\.layers\.encoder_layer_\d+)\.",                 # torchvision ViT
        r"^((?:encoder\.)+(?:layer|transformer\.layer)\.\d+)\.",         # BERT/RoBERTa, DistilBERT
        r"^((?:blocks|stages)\.\d+)\.",                              # timm (MobileNet, EfficientNet, ViT/DeiT, ConvNeXt)
        r"^(model\.\w+\.(?:encoder\.|transformer\.)?(?:layer|layers|stages)\.\d+)\.",  # hf_task (transformers)
    )
]


@dataclass(frozen=True)
class Block:
    name: str
    parameters: tuple[str, ...]


def backbone_blocks(model: nn.Module, head_prefix: str) -> list[Block]:
    """Ordered blocks of backbone parameters: 'stem', the repeated blocks, 'top' (head excluded)."""
    order: list[str] = []
    members: dict[str, list[str]] = {}
    seen_block = False
    for name, _ in model.named_parameters():
        if name.startswith(head_prefix):
            continue
        key = next((m.group(1) for p in _BLOCK_PATTERNS if (m := p.match(name))), None)
        if key is None:
            key = "top" if seen_block else "stem"
        else:
            seen_block = True
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append(name)
    return [Block(k, tuple(members[k])) for k in order]


def parse_policy(policy: str, num_blocks: int) -> tuple[str, int]:
    """'full' | 'head' | N (freeze the first N blocks) | 'gradual:K' -> (kind, number)."""
    if policy in ("full", "head"):
        return policy, 0
    if policy.startswith("gradual:"):
        every = policy.split(":", 1)[1]
        if not every.isdigit() or int(every) < 1:
            raise InputError(f"--freeze {policy}: expected gradual:K with K >= 1 epochs")
        return "gradual", int(every)
    if policy.isdigit():
        count = int(policy)
        if count > num_blocks:
            raise InputError(f"--freeze {count}: this backbone has {num_blocks} blocks; use 0..{num_blocks} "
                             "(or 'head' / 'full' / 'gradual:K')")
        return "first", count
    raise InputError(f"--freeze {policy!r}: expected full, head, a number of blocks, or gradual:K")


def frozen_count(kind: str, number: int, num_blocks: int, epoch: int) -> int:
    """How many blocks (from the input side) are frozen during `epoch` (0-based)."""
    if kind == "full":
        return 0
    if kind == "head":
        return num_blocks
    if kind == "first":
        return number
    return max(num_blocks - epoch // number, 0)  # gradual: one more block from the top every `number` epochs


def apply_freeze(model: nn.Module, blocks: list[Block], frozen: int) -> None:
    parameters = dict(model.named_parameters())
    for index, block in enumerate(blocks):
        for name in block.parameters:
            parameters[name].requires_grad_(index >= frozen)


def freeze_batchnorm_statistics(model: nn.Module, all_layers: bool = False) -> None:
    """Call after model.train(): BatchNorm layers whose parameters are all frozen (every layer with
    `all_layers`) normalise with their running statistics and stop updating them (otherwise 'frozen'
    layers drift with the new data; with small batches, per-batch statistics differ from the running
    ones evaluation uses). Their affine parameters still train when they are not frozen."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if all_layers or (params and not any(p.requires_grad for p in params)):
                module.eval()


def parameter_groups(model: nn.Module, blocks: list[Block], head_prefix: str, lr: float, lr_decay: float,
                     weight_decay: float) -> list[dict]:
    """One optimizer group per block (and the head): the head at `lr`, each block below it at
    `lr * lr_decay ** depth` (discriminative learning rates; lr_decay = 1 gives one rate)."""
    parameters = dict(model.named_parameters())
    head = [p for n, p in parameters.items() if n.startswith(head_prefix)]
    groups = [{"params": head, "lr": lr, "weight_decay": weight_decay, "name": "head"}]
    for depth, block in enumerate(reversed(blocks), start=1):
        groups.append({"params": [parameters[n] for n in block.parameters], "lr": lr * lr_decay ** depth,
                       "weight_decay": weight_decay, "name": block.name})
    return groups


def trainable_table(model: nn.Module, blocks: list[Block], head_prefix: str) -> list[tuple[str, int, int]]:
    """(block, trainable parameters, total parameters) for --dry-run."""
    parameters = dict(model.named_parameters())
    rows = [(b.name, sum(parameters[n].numel() for n in b.parameters if parameters[n].requires_grad),
             sum(parameters[n].numel() for n in b.parameters)) for b in blocks]
    head = [p for n, p in parameters.items() if n.startswith(head_prefix)]
    rows.append(("head", sum(p.numel() for p in head if p.requires_grad), sum(p.numel() for p in head)))
    return rows


def describe_trainable(rows: list[tuple[str, int, int]]) -> list[str]:
    """The --dry-run table: which blocks train and how many parameters."""
    lines = [f"{'block':40} {'trainable':>12} {'total':>12}"]
    lines += [f"{name:40} {trainable:>12,} {total:>12,}" for name, trainable, total in rows]
    lines.append(f"{'all':40} {sum(r[1] for r in rows):>12,} {sum(r[2] for r in rows):>12,}")
    return lines

