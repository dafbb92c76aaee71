"""torch -> ONNX: named dynamic axes, onnx.checker and shape inference.

The dynamo exporter is the default: the TorchScript exporter baked a traced sequence length into a
Reshape of a transformer encoder; `dynamo=True` with `dynamic_shapes` keeps the axes symbolic. Example
inputs never use a size-1 axis that is meant to be dynamic (torch.export specialises sizes 0 and 1).
Detectors go through the TorchScript exporter: torch.export cannot guard on the data-dependent number
of boxes after score thresholding and NMS (GuardOnDataDependentSymNode, torch 2.14), while torchvision's
detection code is written for tracing (its own ONNX tests use it)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from zoo.errors import ExportError

# Opset 20 has ONNX's own Gelu: onnxruntime fuses it with its bias (BiasGelu); at 18 the dynamo exporter
# writes GELU as Div/Erf/Add/Mul/Mul, which it does not fuse (all-MiniLM-L6-v2: 7 % slower at 32 x 92 tokens).
DEFAULT_OPSET = 20
# torchvision's detectors need opset >= 11 and are exported at 17 in its own tests.
TRACED_MAX_OPSET = 17
# A protobuf message cannot exceed 2 GiB: above this many bytes of weights, they go to PATH.data.
EXTERNAL_DATA_BYTES = 1_800_000_000


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def external_data_file(path: Path) -> Path | None:
    """The weights file written beside `path` when the model was saved with external data."""
    data = path.with_name(path.name + ".data")
    return data if data.is_file() else None


def save_model(model, path: Path) -> None:
    """onnx.save, with the weights in PATH.data when they would not fit in one protobuf."""
    import onnx

    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size > EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, str(path))


def export_onnx(model: nn.Module, example: dict[str, torch.Tensor], dynamic_axes: dict[str, dict[int, str]],
                output_names: list[str], path: Path, opset: int = DEFAULT_OPSET, tracer: bool = False) -> int:
    """Export `model(*example.values())` to `path`, then run onnx.checker (full) and shape inference.
    Weights over EXTERNAL_DATA_BYTES are written to PATH.data (ONNX external data). `tracer`: the
    TorchScript exporter (`dynamic_axes` may then name output axes too), at opset 17 at most. Returns
    the opset written."""
    if tracer:
        opset = min(opset, TRACED_MAX_OPSET)
        options = {"dynamo": False, "dynamic_axes": dynamic_axes}
    else:
        for name, tensor in example.items():
            for axis in dynamic_axes.get(name, {}):
                if tensor.shape[axis] < 2:
                    raise ExportError(f"example input {name} has size {tensor.shape[axis]} on dynamic axis {axis}; "
                                      "use at least 2 so the exporter keeps the axis symbolic")
        dims: dict[str, torch.export.Dim] = {}
        dynamic_shapes = tuple(
            {axis: dims.setdefault(label, torch.export.Dim(label, min=1)) for axis, label in dynamic_axes.get(name, {}).items()}
            for name in example
        )
        options = {"dynamo": True, "dynamic_shapes": dynamic_shapes,
                   "external_data": weight_bytes(model) > EXTERNAL_DATA_BYTES}
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers():
            warnings.simplefilter("ignore")  # (tracer: TracerWarnings about Python values, expected for detectors)
            torch.onnx.export(model, tuple(example.values()), str(path), input_names=list(example),
                              output_names=list(output_names), opset_version=opset, **options)
    except Exception as exc:  # the exporter raises many types; all mean "this model did not export"
        exporter = "torch.onnx.export (TorchScript)" if tracer else "torch.onnx.export"
        raise ExportError(f"{exporter} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    _check(path)
    return opset


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), strict_mode=True)
    except Exception as exc:
        raise ExportError(f"exported graph failed onnx.checker / shape inference: {exc}") from exc


@contextlib.contextmanager
def _quiet_loggers():
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
