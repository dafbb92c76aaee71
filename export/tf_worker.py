"""ONNX -> TensorFlow SavedModel, run in its own process: `python -m export.tf_worker SPEC.json`.

TensorFlow never shares a process with the torch exporter (importing it before modules that load
triton segfaulted, see issue 4; a subprocess also returns its ~1 GB when it ends). This module must not
import torch. It converts with onnx2tf's Python API (keeping NCHW image inputs, so the signature takes
what the ONNX model takes), saves a `serving_default` signature with the ONNX input and output names,
loads the result back with `tf.saved_model.load` and runs it on the cases the parent wrote, so the
parent can compare the outputs with torch.

SPEC.json: {"onnx", "out", "scratch", "inputs": [{"name", "dtype", "shape"}], "output",
            "keep_nchw": [names], "fixed_shape": bool, "output_nchw": bool, "cases": NPZ, "results": NPZ}
Cases are named "<case index>/<input name>"; results "<case index>". Prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _prepare(spec: dict) -> Path:
    """The ONNX graph onnx2tf is given: fixed shapes folded by onnxslim when asked (text encoders do
    not convert with dynamic batch/sequence), and ReduceL2 spelled as Sqrt(ReduceSum(x*x)): onnx2tf
    1.29 passes ReduceL2's axis to tf.norm as a numpy integer, which TF 2.21 rejects."""
    import onnx
    from onnx import helper

    model = onnx.load(spec["onnx"])
    if spec["fixed_shape"]:
        import onnxslim

        shapes = {i["name"]: i["shape"] for i in spec["inputs"]}
        for graph_input in model.graph.input:
            for dim, size in zip(graph_input.type.tensor_type.shape.dim, shapes[graph_input.name]):
                dim.ClearField("dim_param")
                dim.dim_value = int(size)
        model = onnxslim.slim(model)
    nodes = []
    for node in model.graph.node:
        if node.op_type != "ReduceL2":
            nodes.append(node)
            continue
        square, total = f"{node.output[0]}__square", f"{node.output[0]}__sum"
        reduce_sum = helper.make_node("ReduceSum", [square, *node.input[1:]], [total], name=f"{node.name}__sum")
        reduce_sum.attribute.extend(a for a in node.attribute if a.name in ("keepdims", "noop_with_empty_axes"))
        nodes += [helper.make_node("Mul", [node.input[0], node.input[0]], [square], name=f"{node.name}__square"),
                  reduce_sum, helper.make_node("Sqrt", [total], list(node.output), name=f"{node.name}__sqrt")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    prepared = Path(spec["scratch"]) / "prepared.onnx"
    onnx.save(model, str(prepared))
    return prepared


def convert(spec: dict) -> dict:
    start = time.perf_counter()
    prepared = _prepare(spec)
    import numpy as np
    import onnx2tf
    import tensorflow as tf
    import tf_keras

    names = [i["name"] for i in spec["inputs"]]
    keras_model = onnx2tf.convert(
        input_onnx_file_path=str(prepared), output_folder_path=str(Path(spec["scratch"]) / "onnx2tf"),
        disable_model_save=True, non_verbose=True, verbosity="error", not_use_onnxsim=True,
        keep_ncw_or_nchw_or_ncdhw_input_names=spec["keep_nchw"] or None,
        keep_shape_absolutely_input_names=names if spec["fixed_shape"] else None)
    order = [t.name.split(":")[0] for t in keras_model.inputs]
    if sorted(order) != sorted(names):
        raise SystemExit(f"onnx2tf renamed the inputs: {order}, expected {names}")
    signature = [tf.TensorSpec([None if isinstance(d, str) else d for d in i["shape"]], i["dtype"], name=i["name"])
                 for i in spec["inputs"]]
    output = spec["output"]

    def serving(*tensors):
        by_name = dict(zip(names, tensors))
        result = keras_model([by_name[n] for n in order])
        result = result[0] if isinstance(result, (list, tuple)) else result
        if spec.get("output_nchw"):  # onnx2tf lays 4-D outputs out NHWC; the signature keeps ONNX's NCHW
            result = tf.transpose(result, [0, 3, 1, 2])
        return {output: result}

    archive = tf_keras.export.ExportArchive()
    archive.track(keras_model)
    archive.add_endpoint("serving_default", tf.function(serving, input_signature=signature))
    archive.write_out(spec["out"])
    converted = time.perf_counter() - start

    endpoint = tf.saved_model.load(spec["out"]).signatures["serving_default"]
    cases = np.load(spec["cases"])
    indices = sorted({key.split("/")[0] for key in cases.files}, key=int)
    results = {}
    for index in indices:
        feeds = {name: tf.constant(cases[f"{index}/{name}"]) for name in names}
        results[index] = endpoint(**feeds)[output].numpy()
    np.savez(spec["results"], **results)
    inputs, outputs = endpoint.structured_input_signature[1], endpoint.structured_outputs
    return {"seconds_convert": converted, "seconds_total": time.perf_counter() - start,
            "signature": {"inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in inputs.items()},
                          "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in outputs.items()}}}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        report = convert(spec)
    except Exception as exc:  # onnx2tf and TensorFlow raise many types; the parent reports the last line
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        print(f"{type(exc).__name__}: {' '.join(lines[:2]) or 'no message'}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(report))


if __name__ == "__main__":
    main()
