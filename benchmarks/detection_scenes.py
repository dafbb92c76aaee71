"""Detection end to end, measured: Faster R-CNN MobileNetV3 (320) fine-tuned on generated scenes, exported
to ONNX, and scored on test scenes that neither training nor model selection saw: mAP@0.5 per epoch
(validation scenes) from `zoo finetune`, then COCO mAP@0.5 and mAP@[.5:.95] of the torch model and of
the bundle through `serve` (its own decoding, min_score 0) against the test boxes, and how many test
images get the same detections from both (zoo.reference.compare_detections within DETECTION_ATOL).

The pretrained file is on download.pytorch.org, out of reach; random detectors collapse (every box scores
alike), so training starts from stand-in weights: random, with batch norms set from real images and a
spread class layer (export.random_weights.informative_random_weights), handed to `zoo.finetune` as the entry's
weights file (local path, sha256). From there SGD at lr 0.02 diverged (NaN loss, now a DivergedError);
lr 0.005 with gradient clipping at 5 learns.

Scenes: grey noise with 1-3 rectangles of two classes (red, blue), random sizes and positions.

    python benchmarks/detection_scenes.py [--train 32] [--val 8] [--test 16] [--epochs 10] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import serve
import zoo
from export.bundle import export_bundle
from export.random_weights import informative_random_weights
from export.parity import parity_cases
from zoo.builders.detection import detection_rows
from zoo.metrics import detection_metrics
from zoo.preprocess import image_pixels
from zoo.reference import compare_detections
from zoo.registry import get_model
from zoo.schema import FileSpec, SourceSpec
from zoo.tolerances import DETECTION_ATOL

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
CLASSES = {"blue": (30, 30, 220), "red": (220, 30, 30)}


def write_split(folder: Path, count: int, rng: np.random.Generator) -> list[dict]:
    """`count` scenes under folder/images/ and their COCO annotations.json; returns the targets."""
    (folder / "images").mkdir(parents=True)
    images, annotations, targets = [], [], []
    for index in range(count):
        width, height = int(rng.integers(160, 260)), int(rng.integers(140, 220))
        pixels = rng.normal(128, 20, (height, width, 3)).clip(0, 255).astype(np.uint8)
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, 4))):
            category = int(rng.integers(1, 3))
            w, h = int(rng.integers(24, 70)), int(rng.integers(24, 70))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            pixels[y:y + h, x:x + w] = list(CLASSES.values())[category - 1]
            boxes.append([x, y, x + w, y + h])
            labels.append(category)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(pixels).save(folder / "images" / f"scene{index}.png")
        images.append({"id": index + 1, "file_name": f"scene{index}.png", "width": width, "height": height})
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    categories = [{"id": i, "name": name} for i, name in enumerate(CLASSES, start=1)]
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                         "categories": categories}))
    return targets


def stand_in_entry(folder: Path):
    """The registry entry with its weights file replaced by informative random weights (see above)."""
    entry = get_model(MODEL)
    torch.manual_seed(0)
    model = zoo.build(entry, pretrained=False)
    informative_random_weights(model, entry, parity_cases(entry))
    weights = folder / "stand-in.pth"
    torch.save(model.net.state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return dataclasses.replace(entry, files=(FileSpec(weights.name, "weights", sha256=digest),),
                               sources=(SourceSpec(kind="path", path=str(folder)),))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=32)
    parser.add_argument("--val", type=int, default=8)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_split(root / "data" / "train", args.train, rng)
        write_split(root / "data" / "val", args.val, rng)
        targets = write_split(root / "test", args.test, rng)
        start = time.perf_counter()
        result = zoo.finetune(stand_in_entry(root), root / "data", root / "run", epochs=args.epochs, batch_size=4,
                              lr=0.005, optimizer="sgd", weight_decay=1e-4, warmup_epochs=1, clip_grad=5.0, quiet=True)
        seconds = time.perf_counter() - start
        export_bundle(str(root / "run"), root / "bundle")
        model, predictor = zoo.build(str(root / "run")), serve.load(root / "bundle")
        photos = sorted((root / "test" / "images").glob("*.png"), key=lambda p: int(p.stem[5:]))
        torch_detections, onnx_detections, same = [], [], 0
        for photo in photos:
            pixels = image_pixels(photo)
            with torch.inference_mode():
                boxes, scores, labels = model(pixels)
            torch_detections.append({"boxes": boxes, "scores": scores, "labels": labels})
            found = predictor.predict([str(photo)], min_score=0.0)[0]["detections"]
            onnx_detections.append({"boxes": torch.tensor([d["box"] for d in found]).reshape(-1, 4),
                                    "scores": torch.tensor([d["score"] for d in found]),
                                    "labels": torch.tensor([d["index"] for d in found], dtype=torch.int64)})
            actual = np.array([[*d["box"], d["score"], d["index"]] for d in found]).reshape(-1, 6)
            same += compare_detections(photo.name, actual, detection_rows(boxes, scores, labels), DETECTION_ATOL,
                                       max(pixels.shape[-2:])).ok
    report = {
        "model": MODEL, "start": "stand-in weights (random, informative batch norms)",
        "data": {"train": args.train, "val": args.val, "test": args.test},
        "finetune": {"epochs": args.epochs, "seconds": round(seconds, 1), "lr": 0.005, "optimizer": "sgd", "clip_grad": 5.0,
                     "val_map50_per_epoch": [round(row["val_map50"], 4) for row in result.history]},
        "test": {"torch": detection_metrics(torch_detections, targets), "onnx (serve)": detection_metrics(onnx_detections, targets),
                 "images with the same detections (torch vs onnx)": f"{same}/{len(photos)}"},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "detection_scenes.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
