"""Segmentation end to end, measured: LR-ASPP fine-tuned from random weights (its pretrained file is on
download.pytorch.org, out of reach here) on generated scenes, exported to ONNX fp32 and int8 (calibrated
on the training images), and scored on test scenes that neither training nor model selection saw: mIoU
per epoch (validation scenes) from `zoo finetune`, then mIoU of the torch model, the fp32 bundle and the
int8 bundle against the test masks, their pixel agreement with torch, and
int8 / fp32 latency at batch 1 (Predictor.run, the two interleaved in one run).

Scenes: a noisy background (class 0) with a disc (1) and a square (2) of random colour shades, sizes and
positions, 80-160 px wide; masks drawn from the same geometry, the border pixel ring marked 255.

From random weights the run needs a few hundred steps before evaluation means anything: torchvision's
MobileNetV3 batch norms update their running statistics with momentum 0.01, so after 50 steps they are
still 40 % at their initial values (eval-mode masks are all background while train-mode ones are not).
Hence batch 2 and 25 epochs (300 steps) by default; pretrained weights start with fitted statistics.

    python benchmarks/segmentation_scenes.py [--train 24] [--val 8] [--test 16] [--epochs 25] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import serve
import zoo
from zoo.factory import resolve
from zoo.preprocess import preprocess_images
from zoo.metrics import segmentation_metrics

LABELS = ("background", "disc", "square")


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 image, HxW uint8 mask) with one disc and one square."""
    height, width = int(rng.integers(64, 120)), int(rng.integers(80, 160))
    pixels = rng.normal(60, 25, (height, width, 3)).clip(0, 255)
    mask = np.zeros((height, width), np.uint8)
    rows, cols = np.mgrid[:height, :width]
    radius = rng.integers(8, 20)
    cy, cx = rng.integers(radius, height - radius), rng.integers(radius, width - radius)
    disc = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2
    side = int(rng.integers(10, 28))
    top, left = rng.integers(0, height - side), rng.integers(0, width - side)
    square = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    pixels[disc] = [rng.integers(170, 255), rng.integers(0, 80), rng.integers(0, 80)]
    pixels[square] = [rng.integers(0, 80), rng.integers(0, 80), rng.integers(170, 255)]
    mask[disc], mask[square] = 1, 2
    mask[[0, -1], :] = mask[:, [0, -1]] = 255
    return pixels.astype(np.uint8), mask


def write_split(folder: Path, count: int, rng: np.random.Generator) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index in range(count):
        image, mask = scene(rng)
        Image.fromarray(image).save(folder / "images" / f"{index:03d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{index:03d}.png")


def score(masks: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    predicted = torch.cat([torch.from_numpy(m.astype(np.int64)).flatten() for m in masks])
    target = torch.cat([torch.from_numpy(t.astype(np.int64)).flatten() for t in truths])
    return segmentation_metrics(predicted, target, len(LABELS))


def agreement(masks: list[np.ndarray], reference: list[np.ndarray]) -> float:
    return float(np.mean(np.concatenate([(a == b).ravel() for a, b in zip(masks, reference)])))


def latency(bundle: Path, variants: list[str], photo: str, rounds: int = 30) -> dict[str, float]:
    """Median ms of Predictor.run at batch 1 on one preprocessed scene, the variants interleaved."""
    predictors = {variant: serve.load(bundle, variant=variant) for variant in variants}
    feeds = next(iter(predictors.values())).preprocess([photo])
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(3):
        for predictor in predictors.values():
            predictor.run(feeds)
    for _ in range(rounds):
        for variant, predictor in predictors.items():
            start = time.perf_counter()
            predictor.run(feeds)
            times[variant].append((time.perf_counter() - start) * 1000)
    return {variant: round(float(np.median(values)), 2) for variant, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--val", type=int, default=8)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="zoo-seg-") as scratch:
        root = Path(scratch)
        (root / "data").mkdir()
        (root / "data" / "labels.txt").write_text("\n".join(LABELS) + "\n")
        write_split(root / "data" / "train", args.train, rng)
        write_split(root / "data" / "val", args.val, rng)
        write_split(root / "test", args.test, rng)
        start = time.perf_counter()
        result = zoo.finetune("lraspp_mobilenet_v3_large", root / "data", root / "run", epochs=args.epochs,
                              batch_size=args.batch_size, lr=0.01, pretrained=False, seed=args.seed, quiet=True)
        train_seconds = time.perf_counter() - start
        export = [sys.executable, "-m", "zoo_cli", "export", str(root / "run"), "--out", str(root / "bundle"),
                  "--format", "onnx", "--format", "onnx-int8", "--calibration", str(root / "data" / "train" / "images")]
        exported = subprocess.run(export, capture_output=True, text=True)
        if exported.returncode not in (0, 1):  # 1: a derived format failed its check (reported below)
            raise SystemExit(exported.stderr)
        table = (root / "bundle" / "report.md").read_text().replace(str(root), "<scratch>")
        images = sorted((root / "test" / "images").iterdir())
        truths = [np.asarray(Image.open(root / "test" / "masks" / p.name)) for p in images]
        entry, model = resolve(str(root / "run")), zoo.build(str(root / "run"))
        with torch.inference_mode():
            torch_masks = [model(preprocess_images(entry.input, [p]))[0].argmax(0).numpy() for p in images]
        torch_masks = [np.asarray(Image.fromarray(m.astype(np.uint8)).resize(Image.open(p).size, Image.Resampling.NEAREST))
                       for m, p in zip(torch_masks, images)]
        variants = ["fp32", *serve.load(root / "bundle").manifest.variants]
        bundles = {variant: [r["mask"] for r in serve.load(root / "bundle", variant=variant).predict([str(p) for p in images])]
                   for variant in variants}
        p50 = latency(root / "bundle", variants, str(images[0]))
        report = {
            "setup": {"model": "lraspp_mobilenet_v3_large (random init)", "train_scenes": args.train,
                      "val_scenes": args.val, "test_scenes": args.test, "best_epoch": result.best_epoch, "epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.01, "seed": args.seed,
                      "train_seconds": round(train_seconds, 1)},
            "epochs": [{"epoch": h["epoch"], "train_loss": round(h["train_loss"], 4), "val_miou": round(h["val_miou"], 4),
                        "val_pixel_accuracy": round(h["val_pixel_accuracy"], 4)} for h in result.history],
            "export_report": table,
            "test": {"torch": score(torch_masks, truths),
                         **{f"onnx {variant}": score(masks, truths) for variant, masks in bundles.items()}},
            "pixel_agreement": {f"onnx {variant} vs torch": agreement(masks, torch_masks) for variant, masks in bundles.items()},
            "median_ms_batch1": p50,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "segmentation_scenes.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
