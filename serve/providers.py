"""Execution-provider choice: CUDA when it really works, else CPU, and one line saying which.

onnxruntime-gpu on a machine without a usable GPU still lists CUDAExecutionProvider as available,
logs C++ errors and silently runs on CPU; so the session's own provider list decides what is
reported, and ORT's logger is kept at errors-only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serve.errors import BundleError, ProviderError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class SessionChoice:
    session: object  # onnxruntime.InferenceSession
    provider: str
    line: str


def create_session(model_path: Path, device: str = "auto", threads: int | None = None) -> SessionChoice:
    """An InferenceSession on CUDA if `device` allows it and it works, else on CPU."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ProviderError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    reason = "CUDA: onnxruntime has no CUDAExecutionProvider; install zoo[gpu] on a CUDA machine"
    if device in ("auto", "cuda") and CUDA in ort.get_available_providers():
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception as exc:  # missing CUDA libraries: reported below as the reason for CPU
                reason = f"CUDA: libraries could not be loaded: {exc}"
        session = _session(ort, model_path, options, [CUDA, CPU])
        if session.get_providers()[0] == CUDA:
            return SessionChoice(session, CUDA, f"serve: {model_path.parent.name} on {CUDA} (GPU)")
        reason = "CUDA: provider listed but did not initialise (no usable GPU or driver)"
    if device == "cuda":
        raise ProviderError(f"device 'cuda' requested but {reason}; use device='auto' or 'cpu'")
    session = _session(ort, model_path, options, [CPU])
    actual = session.get_providers()[0]
    why = "" if device == "cpu" else f" ({reason})"
    return SessionChoice(session, actual, f"serve: {model_path.parent.name} on {actual}{why}")


def _session(ort, model_path: Path, options, providers: list[str]):
    try:
        return ort.InferenceSession(str(model_path), options, providers=providers)
    except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BundleError(f"onnxruntime could not load {model_path}: {first}; re-export the bundle") from None
