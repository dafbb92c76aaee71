"""`zoo bench`: latency percentiles and throughput of one model on every engine available, in one
process, interleaved call by call so machine noise hits all engines alike, each as a ratio to torch
eager: torch eager, raw onnxruntime (fp32 and any fp16/int8 files in the bundle), OpenVINO's CPU plugin
(fp32 and, on CPUs with bf16, bf16 on the fp32 file; the int8 file) when the `openvino` extra is installed,
the bundle's TensorFlow SavedModel when it has one and TensorFlow is installed, the `serve` predictor as
engine="auto" chooses it at each batch, on preprocessed input and end to end from raw inputs, and for text
the Optimum ONNX Runtime pipeline when `optimum` is installed. For each batch it also runs serve on each
pair auto may choose (`serve run (PAIR)`) and reports auto's run over the fastest of them (serve.engines)."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from serve.manifest import Manifest
from serve.providers import disabled_optimizers, session_options
from zoo.errors import InputError
from zoo.reference import SENTENCES, asset_path, synthetic_images

SCHEMA = "zoo-bench/1"
QUANTIZED_FILES = {"onnxruntime fp16": "model.fp16.onnx", "onnxruntime int8": "model.int8.onnx"}


@dataclass(frozen=True)
class Row:
    engine: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    items_per_s: float
    ratio_to_torch: float | None


def _texts(batch: int) -> list[str]:
    """Mixed lengths, as real traffic: the fixed sentences, some repeated into longer texts."""
    return [" ".join([SENTENCES[i % len(SENTENCES)]] * (1 + i % 5)) for i in range(batch)]


class _Sessions:
    """Everything loaded once per benchmark: raw onnxruntime sessions (fp32 and any fp16/int8 file in the
    bundle), OpenVINO's (fp32 and bf16 on the fp32 file, the int8 file) when installed, serve's predictor as
    `engine="auto"` chooses it for each batch, and, for text, Optimum's pipeline when installed."""

    def __init__(self, bundle: Path, entry, threads: int):
        import onnxruntime as ort

        import serve
        from serve.manifest import read_manifest

        # No spinning anywhere: engines run interleaved, and one session's spinning threads would slow the next.
        self.config = serve.SessionConfig(device="cpu", intra_op_threads=threads, allow_spinning=False)
        self.bundle, self.entry = bundle, entry
        self.manifest = read_manifest(bundle)
        self.predictors: dict[int, serve.Predictor] = {}
        self.pinned = _pinned(bundle, self.manifest, self.config)
        options = session_options(self.config)
        self.raw = {name: ort.InferenceSession(str(bundle / file), options, providers=["CPUExecutionProvider"],
                                               disabled_optimizers=disabled_optimizers("fp16" in name))
                    for name, file in {"onnxruntime fp32": "model.onnx", **QUANTIZED_FILES}.items()
                    if (bundle / file).is_file()}
        self.raw.update(_openvino(bundle, self.manifest, threads))
        self.optimum = _optimum_pipeline(entry, options) if entry.modality == "text" else None
        self.savedmodel = _savedmodel(bundle, self.manifest, threads)

    def predictor(self, batch: int):
        """serve's predictor with engine and variant auto, chosen for `batch` rows."""
        import serve

        if batch not in self.predictors:
            self.predictors[batch] = serve.load(self.bundle, config=self.config, batch_size=batch)
        return self.predictors[batch]

    def engines(self, batch: int, torch_model: torch.nn.Module) -> dict[str, Callable[[], Any]]:
        """One callable per engine, all on the same batch."""
        predictor = self.predictor(batch)
        if self.entry.modality == "image":
            raw_inputs: list[Any] = [asset_path("flower.jpg").read_bytes()] * batch
            feeds = {"pixel_values": synthetic_images(self.entry.input, batch).numpy()}
        else:
            raw_inputs = _texts(batch)
            feeds = predictor.preprocess(raw_inputs)
        tensors = [torch.from_numpy(v) for v in feeds.values()]

        def torch_eager() -> Any:
            with torch.inference_mode():
                return torch_model(*tensors)

        engines: dict[str, Callable[[], Any]] = {"torch eager": torch_eager}
        names = [output.name for output in self.manifest.outputs]
        for name, session in self.raw.items():
            engines[name] = lambda session=session: session.run(names, feeds)
        if self.savedmodel is not None:
            engines.update(self.savedmodel(feeds))
        engines["serve run (preprocessed)"] = lambda: predictor.run(feeds)
        for pair, pinned in self.pinned.items():
            engines[f"serve run ({pair})"] = lambda pinned=pinned: pinned.run(feeds)
        engines["serve predict (raw input)"] = lambda: predictor.predict(raw_inputs, batch_size=batch)
        if self.optimum is not None:
            engines["optimum ORT pipeline (raw input)"] = lambda: self.optimum(raw_inputs)
        return engines


def _openvino(bundle: Path, manifest: Manifest, threads: int) -> dict[str, Any]:
    """OpenVINO's sessions (serve.openvino_engine) by row name, when openvino is installed and runs this kind
    of model (not detectors): the fp32 file at f32 and, on a CPU with bf16, at bf16; the int8 file."""
    from importlib.util import find_spec

    if find_spec("openvino") is None:
        return {}
    from serve.openvino_engine import HINTS, UNSUPPORTED_KINDS, bf16_hardware, create_openvino_session

    if manifest.postprocessing.kind in UNSUPPORTED_KINDS:
        return {}
    files = {"fp32": manifest.model_file, **({"bf16": manifest.model_file} if bf16_hardware() else {}),
             **({"int8": manifest.variants["int8"]["file"]} if "int8" in manifest.variants else {})}
    return {f"openvino {variant}": create_openvino_session(bundle / file, threads, HINTS[variant])[0]
            for variant, file in files.items()}


def _pinned(bundle: Path, manifest: Manifest, config) -> dict[str, Any]:
    """serve's predictor on each pair auto may choose (fp32 and bf16 the bundle's gates allow), by pair."""
    import dataclasses

    import serve
    from serve.engines import candidates, refusal

    return {str(pair): serve.load(bundle, config=dataclasses.replace(config, engine=pair.engine), variant=pair.variant)
            for pair in candidates("auto", "auto") if refusal(manifest, pair) is None}


def auto_check(report_rows: list[Row], choices: dict[int, str]) -> list[dict[str, Any]]:
    """Per batch: what auto chose, and serve's run with auto's choice over serve's run on the fastest pair
    the bundle's gates allow (each pair's own `serve run (PAIR)` row): what choosing by a short timing costs."""
    checks = []
    for batch, choice in choices.items():
        pinned = {r.engine[len("serve run ("):-1]: r.p50_ms for r in report_rows
                  if r.batch == batch and r.engine.startswith("serve run (") and r.engine != "serve run (preprocessed)"}
        auto = next(r.p50_ms for r in report_rows if r.batch == batch and r.engine == "serve run (preprocessed)")
        fastest = min(pinned, key=pinned.get)
        checks.append({"batch": batch, "choice": choice, "allowed": list(pinned), "fastest_allowed": fastest,
                       "ratio_to_fastest_allowed": round(auto / pinned[fastest], 3)})
    return checks


def _savedmodel(bundle: Path, manifest: Manifest, threads: int) -> Callable[[dict[str, np.ndarray]], dict[str, Callable[[], Any]]] | None:
    """The bundle's SavedModel signature, when both it and TensorFlow are there. TensorFlow is imported
    after torch (the other order segfaulted with triton-loading modules, see export.tf_worker). A
    fixed-shape (text) signature runs on the same texts padded to its shape, and says so in its name."""
    from importlib.util import find_spec

    described = manifest.artifacts.get("savedmodel")
    if described is None or find_spec("tensorflow") is None:
        return None
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    endpoint = tf.saved_model.load(str(bundle / described["directory"])).signatures[described["signature"]]
    shapes = {i["name"]: i["shape"] for i in described["inputs"]}

    def engines(feeds: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
        fixed = {name: shape for name, shape in shapes.items() if all(isinstance(d, int) for d in shape)}
        if not fixed:
            tensors = {name: tf.constant(value) for name, value in feeds.items()}
            return {"tensorflow savedmodel": lambda: endpoint(**tensors)}
        batch, length = next(iter(fixed.values()))
        if any(len(value) != batch or value.shape[1] > length for value in feeds.values()):
            return {}  # this batch does not fit the fixed signature
        pad = {"input_ids": manifest.preprocessing.pad_id}  # attention_mask (and the rest): 0
        tensors = {name: tf.constant(np.pad(value, ((0, 0), (0, length - value.shape[1])), constant_values=pad.get(name, 0)))
                   for name, value in feeds.items()}
        return {f"tensorflow savedmodel (padded to {batch}x{length})": lambda: endpoint(**tensors)}

    return engines


def _optimum_pipeline(entry, options) -> Callable[[list[str]], Any] | None:
    """The best-known peer: Optimum's ORTModelForFeatureExtraction + its tokenizer + the same pooling."""
    try:
        from optimum.onnxruntime import ORTModelForFeatureExtraction
        from transformers import AutoTokenizer
    except ImportError:
        return None
    from zoo.cache import fetch

    folder = fetch(entry).directory
    model = ORTModelForFeatureExtraction.from_pretrained(str(folder), export=True, session_options=options,
                                                         provider="CPUExecutionProvider")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def run(texts: list[str]) -> Any:
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=entry.input.max_length, return_tensors="np")
        hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"][..., None].astype(hidden.dtype)
        pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True) if entry.output.normalize else pooled

    return run


def _measure(engines: dict[str, Callable[[], Any]], warmup: int, min_repeats: int, seconds: float) -> dict[str, list[float]]:
    for run in engines.values():
        for _ in range(warmup):
            run()
    timings: dict[str, list[float]] = {name: [] for name in engines}
    order = list(engines.items())
    start, round_number = time.perf_counter(), 0
    while min(len(t) for t in timings.values()) < min_repeats or time.perf_counter() - start < seconds:
        # Interleaved, every round times each engine once, starting one engine later each round: the
        # engine that follows another (whose OpenMP/onnxruntime threads may still spin) changes.
        shift = round_number % len(order)
        for name, run in order[shift:] + order[:shift]:
            begin = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - begin)
        round_number += 1
        if time.perf_counter() - start > 10 * seconds and min(len(t) for t in timings.values()) >= 5:
            break
    return timings


def bench(target: str, batches: tuple[int, ...] = (1, 8, 32), threads: int | None = None, warmup: int = 3,
          min_repeats: int = 10, seconds: float = 2.0) -> dict[str, Any]:
    """Run the benchmark for a registry model (exported to a temporary bundle, random weights when
    the real ones are not reachable) or an existing bundle folder."""
    from importlib.util import find_spec

    from export.bundle import export_bundle
    from serve.manifest import read_manifest
    from zoo.errors import FetchError
    from zoo.factory import build, resolve

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(target)
        if (path / "manifest.json").is_file():
            bundle = path
            manifest = read_manifest(bundle)
            entry = resolve(manifest.source["id"]) if not manifest.model_id.startswith("run-") else None
            if entry is None:
                raise InputError(f"{target}: benchmarking a fine-tuned run's bundle needs its run directory; "
                                 "pass the run directory instead")
        else:
            entry = resolve(target)
            bundle = Path(tmp) / "bundle"
        try:
            torch_model, pretrained = build(entry), True
        except FetchError:  # weights not reachable here: speed does not depend on their values
            torch_model, pretrained = build(entry, pretrained=False), False
        if bundle != path:  # with every pair serve's auto may choose, each checked
            formats = ("onnx", "onnx-int8", *(("openvino",) if find_spec("openvino") else ()))
            export_bundle(entry, bundle, pretrained=pretrained, formats=formats)
        sessions = _Sessions(bundle, entry, threads)
        rows: list[Row] = []
        for batch in batches:
            timings = _measure(sessions.engines(batch, torch_model), warmup, min_repeats, seconds)
            torch_p50 = float(np.median(timings["torch eager"]))
            for engine, values in timings.items():
                ms = np.array(values) * 1000
                p50 = float(np.percentile(ms, 50))
                rows.append(Row(engine, batch, round(p50, 3), round(float(np.percentile(ms, 90)), 3),
                                round(float(np.percentile(ms, 99)), 3), round(batch / (p50 / 1000), 2),
                                round(p50 / (torch_p50 * 1000), 4)))
        choices = {batch: f"{sessions.predictor(batch).engine} {sessions.predictor(batch).variant}"
                   for batch in batches}
        auto = auto_check(rows, choices)
    return {"schema": SCHEMA, "model": entry.id, "pretrained_weights": pretrained, "threads": threads, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
            "results": [asdict(r) for r in rows], "auto": auto}


def table(report: dict[str, Any]) -> list[str]:
    weights = "" if report.get("pretrained_weights", True) else (
        "; random weights: the pretrained ones were not reachable, and timings do not depend on their values")
    lines = [f"{report['model']} ({report['threads']} threads{weights})",
             f"{'engine':36} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'items/s':>9} {'vs torch':>9}"]
    for r in report["results"]:
        lines.append(f"{r['engine']:36} {r['batch']:>5} {r['p50_ms']:>9.2f} {r['p90_ms']:>9.2f} {r['p99_ms']:>9.2f} "
                     f"{r['items_per_s']:>9.1f} {r['ratio_to_torch']:>8.2f}x")
    for check in report.get("auto", []):
        lines.append(f"batch {check['batch']}: serve's auto chose {check['choice']} among {', '.join(check['allowed'])}; "
                     f"serve run / fastest allowed ({check['fastest_allowed']}) = {check['ratio_to_fastest_allowed']:.2f}x")
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(dict.fromkeys(r["engine"] for r in report["results"]))
    batches = sorted({r["batch"] for r in report["results"]})
    figure, axis = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        values = [next((r["items_per_s"] for r in report["results"] if r["engine"] == engine and r["batch"] == b), 0)
                  for b in batches]
        axis.bar([j + i * width for j in range(len(batches))], values, width, label=engine)
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    axis.set_ylabel("items / s")
    axis.set_title(f"{report['model']}, {report['threads']} threads")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=1) + "\n"
