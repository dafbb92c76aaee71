"""Where int8 gains and where it does not, on a CNN bundle with model.onnx and model.int8.onnx
(`zoo export NAME --format onnx-int8`): onnxruntime's profiler times every convolution of both models
at batch 1 and the times are summed per kind (the stem, depthwise, other convolutions); then the whole
models' int8 / fp32 latency ratio, measured two ways in one run: alternating call by call (as `zoo
bench` does) and in blocks of consecutive calls per model (a server running one model).

    python benchmarks/int8_layers.py BUNDLE_DIR [--threads 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from serve.providers import SessionConfig, session_options


def conv_kinds(path: Path) -> list[str]:
    """Each Conv node's kind, in graph order: "stem" (the first), "depthwise" (group > 1), "other"."""
    kinds = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kinds.append("stem" if not kinds else "depthwise" if group > 1 else "other")
    return kinds


def session(path: Path, threads: int, profile: str | None = None) -> ort.InferenceSession:
    options = session_options(SessionConfig(device="cpu", intra_op_threads=threads, allow_spinning=False))
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def conv_times(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int, scratch: Path) -> list[float]:
    """Median kernel time (ms) of each convolution (Conv or QLinearConv), in execution order."""
    profiled = session(path, threads, str(scratch / path.stem))
    for _ in range(runs):
        profiled.run(None, feeds)
    trace = Path(profiled.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_node: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["args"]["op_name"] in ("Conv", "QLinearConv"):
            per_node[event["name"]].append(event["dur"] / 1000)
    return [statistics.median(times) for times in per_node.values()]  # dicts keep first-seen (execution) order


def latency_ratio(sessions: dict[str, ort.InferenceSession], feeds: dict[str, np.ndarray], block: int, rounds: int) -> float:
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, model in sessions.items():
            for _ in range(block):
                start = time.perf_counter()
                model.run(None, feeds)
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["int8"]) / statistics.median(times["fp32"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    paths = {"fp32": args.bundle / "model.onnx", "int8": args.bundle / "model.int8.onnx"}
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    spec = manifest["inputs"][0]
    shape = [1, *(d if isinstance(d, int) else 224 for d in spec["shape"][1:])]
    feeds = {spec["name"]: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    kinds = conv_kinds(paths["fp32"])
    with tempfile.TemporaryDirectory() as scratch:  # the profiler's traces
        times = {name: conv_times(path, feeds, args.threads, args.runs, Path(scratch)) for name, path in paths.items()}
    if not len(kinds) == len(times["fp32"]) == len(times["int8"]):
        raise SystemExit(f"convolutions do not line up: {len(kinds)} in the graph, {len(times['fp32'])} fp32 and "
                         f"{len(times['int8'])} int8 kernels ran")
    per_kind = {}
    for kind in ("stem", "depthwise", "other"):
        fp32 = sum(t for k, t in zip(kinds, times["fp32"]) if k == kind)
        int8 = sum(t for k, t in zip(kinds, times["int8"]) if k == kind)
        per_kind[kind] = {"count": kinds.count(kind), "fp32_ms": round(fp32, 3), "int8_ms": round(int8, 3),
                          "int8_over_fp32": round(int8 / fp32, 2)}
    sessions = {name: session(path, args.threads) for name, path in paths.items()}
    for model in sessions.values():
        for _ in range(10):
            model.run(None, feeds)
    report = {"bundle": str(args.bundle), "onnxruntime": ort.__version__, "threads": args.threads, "input": shape,
              "convolutions": per_kind,
              "int8_over_fp32_call_by_call": round(latency_ratio(sessions, feeds, 1, 300), 3),
              "int8_over_fp32_blocks_of_30": round(latency_ratio(sessions, feeds, 30, 10), 3)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"int8_layers_{manifest['model_id']}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
