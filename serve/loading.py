"""serve.load: a bundle's files checked, then the session that runs it: onnxruntime on CUDA when it works, else
the CPU pair (engine, precision) serve.engines chooses; the graph checked against the manifest."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from serve.engines import Pair, choose
from serve.errors import BundleError
from serve.limits import DEFAULT_LIMITS, Limits
from serve.manifest import Manifest, read_manifest
from serve.openvino_engine import OPENVINO
from serve.predictor import Predictor, run_options
from serve.providers import CUDA, SessionChoice, SessionConfig, create_session, cuda_listed

log = logging.getLogger("serve")


# onnxruntime's type names for the manifest's dtypes
_GRAPH_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
                "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(bool)": "bool"}


def check_graph(manifest: Manifest, session: Any, model_file: str) -> None:
    """BundleError unless the manifest's inputs and outputs are the graph's: names, dtypes, ranks and
    fixed sizes. (A manifest edited, or copied beside another model, would otherwise load and then fail
    on every request.)"""
    for role, specs, nodes in (("inputs", manifest.inputs, session.get_inputs()),
                               ("outputs", manifest.outputs, session.get_outputs())):
        graph = {node.name: node for node in nodes}
        for spec in specs:
            node = graph.get(spec.name)
            if node is None:
                raise BundleError(f"manifest.json: {role}: {spec.name!r} is not one of the {role} of {model_file} "
                                  f"({', '.join(sorted(graph))}); re-export the bundle")
            dtype = _GRAPH_TYPES.get(node.type, node.type)
            fixed = [(a, b) for a, b in zip(spec.shape, node.shape) if isinstance(a, int) and isinstance(b, int) and a != b]
            if dtype != spec.dtype or len(node.shape) != len(spec.shape) or fixed:
                raise BundleError(f"manifest.json: {role}: {spec.name} is {spec.dtype} {spec.shape} in the manifest but "
                                  f"{dtype} {node.shape} in {model_file}; re-export the bundle")
        if role == "inputs" and (extra := sorted(set(graph) - {spec.name for spec in specs})):
            raise BundleError(f"manifest.json: inputs: {model_file} also takes {', '.join(extra)}, which the manifest "
                              "does not describe; re-export the bundle")


def load(directory: str | Path, device: str = "auto", threads: int | None = None, verify: bool = True,
         config: SessionConfig | None = None, variant: str = "auto", limits: Limits | None = None,
         batch_size: int = 1) -> Predictor:
    """A Predictor for the bundle in `directory`. Every bundle file is checked against the manifest's
    sha256 first (`verify=False` skips that, for development only). `config` sets every session option
    (engine included); `device` and `threads` are shorthands for its common fields. `variant` picks a
    precision: "fp32", "fp16", "int8" (files the bundle holds), "bf16" (the fp32 file computed in bf16 by
    OpenVINO), or "auto": on a working CUDA session fp16 when the bundle has it, else fp32; on the CPU the
    fastest of the pairs (engine, fp32 or bf16) the bundle's export checked (serve.engines), timed at
    `batch_size` rows. `limits` bound what one input may cost (serve.limits; safe defaults)."""
    path = Path(directory)
    manifest = read_manifest(path, verify=verify)
    config = config or SessionConfig(device=device, intra_op_threads=threads)
    config.check()
    if batch_size < 1:
        raise BundleError(f"batch_size={batch_size}: must be at least 1")
    _require_variant(path, manifest, variant)
    release = config.releases_memory(manifest.modality)
    opened = _cuda_session(path, manifest, config, variant)
    pair, choice = opened if opened is not None else _cpu_choice(path, manifest, config, variant, batch_size, release)
    model_file = _file_of(manifest, pair.variant)
    check_graph(manifest, choice.session, model_file)
    if pair.variant == "fp16" and choice.provider == CUDA:
        checked = manifest.variants["fp16"].get("checked_on", ["CPUExecutionProvider"])
        note = ("checked against torch on CUDA at export" if CUDA in checked else
                "checked against torch on onnxruntime's CPU provider only (exported without a GPU); re-export on a "
                "CUDA machine to check it on CUDA kernels")
        choice = dataclasses.replace(choice, line=f"{choice.line}; fp16 {note}")
    predictor = Predictor(path, manifest, choice, config.io_binding, pair.variant, limits or DEFAULT_LIMITS, release,
                          trim_heap=config.release_memory is not False)
    log.info(predictor.provider_line)
    return predictor


def _cuda_session(path: Path, manifest: Manifest, config: SessionConfig, variant: str
                  ) -> tuple[Pair, SessionChoice] | None:
    """The onnxruntime session on CUDA when the configuration asks for a GPU or one is listed (variant auto:
    fp16 when the bundle has it); None for the CPU, or when CUDA is listed but unusable and nothing forced it."""
    if config.engine == "openvino" or not (config.device == "cuda" or (config.device == "auto" and cuda_listed())):
        return None
    if variant == "bf16":
        if config.device == "cuda" or config.engine == "onnxruntime":
            raise BundleError("variant bf16 runs on OpenVINO's CPU plugin; use device='cpu' (or 'auto') and engine "
                              "'openvino' or 'auto'")
        return None
    chosen = ("fp16" if "fp16" in manifest.variants else "fp32") if variant == "auto" else variant
    choice = _onnxruntime_session(path, manifest, config, chosen)
    if choice.provider != CUDA and variant == "auto" and config.device == "auto":
        return None  # CUDA listed but unusable: the CPU's choice
    return Pair("onnxruntime", chosen), choice


def _cpu_choice(path: Path, manifest: Manifest, config: SessionConfig, variant: str, batch_size: int, release: bool
                ) -> tuple[Pair, SessionChoice]:
    """The CPU pair serve.engines chooses (timed at `batch_size` rows when more than one may run), opened."""
    def open_pair(pair: Pair) -> SessionChoice:
        if pair.engine == "openvino":
            from serve.openvino_engine import HINTS, create_openvino_session

            session, line = create_openvino_session(path / _file_of(manifest, pair.variant), config.intra_op_threads,
                                                    HINTS[pair.variant])
            return SessionChoice(session, OPENVINO, line)
        return _onnxruntime_session(path, manifest, config, pair.variant)

    def run_of(opened: SessionChoice, feeds: dict[str, np.ndarray]):  # as the Predictor will run it
        names, options = [output.name for output in manifest.outputs], run_options(release)
        return lambda: opened.session.run(names, feeds, options)

    decided = choose(path, manifest, config.engine, variant, batch_size, config.intra_op_threads, open_pair, run_of)
    return decided.pair, dataclasses.replace(decided.opened, line=f"{decided.opened.line}; {decided.line}")


def _onnxruntime_session(path: Path, manifest: Manifest, config: SessionConfig, variant: str) -> SessionChoice:
    """The onnxruntime session of `variant`'s file, checked against its digest (serve.providers)."""
    model_file = _file_of(manifest, variant)
    return create_session(path / model_file, dataclasses.replace(config, engine="onnxruntime"),
                          manifest.files[model_file], float16=variant == "fp16")


def _require_variant(path: Path, manifest: Manifest, variant: str) -> None:
    """BundleError unless `variant` is auto, fp32 or bf16 (the fp32 file), or a file variant the bundle holds."""
    if variant not in ("auto", "fp32", "bf16") and variant not in manifest.variants:
        raise BundleError(f"{path} has no {variant!r} variant; it has: fp32"
                          + "".join(f", {v}" for v in manifest.variants))


def _file_of(manifest: Manifest, variant: str) -> str:
    """The file a variant runs: bf16 computes the fp32 file in bf16."""
    return manifest.model_file if variant in ("fp32", "bf16") else manifest.variants[variant]["file"]
