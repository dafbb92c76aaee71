"""onnxruntime's SkipLayerNormFusion on CPU: the fused SkipLayerNormalization kernel against the Add +
LayerNormalization it replaces, on a synthetic stack of 12 (residual Add, LayerNormalization) pairs at
hidden sizes 384/768/1024, 1 and 2 threads, and on a text bundle's whole model (optional), each pair of
sessions interleaved call by call. serve.providers disables the fusion on CPU because of this.

    python benchmarks/skip_layer_norm.py [--bundle BUNDLE_DIR] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from serve.providers import SessionConfig, session_options

FUSION = "SkipLayerNormFusion"


def residual_norm_stack(hidden: int, layers: int = 12) -> bytes:
    """`layers` times: y = LayerNormalization(x + r), the pattern SkipLayerNormFusion rewrites."""
    nodes, weights, x = [], [], "x"
    for i in range(layers):
        weights += [numpy_helper.from_array(np.ones(hidden, np.float32), f"gamma{i}"),
                    numpy_helper.from_array(np.zeros(hidden, np.float32), f"beta{i}")]
        nodes += [helper.make_node("Add", [x, "r"], [f"sum{i}"]),
                  helper.make_node("LayerNormalization", [f"sum{i}", f"gamma{i}", f"beta{i}"], [f"y{i}"], axis=-1,
                                   epsilon=1e-12)]
        x = f"y{i}"
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "sequence", hidden]) for n in ("x", "r")]
    graph = helper.make_graph(nodes, "residual_norm", inputs, [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
                              weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def fused_vs_plain(model: bytes | str, feeds: dict[str, np.ndarray], threads: int, repeats: int) -> dict[str, float]:
    options = session_options(SessionConfig(device="cpu", intra_op_threads=threads, allow_spinning=False))
    sessions = {"fused": ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]),
                "plain": ort.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                              disabled_optimizers=[FUSION])}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(3):
        for session in sessions.values():
            session.run(None, feeds)
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    fused, plain = (statistics.median(times[name]) * 1000 for name in ("fused", "plain"))
    return {"fused_ms": round(fused, 3), "plain_ms": round(plain, 3), "fused_over_plain": round(fused / plain, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a text bundle (manifest.json + model.onnx) to time whole")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for threads in (1, 2):
        for hidden in (384, 768, 1024):
            model = residual_norm_stack(hidden)
            for batch, sequence in ((1, 16), (32, 92)):
                feeds = {n: rng.standard_normal((batch, sequence, hidden)).astype(np.float32) for n in ("x", "r")}
                rows.append({"model": "12 x (Add, LayerNormalization)", "threads": threads, "hidden": hidden,
                             "shape": [batch, sequence], **fused_vs_plain(model, feeds, threads, args.repeats)})
                print(json.dumps(rows[-1]))
    if args.bundle:
        names = [spec["name"] for spec in json.loads((args.bundle / "manifest.json").read_text())["inputs"]]
        for batch, sequence in ((1, 16), (32, 92)):
            feeds = {name: np.ones((batch, sequence), np.int64) for name in names}
            feeds[names[0]] = rng.integers(1000, 5000, (batch, sequence))
            rows.append({"model": str(args.bundle), "threads": 2, "shape": [batch, sequence],
                         **fused_vs_plain(str(args.bundle / "model.onnx"), feeds, 2, args.repeats)})
            print(json.dumps(rows[-1]))
    report = {"onnxruntime": ort.__version__, "fusion": FUSION, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "skip_layer_norm.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
