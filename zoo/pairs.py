"""Contrastive pair training of a sentence encoder before its head is fitted: SetFit's first stage
(Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts"). N labelled texts give about N^2/2
pairs, "same class" or not; the encoder learns to put the cosine of each pair's embeddings at 1 or 0, so a
few dozen labels shape the embedding space with hundreds of signals where cross-entropy sees N.

For backbones trained for cosine similarity (sentence-transformers) only: the loss assumes the cosine of
two embeddings already means something. Sampling and loss follow setfit 1.x (`ContrastiveDataset` with
`num_iterations`, `CosineSimilarityLoss`): every pair of the training texts (each text with itself
included), split into positives and negatives, each list cycled to ITERATIONS x N pairs and interleaved,
at most MAX_PAIRS in all; AdamW at LR with a linear warm-up over the first tenth and a linear decay."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

ITERATIONS = 20  # setfit's default num_iterations: 2 x 20 pairs per training text
MAX_PAIRS = 2_000  # a bound on the stage's time: 125 steps of BATCH pairs
BATCH = 16  # pairs per optimizer step (32 texts through the encoder)
LR = 2e-5  # setfit's body_learning_rate
WARMUP_FRACTION = 0.1
ENUMERATE_LIMIT = 200_000  # pairs of one kind listed in full; above, drawn at random (N^2 / 2 tuples otherwise)


@dataclass(frozen=True)
class Pair:
    first: int  # indices into the training texts
    second: int
    same: bool


def sample_pairs(labels: Sequence[int], seed: int, iterations: int = ITERATIONS, max_pairs: int = MAX_PAIRS) -> list[Pair]:
    """Positive and negative pairs of training examples, alternating, in a shuffled order that depends on
    `seed` only: min(iterations x N, max_pairs / 2) of each, cycling through all N (N + 1) / 2 pairs (self
    pairs included) of each kind. Empty when there is no negative pair (a single class).

    A kind with more than ENUMERATE_LIMIT pairs is not listed (N^2 / 2 tuples: 200 M at N = 20,000): its
    pairs are drawn uniformly at random without repetition instead, which is what cycling a shuffled list
    does when fewer are taken than there are."""
    rng = random.Random(seed)
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    sizes = [len(m) for m in members.values()]
    n_positive = sum(m * (m + 1) // 2 for m in sizes)
    n_negative = len(labels) * (len(labels) + 1) // 2 - n_positive
    if not n_negative:
        return []
    each = min(iterations * len(labels), max_pairs // 2)
    if n_positive + n_negative <= ENUMERATE_LIMIT:  # setfit's own way: list every pair, shuffle, split
        everything = [(i, j) for i in range(len(labels)) for j in range(i, len(labels))]
        rng.shuffle(everything)
        positives = [Pair(i, j, True) for i, j in everything if labels[i] == labels[j]]
        negatives = [Pair(i, j, False) for i, j in everything if labels[i] != labels[j]]
    else:
        positives = _kind(members, True, n_positive, each, rng)
        negatives = _kind(members, False, n_negative, each, rng)
    pairs = []
    for k in range(each):
        pairs += [positives[k % len(positives)], negatives[k % len(negatives)]]
    rng.shuffle(pairs)  # what setfit's trainer does with its random sampler
    return pairs


def _kind(members: dict[int, list[int]], same: bool, count: int, wanted: int, rng: random.Random) -> list[Pair]:
    """`wanted` distinct pairs of one kind (every one when there are at most ENUMERATE_LIMIT), uniformly
    over the kind's `count` unordered pairs, self pairs included among positives."""
    groups = list(members.values())
    if count <= ENUMERATE_LIMIT:
        if same:
            chosen = [(g[a], g[b]) for g in groups for a in range(len(g)) for b in range(a, len(g))]
        else:
            chosen = [tuple(sorted((i, j))) for x, g in enumerate(groups) for h in groups[x + 1:] for i in g for j in h]
        rng.shuffle(chosen)
        return [Pair(i, j, same) for i, j in chosen]
    # Uniform over the kind's pairs: a group (positives) or a pair of groups (negatives) weighted by how many
    # pairs it holds, then a uniform pair inside it; repeats are drawn again (wanted << count here).
    if same:
        weights = [len(g) * (len(g) + 1) / 2 for g in groups]
    else:
        total = sum(len(g) for g in groups)
        weights = [len(g) * (total - len(g)) for g in groups]  # ordered (this group, another): each pair twice
    seen: set[tuple[int, int]] = set()
    while len(seen) < min(wanted, count):
        group = rng.choices(groups, weights)[0]
        if same:
            a, b = 1, 0
            while a > b:  # (a, b) with a <= b: uniform over the group's m (m + 1) / 2 pairs with self pairs
                a, b = rng.randrange(len(group)), rng.randrange(len(group))
            pair = (group[a], group[b])
        else:
            other = rng.choices(groups, [0 if g is group else len(g) for g in groups])[0]
            pair = tuple(sorted((rng.choice(group), rng.choice(other))))
        seen.add(pair)
    chosen = sorted(seen)
    rng.shuffle(chosen)
    return [Pair(i, j, same) for i, j in chosen]


@dataclass(frozen=True)
class PairStage:
    """What the stage did, for the run's log, run.json and card."""

    pairs: int
    steps: int
    lr: float
    first_loss: float  # mean loss of the first and the last tenth of the steps
    last_loss: float
    seconds: float

    def describe(self) -> str:
        return (f"contrastive pairs (SetFit): {self.pairs} pairs, {self.steps} steps of {BATCH} at lr {self.lr:g}, "
                f"cosine loss {self.first_loss:.4f} -> {self.last_loss:.4f}, {self.seconds:.1f}s")


def train_pairs(encoder: nn.Module, texts: Sequence[str], labels: Sequence[int], seed: int,
                encode: Callable[[list[str]], torch.Tensor], lr: float = LR, weight_decay: float = 0.0) -> PairStage:
    """Train `encoder` in place on pairs of `texts` (sample_pairs); `encode(texts)` runs it and returns the
    embeddings. One pass over the pairs at peak rate `lr`, dropout on; the pairs' order depends on `seed`."""
    start = time.perf_counter()
    pairs = sample_pairs(labels, seed)
    steps = math.ceil(len(pairs) / BATCH)
    if not steps:
        return PairStage(0, 0, lr, math.nan, math.nan, 0.0)
    parameters = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    warmup = max(1, round(WARMUP_FRACTION * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / max(1, steps - warmup)))
    encoder.train()
    losses = []
    for step in range(steps):
        batch = pairs[step * BATCH:(step + 1) * BATCH]
        embeddings = encode([texts[p.first] for p in batch] + [texts[p.second] for p in batch]).float()
        first, second = embeddings[:len(batch)], embeddings[len(batch):]
        target = torch.tensor([float(p.same) for p in batch], device=embeddings.device)
        loss = nn.functional.mse_loss(nn.functional.cosine_similarity(first, second), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    tenth = max(1, steps // 10)
    return PairStage(len(pairs), steps, lr, sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth,
                     time.perf_counter() - start)
