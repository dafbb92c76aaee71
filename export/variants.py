"""Formats derived from a validated fp32 ONNX model, each checked before it is kept:

- `onnx-fp16`: float16 weights and compute, float32 inputs/outputs (onnxruntime's converter keeps the
  ops that overflow or lose too much in fp16, e.g. its default block list, in float32).
- `triton`: a Triton Inference Server model repository (`triton/NAME/config.pbtxt`,
  `triton/NAME/1/model.onnx`), its config parsed with the ModelConfig protobuf from Triton's own client."""

from __future__ import annotations

from pathlib import Path

import onnx

from export.files import link_or_copy
from export.onnx_export import external_data_file, save_model
from serve.manifest import TensorSpec
from zoo.errors import ExportError, InputError

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
TRITON_MAX_BATCH = 32


def to_fp16(source: Path, target: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    try:
        converted = OnnxModel(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True))
        converted.topological_sort()  # the converter appends its input casts at the end of the graph
    except RuntimeError as exc:  # "Graph is not a DAG": detectors, whose If subgraph values it casts outside
        raise ExportError(f"onnxruntime's float16 converter failed: {str(exc).splitlines()[0]}") from None
    save_model(converted.model, target)
    onnx.checker.check_model(str(target))


def _fixed_batch(specs: list[TensorSpec]) -> bool:
    return isinstance(specs[0].shape[0], int)


def _dims(spec: TensorSpec, with_batch: bool) -> str:
    shape = spec.shape if with_batch else spec.shape[1:]
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape) + " ]"


def triton_config(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> str:
    """config.pbtxt: dynamic batching (a model exported with a fixed batch: max_batch_size 0 and the
    full shape, as Triton requires); GPU instances (on a CPU-only server use KIND_CPU, see comment)."""
    fixed = _fixed_batch(inputs)

    def tensors(kind: str, specs: list[TensorSpec]) -> str:
        return f"{kind} [\n" + ",\n".join(
            f'  {{\n    name: "{s.name}"\n    data_type: {TRITON_TYPES[s.dtype]}\n    dims: {_dims(s, fixed)}\n  }}'
            for s in specs) + "\n]\n"
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {0 if fixed else TRITON_MAX_BATCH}\n'
            + tensors("input", inputs) + tensors("output", outputs)
            + ("" if fixed else "dynamic_batching {\n  max_queue_delay_microseconds: 5000\n}\n")
            + "# KIND_GPU needs a GPU; on a CPU-only Triton server change it to KIND_CPU.\n"
            + "instance_group [\n  {\n    count: 1\n    kind: KIND_GPU\n  }\n]\n")


def parse_triton_config(text: str):
    """The config as Triton's ModelConfig message; a typo or an unknown field raises ExportError."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise InputError("--format triton checks its config with Triton's client; install zoo[triton]") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ExportError(f"the generated Triton config does not parse: {exc}") from None


def write_triton(bundle: Path, name: str, model_file: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> list[str]:
    """The repository layout inside the bundle; returns the files written (relative to the bundle)."""
    text = triton_config(name, inputs, outputs)
    config = parse_triton_config(text)
    batch = 0 if _fixed_batch(inputs) else TRITON_MAX_BATCH
    if config.max_batch_size != batch or [i.name for i in config.input] != [s.name for s in inputs]:
        raise ExportError("the Triton config does not describe the exported model's inputs")
    folder = bundle / "triton" / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(text)
    link_or_copy(bundle / model_file, folder / "1" / "model.onnx")
    written = [f"triton/{name}/config.pbtxt", f"triton/{name}/1/model.onnx"]
    data = external_data_file(bundle / model_file)
    if data:  # the graph names its weights file relative to itself: model.onnx.data
        link_or_copy(data, folder / "1" / data.name)
        written.append(f"triton/{name}/1/{data.name}")
    return written
