"""The request side of the HTTP server that needs no web framework: JSON bodies parsed strictly, and the
KServe v2 tensor protocol (datatypes, tensor metadata, request tensors checked against the limits)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from serve.predictor import Predictor

# KServe v2 datatype names of the manifest dtypes, and back
DATATYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "uint8": "UINT8", "int8": "INT8"}
NUMPY = {v: k for k, v in DATATYPES.items()}


class HttpError(Exception):
    """A request that fails alone, with its HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(data: bytes) -> Any:
    """The parsed body; 400 for anything that is not standard JSON (NaN and Infinity included) or that
    nests deeper than Python's parser goes."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HttpError(400, "request body nests JSON too deeply") from None


def tensor_metadata(specs) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": DATATYPES.get(s.dtype, s.dtype.upper()),
             "shape": [d if isinstance(d, int) else -1 for d in s.shape]} for s in specs]


def infer_inputs(payload: Any, predictor: Predictor) -> dict[str, np.ndarray]:
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise HttpError(400, 'expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    feeds = {}
    for index, tensor in enumerate(payload["inputs"]):
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= set(tensor):
            raise HttpError(400, f"inputs[{index}]: expected an object with name, shape, datatype and data")
        dtype = NUMPY.get(str(tensor["datatype"]))
        if dtype is None:
            raise HttpError(400, f"inputs[{index}].datatype {tensor['datatype']!r} is not one of {sorted(NUMPY)}")
        shape = tensor["shape"]
        if not (isinstance(shape, list) and shape and all(type(d) is int and d >= 0 for d in shape)):
            raise HttpError(400, f"inputs[{index}].shape {shape!r}: expected a list of sizes (integers >= 0)")
        predictor.limits.inputs(shape[0])
        try:
            array = np.asarray(tensor["data"], dtype=dtype).reshape(shape)
        except (ValueError, TypeError, OverflowError) as exc:
            raise HttpError(400, f"inputs[{index}] ({tensor['name']}): data does not fit {tensor['datatype']} of "
                                 f"shape {shape}: {exc}") from None
        feeds[str(tensor["name"])] = array
    return feeds
