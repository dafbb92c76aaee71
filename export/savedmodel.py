"""`savedmodel` and `tf-serving`: a TensorFlow SavedModel converted from the validated ONNX model,
loaded back and compared with torch, and the versioned folder TF Serving serves.

    savedmodel/                 saved_model.pb, variables/ ; signature `serving_default`, named like the
                                ONNX model's inputs and output (images NCHW, dynamic batch)
    tf_serving/NAME/1/          the same SavedModel where `tensorflow_model_server --model_base_path`
                                expects it

Conversion runs in a subprocess (export.tf_worker). Image models keep a dynamic batch; text encoders
convert only at a fixed shape (`--static-shape BATCH,SEQ`, default 1 x max_length; longer inputs must
be truncated and shorter ones padded to it, with attention_mask 0 on the padding), which the manifest
declares; segmentation models at 1 x 3 x resize x resize (NCHW logits out, like the ONNX model)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch

from export.files import files_under, link_tree
from export.parity import ParityCase, at_static_shape
from serve.manifest import TensorSpec
from zoo.errors import ExportError, InputError
from zoo.preprocess import preprocess_images, square
from zoo.reference import Comparison, asset_path, compare_outputs
from zoo.schema import ModelEntry
from zoo.tolerances import EXPORT_ATOL

SAVEDMODEL_DIR = "savedmodel"
TF_SERVING_DIR = "tf_serving"
TF_REQUIREMENTS = ("tensorflow", "tf_keras", "onnx2tf", "onnxslim")
INSTALL_HINT = ("pip install 'zoo[tf]' && pip install --no-deps onnx2tf==1.29.24 'tf-keras>=2.21,<2.22' "
                "(onnx2tf pins old exact releases of TensorFlow and numpy, hence --no-deps)")
WORKER_TIMEOUT_S = 1800


def check_available() -> None:
    missing = [name for name in TF_REQUIREMENTS if find_spec(name) is None]
    if missing:
        raise InputError(f"--format savedmodel/tf-serving needs {', '.join(missing)}; install them with: {INSTALL_HINT}")


@dataclass(frozen=True)
class SavedModelResult:
    results: list[Comparison]
    inputs: list[dict]  # name, dtype, shape (None: dynamic), layout
    outputs: list[dict]
    seconds: float
    note: str = ""  # why the shape is not the ONNX model's, when it is not


class _ConversionFailed(ExportError):
    """onnx2tf or TensorFlow rejected the graph (as opposed to a timeout or a numeric disagreement)."""


def write_savedmodel(onnx_path: Path, out: Path, torch_model: torch.nn.Module, entry: ModelEntry,
                     cases: list[ParityCase], inputs: list[TensorSpec], output_name: str,
                     pad_id: int = 0) -> SavedModelResult:
    """Convert, load back, and compare every case with torch; ExportError (with every diff) otherwise.
    A model exported with a static shape keeps it. Otherwise image models are converted with a dynamic
    batch or, when onnx2tf cannot convert that graph (seen: ConvNeXt, whose exported graph computes
    indices from the batch size), with a fixed batch of 1; text encoders at 1 x max_length; segmentation
    models at 1 x 3 x resize x resize."""
    check_available()
    static = all(isinstance(d, int) for spec in inputs for d in spec.shape)
    if entry.output.kind == "segmentation":
        return _segmentation(onnx_path, out, torch_model, entry, cases, inputs, output_name)
    if entry.modality == "text":
        shape = tuple(inputs[0].shape) if static else (1, entry.input.max_length)
        specs = [{"name": i.name, "dtype": i.dtype, "shape": list(shape)} for i in inputs]
        return _convert(onnx_path, out, torch_model, entry, at_static_shape(cases, shape, pad_id), specs, output_name)
    specs = [{"name": i.name, "dtype": i.dtype, "shape": [None if isinstance(d, str) else d for d in i.shape]}
             for i in inputs]
    try:
        return _convert(onnx_path, out, torch_model, entry, cases, specs, output_name)
    except _ConversionFailed as dynamic:
        if static:
            raise
        shutil.rmtree(out, ignore_errors=True)
        fixed = [{**spec, "shape": [1, *spec["shape"][1:]]} for spec in specs]
        try:
            result = _convert(onnx_path, out, torch_model, entry, at_static_shape(cases, (1,)), fixed, output_name)
        except _ConversionFailed as exc:
            raise ExportError(f"{dynamic}; and with a fixed batch of 1: {str(exc).split(': ', 1)[-1]}") from None
        reason = str(dynamic).split(": ", 1)[-1]
        return SavedModelResult(result.results, result.inputs, result.outputs, result.seconds,
                                f"fixed batch 1: the dynamic-batch graph did not convert ({reason})")


def _segmentation(onnx_path: Path, out: Path, torch_model: torch.nn.Module, entry: ModelEntry,
                  cases: list[ParityCase], inputs: list[TensorSpec], output_name: str) -> SavedModelResult:
    """Segmentation graphs take any height and width, which onnx2tf 1.29 does not convert (IndexError);
    they convert at a fixed 1 x 3 x resize x resize, checked on the square parity cases and a photo
    resized and center-cropped to that square (what a TF Serving client then sends)."""
    side = entry.input.resize
    at_side = [case for case in at_static_shape(cases, (1,)) if tuple(case.inputs["pixel_values"].shape[2:]) == (side, side)]
    photo = preprocess_images(square(entry.input), [asset_path("flower.jpg")])
    at_side.append(ParityCase(f"photo cropped to {side}x{side}", {"pixel_values": photo}, real=True))
    specs = [{"name": inputs[0].name, "dtype": inputs[0].dtype, "shape": [1, 3, side, side]}]
    result = _convert(onnx_path, out, torch_model, entry, at_side, specs, output_name, output_nchw=True)
    return dataclasses.replace(result, note=f"fixed 1x3x{side}x{side}: resize and crop images to {side}x{side}; "
                                            "the any-size graph does not convert (onnx2tf: IndexError)")


def _convert(onnx_path: Path, out: Path, torch_model: torch.nn.Module, entry: ModelEntry, cases: list[ParityCase],
             specs: list[dict], output_name: str, output_nchw: bool = False) -> SavedModelResult:
    fixed_shape = all(isinstance(d, int) for spec in specs for d in spec["shape"])
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".savedmodel.") as scratch:
        scratch = Path(scratch)
        np.savez(scratch / "cases.npz", **{f"{k}/{name}": t.numpy() for k, case in enumerate(cases)
                                           for name, t in case.inputs.items()})
        spec = {"onnx": str(onnx_path), "out": str(out), "scratch": str(scratch), "inputs": specs,
                "output": output_name, "keep_nchw": [s["name"] for s in specs] if entry.modality == "image" else [],
                "fixed_shape": fixed_shape, "output_nchw": output_nchw, "cases": str(scratch / "cases.npz"),
                "results": str(scratch / "results.npz")}
        (scratch / "spec.json").write_text(json.dumps(spec))
        try:
            done = subprocess.run([sys.executable, "-m", "export.tf_worker", str(scratch / "spec.json")],
                                  capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExportError(f"the SavedModel conversion did not finish in {WORKER_TIMEOUT_S} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]  # the worker's one-line summary
            raise _ConversionFailed(f"onnx2tf/TensorFlow could not convert {entry.id} (exit {done.returncode}): {last}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        actual = np.load(scratch / "results.npz")
        results = []
        for k, case in enumerate(cases):
            with torch.inference_mode():
                expected = torch_model(*case.inputs.values()).float().numpy()
            results.append(compare_outputs(entry, case.label, actual[str(k)], expected, EXPORT_ATOL["float32"]))
    failing = [c.line() for c in results if not c.ok]
    if failing:
        raise ExportError("the SavedModel disagrees with torch: " + "; ".join(failing))
    layout = "NCHW" if entry.modality == "image" else None
    signature = report["signature"]
    described_inputs = [{"name": s["name"], "dtype": s["dtype"], "shape": s["shape"], "layout": layout} for s in specs]
    if sorted(signature["inputs"]) != sorted(s["name"] for s in specs) or list(signature["outputs"]) != [output_name]:
        raise ExportError(f"the SavedModel signature is not named like the ONNX model: {signature}")
    dtype, shape = signature["outputs"][output_name]
    return SavedModelResult(results, described_inputs, [{"name": output_name, "dtype": dtype, "shape": shape}],
                            report["seconds_total"])


def write_tf_serving(bundle: Path, name: str) -> list[str]:
    """tf_serving/NAME/1/: the bundle's SavedModel (hard-linked where possible), the layout TF Serving loads."""
    source = bundle / SAVEDMODEL_DIR
    if not (source / "saved_model.pb").is_file():
        raise ExportError("tf-serving lays out the SavedModel, which was not written (see the savedmodel row)")
    target = bundle / TF_SERVING_DIR / name / "1"
    link_tree(source, target)
    return files_under(bundle, target)
