"""Session creation: execution provider (CUDA when it really works, else CPU), threads, graph
optimisation level, and an optimised-graph cache next to the bundle for fast cold starts; one line
says what was chosen.

onnxruntime-gpu on a machine without a usable GPU still lists CUDAExecutionProvider as available,
logs C++ errors and silently runs on CPU; so the session's own provider list decides what is
reported, and ORT's logger is kept at errors-only."""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass, replace
from pathlib import Path

from serve.errors import BundleError, ProviderError
from serve.files import atomic_path, sha256_file, write_text_atomic

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
# openvino: serve.openvino_engine (the `openvino` extra), CPU only; auto: serve.engines chooses per bundle
ENGINES = ("auto", "onnxruntime", "openvino")
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
OPTIMIZED_SUFFIX = ".optimized.onnx"
IO_BINDING = ("auto", "on", "off")
CUDNN_CONV_ALGO_SEARCH = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")
# A CUDA session's CPU threads only run the few nodes left on the CPU: one thread, not a pool spinning
# over every core beside the GPU's work (and beside other sessions').
CUDA_DEFAULT_THREADS = 1
GPU_INSTALL_FIX = "pip install 'zoo[gpu]' (onnxruntime-gpu[cuda,cudnn]: the CUDA and cuDNN wheels of its build)"


@dataclass(frozen=True)
class SessionConfig:
    """What users tune: device, threads (None = onnxruntime's default), optimisation level, and
    whether to save the optimised graph next to the bundle and reuse it on the next load."""

    device: str = "auto"
    engine: str = "auto"  # serve.load: the fastest pair the bundle's checks allow (serve.engines)
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
    # keeps ~900 MB for the life of the process. It costs what the next run then allocates again: +4 %
    # at MiniLM batch 32, but +65 % at EfficientNet-Lite0 batch 8 and +9 % at resnet50 batch 8 (2 threads).
    # None: text models only (their shapes change run to run); image models run the shapes their
    # warm-up ran, and keep that plateau.
    release_memory: bool | None = None
    # CUDA provider. The GPU to run on, and how cuDNN picks convolution algorithms: onnxruntime's default,
    # EXHAUSTIVE, times every algorithm on every new input shape (each micro-batch size, each detection or
    # segmentation image size: seconds of stall per new shape); HEURISTIC asks cuDNN's heuristics once.
    cuda_device_id: int = 0
    cudnn_conv_algo_search: str = "HEURISTIC"

    def releases_memory(self, modality: str) -> bool:
        """Whether runs of a `modality` model give their arena memory back (release_memory, or its default)."""
        return self.release_memory if self.release_memory is not None else modality == "text"

    def check(self) -> None:
        if self.io_binding not in IO_BINDING:
            raise ProviderError(f"io_binding {self.io_binding!r} is not one of {', '.join(IO_BINDING)}")
        if self.device not in DEVICES:
            raise ProviderError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.engine not in ENGINES:
            raise ProviderError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.engine == "openvino" and self.device == "cuda":
            raise ProviderError("engine 'openvino' runs on the CPU here; use device='cpu' or 'auto', or engine "
                                "'onnxruntime' for CUDA")
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ProviderError(f"optimization {self.optimization!r} is not one of {', '.join(OPTIMIZATION_LEVELS)}")
        if self.cudnn_conv_algo_search not in CUDNN_CONV_ALGO_SEARCH:
            raise ProviderError(f"cudnn_conv_algo_search {self.cudnn_conv_algo_search!r} is not one of "
                                f"{', '.join(CUDNN_CONV_ALGO_SEARCH)}")
        if self.cuda_device_id < 0:
            raise ProviderError(f"cuda_device_id={self.cuda_device_id}: must be >= 0")
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


def cuda_provider_options(config: SessionConfig) -> dict[str, str]:
    """The CUDAExecutionProvider's options for `config`: the device, cuDNN's algorithm search, and an arena
    that grows by what a run asks for (the default doubles, reserving up to twice the peak on the GPU)."""
    return {"device_id": str(config.cuda_device_id), "cudnn_conv_algo_search": config.cudnn_conv_algo_search,
            "arena_extend_strategy": "kSameAsRequested"}


def cuda_providers(config: SessionConfig) -> list:
    """The providers argument of a CUDA session: CUDA with its options, CPU for what CUDA lacks."""
    return [(CUDA, cuda_provider_options(config)), CPU]


def cuda_session_config(config: SessionConfig) -> SessionConfig:
    """`config` for a CUDA session: CUDA_DEFAULT_THREADS CPU threads unless set, not spinning."""
    return replace(config, intra_op_threads=config.intra_op_threads or CUDA_DEFAULT_THREADS,
                   inter_op_threads=config.inter_op_threads or 1, allow_spinning=False)


def cuda_libraries(cuda_version: str) -> list[str]:
    """The shared libraries onnxruntime-gpu's CUDA provider loads, for a build against CUDA `cuda_version`
    (onnxruntime.capi.build_and_package_info.cuda_version): the driver, the runtime, cuBLAS, cuRAND, cuFFT
    and cuDNN 9."""
    major = int(cuda_version.split(".")[0])
    cufft = {11: 10, 12: 11, 13: 12}.get(major, major - 1)
    return ["libcuda.so.1", f"libcudart.so.{major}", f"libcublas.so.{major}", f"libcublasLt.so.{major}",
            "libcurand.so.10", f"libcufft.so.{cufft}", "libcudnn.so.9"]


def missing_libraries(names: list[str]) -> list[str]:
    """Those of `names` the dynamic loader cannot open here (already loaded ones open at once)."""
    missing = []
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(name)
    return missing


def cuda_failure_reason(cuda_version: str | None, missing: list[str] | None = None) -> str:
    """Why the CUDA provider did not initialise, naming the libraries that are `missing` (by default:
    those of `cuda_libraries` the loader cannot open here), and the fix."""
    if not cuda_version:
        return f"CUDA: provider listed but did not initialise; {GPU_INSTALL_FIX}"
    if missing is None:
        missing = missing_libraries(cuda_libraries(cuda_version))
    if "libcuda.so.1" in missing:
        return "CUDA: no NVIDIA driver here (libcuda.so.1 cannot be loaded); install the driver or use device='cpu'"
    if missing:
        return (f"CUDA: onnxruntime-gpu (built for CUDA {cuda_version}) cannot load {', '.join(missing)}; "
                f"{GPU_INSTALL_FIX}")
    return f"CUDA: provider listed but did not initialise (CUDA {cuda_version} libraries load; no usable GPU?)"


def preload_cuda_libraries() -> str | None:
    """Load the CUDA/cuDNN libraries of the nvidia-* wheels (onnxruntime-gpu[cuda,cudnn]) before a CUDA
    session is made; onnxruntime's own message when that fails (the session then names what is missing)."""
    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):  # before onnxruntime 1.21: the system's libraries only
        return None
    try:
        ort.preload_dlls()
    except Exception as exc:  # onnxruntime raises its own types; what failed is reported, not hidden
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _build_cuda_version() -> str | None:
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    return getattr(build_and_package_info, "cuda_version", None) or None


def cuda_listed() -> bool:
    """onnxruntime-gpu is installed (CUDAExecutionProvider listed); whether it works is only known once a
    session tried it (create_session)."""
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


def create_session(model_path: Path, config: SessionConfig | None = None, model_sha256: str = "",
                   float16: bool = False) -> SessionChoice:
    """An onnxruntime InferenceSession on CUDA if the config allows it and it works, else on CPU (the engine
    is chosen before: serve.load). `float16`: the model computes in float16 (see FLOAT16_DISABLED_OPTIMIZERS)."""
    import onnxruntime as ort

    config = config or SessionConfig()
    config.check()
    ort.set_default_logger_severity(3)
    reason = f"CUDA: onnxruntime has no CUDAExecutionProvider; on a CUDA machine {GPU_INSTALL_FIX}"
    if config.device in ("auto", "cuda") and CUDA in ort.get_available_providers():
        preload_error = preload_cuda_libraries()
        cuda_config = cuda_session_config(config)
        session = _session(ort, model_path, _options(ort, cuda_config, config.optimization), cuda_providers(config),
                           float16)
        if session.get_providers()[0] == CUDA:
            return SessionChoice(session, CUDA, f"serve: {model_path.parent.name} on {CUDA} (GPU "
                                                f"{config.cuda_device_id}, cuDNN search {config.cudnn_conv_algo_search}), "
                                                f"optimisation {config.optimization}")
        reason = cuda_failure_reason(_build_cuda_version()) + (f" (preload_dlls: {preload_error})" if preload_error else "")
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
    try:
        with atomic_path(optimized) as tmp:  # onnxruntime writes the optimised graph while it builds the session
            options.optimized_model_filepath = str(tmp)
            session = _session(ort, model_path, options, [CPU], float16)
        write_text_atomic(stamp_path, json.dumps({**stamp, "optimized_sha256": sha256_file(optimized)}))
        return session, ", optimised graph saved"
    except OSError:  # read-only bundle: run without the cache
        return _session(ort, model_path, _options(ort, config, config.optimization), [CPU], float16), \
            ", optimised graph not saved (bundle folder not writable)"


def _session(ort, model_path: Path, options, providers: list[str], float16: bool = False):
    try:
        return ort.InferenceSession(str(model_path), options, providers=providers,
                                    disabled_optimizers=disabled_optimizers(float16, cpu=providers == [CPU]))
    except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BundleError(f"onnxruntime could not load {model_path}: {first}; re-export the bundle") from None
