"""The fine-tuning loop's own overhead: training throughput (samples/s) of `zoo finetune` vs a
minimal hand-written PyTorch loop on the same model, data, transforms, batch size and optimizer,
interleaved in one process (hand, zoo, hand, zoo, ...) and compared as a ratio of medians.

Needs scikit-learn (the digits images).

    python benchmarks/loop_overhead.py [--repeats 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import zoo
from zoo.heads import attach_head
from zoo.loaders import ImageExamples, train_image_transform
from zoo.data import load_dataset
from zoo.registry import get_model

sys.path.insert(0, str(Path(__file__).parent))
from transfer_vs_scratch import digits_folders  # noqa: E402

MODEL = "efficientnet_lite0"
BATCH = 16


def hand_loop(data: Path, epochs: int, seed: int) -> float:
    """Samples/s of the plainest correct loop: DataLoader -> forward -> CE -> backward -> AdamW step."""
    entry = get_model(MODEL)
    dataset = load_dataset(data, "image", seed=seed)
    torch.manual_seed(seed)
    model = attach_head(zoo.build(MODEL), entry, "multiclass", len(dataset.labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(ImageExamples(dataset.train, train_image_transform(entry.input)),
                                         batch_size=BATCH, shuffle=True)
    criterion = torch.nn.CrossEntropyLoss()
    seen, elapsed = 0, 0.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        elapsed += time.perf_counter() - start
    return seen / elapsed


def zoo_loop(data: Path, out: Path, epochs: int, seed: int) -> tuple[float, float]:
    """(training samples/s as the run reports it, samples/s over the whole call incl. evaluation,
    checkpoints, metrics files and the final card)."""
    start = time.perf_counter()
    # The training loop alone: no probe stage and no refit pass (the recipe's extra work is not loop overhead).
    result = zoo.finetune(MODEL, data, out, epochs=epochs, batch_size=BATCH, lr=1e-3, seed=seed, quiet=True,
                          overwrite=True, head_init="random", refit="off")
    wall = time.perf_counter() - start
    epochs_run = [r for r in result.history if r["epoch"] > 0]
    trained = sum(r["samples_per_second"] for r in epochs_run) / len(epochs_run)
    samples = len(load_dataset(data, "image", seed=seed).train) * epochs
    return trained, samples / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    hand, zoo_train, zoo_wall = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        data, _ = digits_folders(Path(tmp), 10, seed=0)
        zoo_loop(data, Path(tmp) / "warmup", 1, 0)  # first-call costs (imports, allocator) out of the timings
        for repeat in range(args.repeats):
            hand.append(hand_loop(data, args.epochs, repeat))
            trained, wall = zoo_loop(data, Path(tmp) / "run", args.epochs, repeat)
            zoo_train.append(trained)
            zoo_wall.append(wall)
            print(json.dumps({"repeat": repeat, "hand": hand[-1], "zoo_train": trained, "zoo_wall": wall}), flush=True)
    result = {
        "model": MODEL, "batch_size": BATCH, "epochs": args.epochs, "repeats": args.repeats,
        "train_images": 100, "device": "cpu", "threads": torch.get_num_threads(),
        "hand_samples_per_s": statistics.median(hand), "zoo_train_samples_per_s": statistics.median(zoo_train),
        "zoo_wall_samples_per_s": statistics.median(zoo_wall),
    }
    result["ratio_train"] = result["zoo_train_samples_per_s"] / result["hand_samples_per_s"]
    result["ratio_wall"] = result["zoo_wall_samples_per_s"] / result["hand_samples_per_s"]
    (args.out / "loop_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
