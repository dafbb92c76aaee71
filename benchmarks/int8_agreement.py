"""How far int8 moves a CNN's top-1 decisions, next to how far fp32 itself moves under a change no one
would notice: on the held-out views of export.calibration's default set, top-1 agreement with torch
fp32 of (a) the bundle's int8 model, (b) its fp16 model, (c) torch fp32 on the same views plus Gaussian
noise of one grey level (std 1/255 before normalisation), per photo and overall, with torch's own
top-1 probability to show how low-margin the views are.

    python benchmarks/int8_agreement.py BUNDLE_DIR [--seeds 3] [--out benchmarks/results]

The bundle must hold model.int8.onnx (zoo export NAME --format onnx-int8 [--format onnx-fp16])."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.calibration import HELD_OUT_PHOTOS, held_out_images
from serve.manifest import read_manifest
from zoo.factory import build, resolve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    entry = resolve(manifest.source["id"])
    model = build(entry, pretrained=manifest.source.get("pretrained", True))
    images = held_out_images(entry.input)[0]
    with torch.inference_mode():
        reference = model(images).numpy()
    top1 = reference.argmax(1)
    confidence = torch.softmax(torch.from_numpy(reference), 1).max(1).values.numpy()

    def agreement(logits: np.ndarray) -> np.ndarray:
        return logits.argmax(1) == top1

    engines = {}
    for variant in ("int8", "fp16"):
        if variant in manifest.variants:
            session = ort.InferenceSession(str(args.bundle / manifest.variants[variant]["file"]),
                                           providers=["CPUExecutionProvider"])
            engines[f"onnxruntime {variant}"] = agreement(session.run(None, {"pixel_values": images.numpy()})[0])
    std = torch.tensor(entry.input.std).view(1, 3, 1, 1)
    noisy = []
    for seed in range(args.seeds):
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) / 255 / std
        with torch.inference_mode():
            noisy.append(agreement(model(images + noise).numpy()))
    engines["torch fp32 + 1 grey level noise (mean of seeds)"] = np.mean(noisy, axis=0)
    per_view = len(images) // len(HELD_OUT_PHOTOS)  # five views per photo, photo by photo
    photos = [name for _, name, _ in HELD_OUT_PHOTOS]
    report = {"model": entry.id, "views": len(images), "photos": photos,
              "torch_top1_probability_median": float(np.median(confidence)),
              "overall": {name: float(np.mean(values)) for name, values in engines.items()},
              "per_photo": {photo: {name: float(np.mean(values[i * per_view:(i + 1) * per_view]))
                                    for name, values in engines.items()}
                            for i, photo in enumerate(photos)}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"int8_agreement_{entry.id}.json").write_text(json.dumps(report, indent=1) + "\n")
    names = list(engines)
    lines = [f"# int8 top-1 agreement with torch fp32: {entry.id}, {len(images)} held-out views "
             f"(median torch top-1 probability {report['torch_top1_probability_median']:.2f})", "",
             "| photo | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for photo, values in report["per_photo"].items():
        lines.append(f"| {photo} | " + " | ".join(f"{values[n]:.0%}" for n in names) + " |")
    lines.append("| **all** | " + " | ".join(f"**{report['overall'][n]:.1%}**" for n in names) + " |")
    (args.out / f"int8_agreement_{entry.id}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
