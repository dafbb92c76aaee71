"""The formats a bundle holds beside its fp32 ONNX model (`onnx`, always built first and checked against
torch): one module per format in this package, each with `build(context)`, registered here by name. Each
is built and checked against torch in the staging folder; a format that fails leaves no file behind and
a failed row in the report. Importable without torch: the command line reads its choices from here.

Adding a format: its module (build, check, report row, manifest section) and one line in FORMATS.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from export.formats.common import Built, DerivedContext

ONNX_FILE = "model.onnx"
FP16_FILE = "model.fp16.onnx"
INT8_FILE = "model.int8.onnx"


@dataclass(frozen=True)
class Format:
    name: str
    module: str | None  # export.formats.<module> holds build(context); None: the base ONNX model
    outputs: tuple[str, ...]  # what it writes in the bundle (files and folders), removed again when it fails
    needs: tuple[str, ...] = ()  # the formats it is made from: asked for with it
    description: str = ""


FORMATS: dict[str, Format] = {fmt.name: fmt for fmt in (
    Format("onnx", None, (ONNX_FILE,), description="fp32 ONNX, dynamic axes (export.onnx_export)"),
    Format("onnx-fp16", "onnx_fp16", (FP16_FILE, f"{FP16_FILE}.data"), description="export.variants.to_fp16"),
    Format("onnx-int8", "onnx_int8", (INT8_FILE, f"{INT8_FILE}.data"),
           description="export.quantize (+ export.calibration for image models)"),
    Format("savedmodel", "savedmodel", ("savedmodel",), description="export.savedmodel (onnx2tf in a subprocess)"),
    Format("tf-serving", "tf_serving", ("tf_serving",), needs=("savedmodel",),
           description="the SavedModel as tf_serving/NAME/1/, hard-linked where the filesystem allows"),
    Format("triton", "triton", ("triton",), description="triton/NAME/: export.variants.write_triton"),
    Format("openvino", "openvino", ("openvino",),
           description="OpenVINO IR in OpenVINO Model Server's layout, and the OpenVINO precisions serve may run"),
)}
FORMAT_NAMES = tuple(FORMATS)


@dataclass(frozen=True)
class FormatOptions:
    """Settings of the derived formats."""

    calibration: Path | None = None  # onnx-int8 of image models: a folder of images (default: offline set)
    # Every format at this fixed input shape, no dynamic axes: (batch,) for images, (batch, sequence) for
    # text. Text SavedModels are always fixed-shape: this, or 1 x max_length.
    static_shape: tuple[int, ...] | None = None

    @property
    def batch(self) -> int:
        """The rows one run of an exported model takes in its checks: the static batch, or 1."""
        return self.static_shape[0] if self.static_shape else 1


def with_needs(formats: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`formats` and every format they are made from, in FORMATS order."""
    wanted = set(formats)
    for name in formats:
        wanted.update(FORMATS[name].needs)
    return tuple(name for name in FORMATS if name in wanted)


def builder(fmt: Format) -> Callable[[DerivedContext], Built]:
    """The format's build(context): (report row, manifest sections, files written). Imports torch."""
    return importlib.import_module(f"export.formats.{fmt.module}").build
