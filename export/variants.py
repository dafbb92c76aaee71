"""Formats derived from a validated fp32 ONNX model, each checked before it is kept:

- `onnx-fp16`: float16 weights and compute, float32 inputs/outputs (onnxruntime's converter keeps the
  ops that overflow or lose too much in fp16, e.g. its default block list, in float32).
- `triton`: a Triton Inference Server model repository (`triton/NAME/config.pbtxt`,
  `triton/NAME/1/model.onnx`), its config built as the ModelConfig protobuf from Triton's own client and
  written with protobuf's text format."""

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


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise InputError("--format triton writes its config with Triton's own ModelConfig message; "
                         "install zoo[triton]") from None
    return model_config_pb2


def triton_config(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]):
    """The model's config as Triton's ModelConfig message: dynamic batching (a model exported with a fixed
    batch: max_batch_size 0 and the full shape, as Triton requires), one GPU instance."""
    pb = _model_config_pb2()
    fixed = _fixed_batch(inputs)
    config = pb.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=0 if fixed else TRITON_MAX_BATCH)
    for tensors, specs in ((config.input, inputs), (config.output, outputs)):
        for spec in specs:
            shape = spec.shape if fixed else spec.shape[1:]
            tensors.add(name=spec.name, data_type=pb.DataType.Value(TRITON_TYPES[spec.dtype]),
                        dims=[d if isinstance(d, int) else -1 for d in shape])
    if not fixed:
        config.dynamic_batching.max_queue_delay_microseconds = 5000
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_GPU)
    return config


def triton_config_text(config) -> str:
    """config.pbtxt: the message in protobuf text format, with a note on the instance kind."""
    from google.protobuf import text_format

    return ("# KIND_GPU needs a GPU; on a CPU-only Triton server change it to KIND_CPU.\n"
            + text_format.MessageToString(config))


def parse_triton_config(text: str):
    """config.pbtxt read back as Triton's ModelConfig message; a typo or an unknown field raises ExportError."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, _model_config_pb2().ModelConfig())
    except text_format.ParseError as exc:
        raise ExportError(f"the Triton config does not parse: {exc}") from None


def write_triton(bundle: Path, name: str, model_file: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> list[str]:
    """The repository layout inside the bundle; returns the files written (relative to the bundle)."""
    config = triton_config(name, inputs, outputs)
    text = triton_config_text(config)
    if parse_triton_config(text) != config:  # what Triton will read is what was built
        raise ExportError("the Triton config does not read back as the message it was written from")
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
