"""OpenVINO as a second engine for a bundle's ONNX file (the `openvino` extra; never required): the same
`run(names, feeds)` / `get_inputs()` / `get_outputs()` surface the Predictor uses from onnxruntime.

The CPU plugin's own defaults are not left to chance: the precision hint is always set (f32 unless asked:
on CPUs with AVX512_BF16 or AMX the plugin computes in bf16 by default, max |diff| 0.48 on
EfficientNet-Lite0's logits, which only a bundle's own check may approve), and so are the threads and the latency
hint. Each call takes an infer request of its own from a pool (made when none is free, returned after), so
concurrent calls share the compiled model safely without paying for a new request each time."""

from __future__ import annotations

import functools
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve.errors import BundleError, ProviderError

OPENVINO = "OpenVINO CPU"
OPENVINO_FIX = "pip install 'zoo[openvino]'"
# The precision hints serve sets, by the variant they run: a bundle's fp32 file at f32 or bf16, its int8 file
# with f32 for what is not quantized. bf16 runs only where the bundle's export checked it (serve.engines).
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
PRECISIONS = tuple(sorted(set(HINTS.values())))
# Bundle kinds (postprocessing.kind) OpenVINO cannot run, and why: serve.load refuses them, zoo bench skips them.
UNSUPPORTED_KINDS = {"detection": "detectors: OpenVINO 2026.4's CPU plugin fails on their data-dependent Resize "
                                  "(it asks for petabytes)"}
# OpenVINO's element type names -> onnxruntime's, which the manifest check reads (serve.loading.check_graph)
_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)", "i32": "tensor(int32)",
          "u8": "tensor(uint8)", "i8": "tensor(int8)", "boolean": "tensor(bool)"}


@dataclass(frozen=True)
class Node:
    """An input or output as onnxruntime's NodeArg describes it: name, type, shape (str = dynamic)."""

    name: str
    type: str
    shape: list[int | str]


class OpenVinoSession:
    """A compiled OpenVINO model behind onnxruntime's session surface."""

    def __init__(self, compiled: Any):
        self.compiled = compiled
        # every name of every output (a graph output may carry several; get_any_name picks one of them)
        self._outputs = {name: port for port in compiled.outputs for name in port.get_names()}
        self._requests: queue.SimpleQueue = queue.SimpleQueue()  # idle infer requests

    def run(self, names: list[str], feeds: dict[str, Any], run_options: Any = None) -> list[Any]:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:  # a failure here is the engine's: HTTP 500, logged
            results = request.infer(feeds, share_inputs=False)
            return [results[self._outputs[name]].copy() for name in names]  # the request's buffers are reused
        finally:
            self._requests.put(request)

    def get_inputs(self) -> list[Node]:
        return [_node(port) for port in self.compiled.inputs]

    def get_outputs(self) -> list[Node]:
        """One node per name of each output: the ONNX graph's output name may be one of several OpenVINO keeps
        for a tensor (seen: DistilBERT's `logits` also named `linear_12`)."""
        return [_node(port, name) for port in self.compiled.outputs for name in sorted(port.get_names())]


def _node(port: Any, name: str | None = None) -> Node:
    shape = [int(d.get_length()) if d.is_static else f"dim{i}" for i, d in enumerate(port.get_partial_shape())]
    element = port.get_element_type().get_type_name()
    return Node(name or port.get_any_name(), _TYPES.get(element, element), shape)


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__.split("-")[0]


@functools.cache
def bf16_hardware() -> bool:
    """This CPU computes bf16 natively (AVX512_BF16 or AMX, as OpenVINO's CPU plugin reports it); elsewhere the
    plugin runs a bf16 hint at f32."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def save_ir(model_path: Path, xml_path: Path) -> None:
    """The ONNX model at `model_path` as OpenVINO IR (`xml_path` and its .bin), weights kept in f32 (OpenVINO's
    save_model compresses them to f16 unless told not to)."""
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.Core().read_model(str(model_path)), str(xml_path), compress_to_fp16=False)


def create_openvino_session(model_path: Path, threads: int | None, precision: str = "f32") -> tuple[OpenVinoSession, str]:
    """The bundle's ONNX file compiled for OpenVINO's CPU plugin with explicit settings, and the line that
    says them."""
    if precision not in PRECISIONS:
        raise ProviderError(f"OpenVINO precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    try:
        import openvino as ov
    except ImportError:
        raise ProviderError(f"engine 'openvino' needs the openvino package: {OPENVINO_FIX}") from None
    core = ov.Core()
    settings: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        settings["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = core.compile_model(core.read_model(str(model_path)), "CPU", settings)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"OpenVINO could not load {model_path}: {first}") from None
    used = compiled.get_property("INFERENCE_NUM_THREADS")
    line = (f"serve: {model_path.parent.name} on {OPENVINO} (openvino {openvino_version()}, precision {precision} "
            f"(set, not the plugin's default), threads {used}, latency hint)")
    return OpenVinoSession(compiled), line
