"""Session creation: execution provider (CUDA when it really works, else CPU), threads, graph
optimisation level, and an optimised-graph cache next to the bundle for fast cold starts; one line
says what was chosen.

onnxruntime-gpu on a machine without a usable GPU still lists CUDAExecutionProvider as available,
logs C++ errors and silently runs on CPU; so the session's own provider list decides what is
reported, and ORT's logger is kept at errors-only."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from serve.errors import BundleError, ProviderError
from serve.manifest import sha256_file

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
OPTIMIZED_SUFFIX = ".optimized.onnx"
IO_BINDING = ("auto", "on", "off")


@dataclass(frozen=True)
class SessionConfig:
    """What users tune: device, threads (None = onnxruntime's default), optimisation level, and
    whether to save the optimised graph next to the bundle and reuse it on the next load."""

    device: str = "auto"
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    optimization: str = "all"
    cache_optimized: bool = False
    # onnxruntime's worker threads spin after each run for lower latency; off saves CPU when several
    # sessions share the cores (and keeps one session's spinning from slowing the next).
    allow_spinning: bool = True
    # IO binding: inputs copied to the session's device once and bound, outputs allocated there by
    # onnxruntime and copied back after the run. "auto": on CUDA only (on CPU plain run() is as fast).
    io_binding: str = "auto"
    # After each run the CPU memory arena gives back what the run needed beyond what it holds in use
    # (onnxruntime's memory.enable_memory_arena_shrinkage): without it, one batch of 64 x 256 tokens
    # keeps ~900 MB for the life of the process. No measurable cost at batches of 1-32 here.
    release_memory: bool = True

    def check(self) -> None:
        if self.io_binding not in IO_BINDING:
            raise ProviderError(f"io_binding {self.io_binding!r} is not one of {', '.join(IO_BINDING)}")
        if self.device not in DEVICES:
            raise ProviderError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ProviderError(f"optimization {self.optimization!r} is not one of {', '.join(OPTIMIZATION_LEVELS)}")
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ProviderError(f"{name}={value}: must be at least 1 (or None for onnxruntime's default)")


@dataclass(frozen=True)
class SessionChoice:
    session: object  # onnxruntime.InferenceSession
    provider: str
    line: str


def session_options(config: SessionConfig, level: str | None = None):
    """onnxruntime SessionOptions for `config` (optimisation `level` defaults to the config's)."""
    import onnxruntime as ort

    return _options(ort, config, level or config.optimization)


def _options(ort, config: SessionConfig, level: str):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if config.intra_op_threads:
        options.intra_op_num_threads = config.intra_op_threads
    if config.inter_op_threads:
        options.inter_op_num_threads = config.inter_op_threads
    if not config.allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return options


# onnxruntime 1.32's NCHWc layout transformer crashes the process (SIGSEGV) while creating a session
# for some float16 graphs (seen: torchvision's vit_b_16 converted to fp16, issue 4). float16 models are
# loaded without it; their CPU convolutions do not use the NCHWc layout anyway.
FLOAT16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)
# onnxruntime 1.32's CPU SkipLayerNormalization kernel (the fusion of a transformer's residual Add and
# LayerNormalization) runs 4-9x slower than the two nodes it replaces, at hidden sizes 384-1024, 1 and 2
# threads (`python benchmarks/skip_layer_norm.py`); without the fusion all-MiniLM-L6-v2 runs 10-15 % faster.
# CPU sessions skip it; CUDA keeps it.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def disabled_optimizers(float16: bool, cpu: bool = False) -> list[str]:
    """The `disabled_optimizers` argument of an InferenceSession for a float16 or other model; `cpu`:
    the session runs on the CPU provider only (serve's choice; onnxruntime's defaults otherwise)."""
    return list(FLOAT16_DISABLED_OPTIMIZERS if float16 else ()) + list(CPU_DISABLED_OPTIMIZERS if cpu else ())


def cuda_listed() -> bool:
    """onnxruntime-gpu is installed (CUDAExecutionProvider listed); whether it works is only known once a
    session tried it (create_session)."""
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


def create_session(model_path: Path, config: SessionConfig | None = None, model_sha256: str = "",
                   float16: bool = False) -> SessionChoice:
    """An InferenceSession on CUDA if the config allows it and it works, else on CPU. `float16`: the
    model computes in float16 (see FLOAT16_DISABLED_OPTIMIZERS)."""
    import onnxruntime as ort

    config = config or SessionConfig()
    config.check()
    ort.set_default_logger_severity(3)
    reason = "CUDA: onnxruntime has no CUDAExecutionProvider; install zoo[gpu] on a CUDA machine"
    if config.device in ("auto", "cuda") and CUDA in ort.get_available_providers():
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception as exc:  # missing CUDA libraries: reported below as the reason for CPU
                reason = f"CUDA: libraries could not be loaded: {exc}"
        session = _session(ort, model_path, _options(ort, config, config.optimization), [CUDA, CPU], float16)
        if session.get_providers()[0] == CUDA:
            return SessionChoice(session, CUDA, f"serve: {model_path.parent.name} on {CUDA} (GPU), "
                                                f"optimisation {config.optimization}")
        reason = "CUDA: provider listed but did not initialise (no usable GPU or driver)"
    if config.device == "cuda":
        raise ProviderError(f"device 'cuda' requested but {reason}; use device='auto' or 'cpu'")
    session, cache_note = _cpu_session(ort, model_path, config, model_sha256, float16)
    actual = session.get_providers()[0]
    threads = f"threads {config.intra_op_threads or 'default'}/{config.inter_op_threads or 'default'}"
    why = "" if config.device == "cpu" else f"; {reason}"
    return SessionChoice(session, actual, f"serve: {model_path.parent.name} on {actual} ({threads}, optimisation "
                                          f"{config.optimization}{cache_note}{why})")


def _cpu_session(ort, model_path: Path, config: SessionConfig, model_sha256: str, float16: bool):
    """With cache_optimized: reuse `<model>.optimized.onnx` when its stamp matches this model, this
    onnxruntime, this level and these disabled optimisers; otherwise optimise now and save it
    (skipped if the folder is read-only)."""
    if not config.cache_optimized:
        return _session(ort, model_path, _options(ort, config, config.optimization), [CPU], float16), ""
    optimized = model_path.with_name(model_path.stem + OPTIMIZED_SUFFIX)
    stamp_path = optimized.with_suffix(".json")
    stamp = {"model_sha256": model_sha256, "onnxruntime": ort.__version__, "optimization": config.optimization,
             "disabled_optimizers": disabled_optimizers(float16, cpu=True)}
    try:
        saved = json.loads(stamp_path.read_text())
        if {k: saved.get(k) for k in stamp} == stamp and sha256_file(optimized) == saved.get("optimized_sha256"):
            return _session(ort, optimized, _options(ort, config, "disable"), [CPU], float16), ", cached optimised graph"
    except (OSError, ValueError):
        pass
    options = _options(ort, config, config.optimization)
    tmp = optimized.with_name(f".{optimized.name}.{os.getpid()}.tmp")
    options.optimized_model_filepath = str(tmp)
    try:
        session = _session(ort, model_path, options, [CPU], float16)
        os.replace(tmp, optimized)
        stamp_tmp = stamp_path.with_name(f".{stamp_path.name}.{os.getpid()}.tmp")
        stamp_tmp.write_text(json.dumps({**stamp, "optimized_sha256": sha256_file(optimized)}))
        os.replace(stamp_tmp, stamp_path)
        return session, ", optimised graph saved"
    except OSError:  # read-only bundle: run without the cache
        tmp.unlink(missing_ok=True)
        return _session(ort, model_path, _options(ort, config, config.optimization), [CPU], float16), \
            ", optimised graph not saved (bundle folder not writable)"


def _session(ort, model_path: Path, options, providers: list[str], float16: bool = False):
    try:
        return ort.InferenceSession(str(model_path), options, providers=providers,
                                    disabled_optimizers=disabled_optimizers(float16, cpu=providers == [CPU]))
    except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BundleError(f"onnxruntime could not load {model_path}: {first}; re-export the bundle") from None
