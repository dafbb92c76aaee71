"""Micro-batching under concurrency: N client threads each sending single images, (a) calling the
shared predictor directly, (b) through the MicroBatcher; same requests, same process, one after
the other, repeated and interleaved. Reports throughput and p50/p99 latency of each and the ratio,
and the ceiling of that ratio on this machine: batching saves only model time, so with per-image
preprocessing P, a run of one image R1 and a batched run costing RB per image, no batcher can give
more than (P + R1) / (P + RB) (measured serially, interleaved, in the same process).

    python benchmarks/serve_concurrency.py BUNDLE_DIR [--clients 16] [--requests 320]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import serve
from serve.batching import MicroBatcher
from serve.preprocess import preprocess_image_sized

PHOTO = Path(__file__).resolve().parents[1] / "zoo" / "assets" / "flower.jpg"


def run(call, clients: int, requests: int) -> tuple[float, list[float]]:
    image = PHOTO.read_bytes()

    def one(_: int) -> float:
        start = time.perf_counter()
        call(image)
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(requests)))
    return requests / (time.perf_counter() - start), latencies


def batching_ceiling(predictor: serve.Predictor, batch: int, repeats: int = 50) -> dict[str, float]:
    """Per-image preprocessing, run at batch 1, run at `batch` per image (medians, ms) and the ratio."""
    image = PHOTO.read_bytes()
    pixels, _ = preprocess_image_sized(predictor.manifest.preprocessing, image)
    name = predictor.input_names[0]
    many = np.repeat(pixels[None], batch, axis=0)  # built once: copying the batch is not model time
    steps = {"preprocess": lambda: preprocess_image_sized(predictor.manifest.preprocessing, image),
             "run_batch_1": lambda: predictor.run({name: pixels[None]}),
             f"run_batch_{batch}": lambda: predictor.run({name: many})}
    times: dict[str, list[float]] = {step: [] for step in steps}
    for _ in range(repeats):
        for step, call in steps.items():
            start = time.perf_counter()
            call()
            times[step].append(time.perf_counter() - start)
    pre, one, many = (statistics.median(times[step]) * 1000 for step in steps)
    return {"preprocess_ms": pre, "run_batch_1_ms": one, f"run_per_image_batch_{batch}_ms": many / batch,
            "throughput_ratio_ceiling": (pre + one) / (pre + many / batch)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    predictor = serve.load(args.bundle)
    batcher = MicroBatcher(predictor, args.max_batch_size, args.max_wait_ms)
    direct = lambda image: predictor.predict([image], top_k=1)  # noqa: E731
    batched = lambda image: batcher.predict(image, top_k=1)  # noqa: E731
    run(direct, args.clients, 32)  # warm-up of both paths
    run(batched, args.clients, 32)
    results = {"direct": [], "batched": []}
    latencies = {"direct": [], "batched": []}
    for _ in range(args.repeats):
        for name, call in (("direct", direct), ("batched", batched)):
            throughput, values = run(call, args.clients, args.requests)
            results[name].append(throughput)
            latencies[name] += values
    batcher.close()
    report = {"bundle": str(args.bundle), "clients": args.clients, "requests": args.requests, "repeats": args.repeats,
              "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
              "mean_batch": sum(batcher.stats.sizes) / max(1, len(batcher.stats.sizes))}
    for name in results:
        ms = np.array(latencies[name]) * 1000
        report[name] = {"requests_per_s": statistics.median(results[name]), "p50_ms": float(np.percentile(ms, 50)),
                        "p99_ms": float(np.percentile(ms, 99))}
    report["throughput_ratio"] = report["batched"]["requests_per_s"] / report["direct"]["requests_per_s"]
    report["ceiling"] = batching_ceiling(predictor, args.max_batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"serve_concurrency_{args.bundle.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
