"""Which (engine, variant) pairs may run a bundle on this CPU, and `engine="auto"`'s choice among them.

A pair runs only if the bundle's export checked it against torch and it passed its gate: onnxruntime fp32
always (the bundle itself), onnxruntime fp16/int8 when the bundle holds that variant (kept only if it
passed), OpenVINO fp32/bf16/int8 as `zoo export --format openvino` recorded them (bf16 only where this CPU
computes bf16: elsewhere the plugin runs f32, which was not what passed). Asked for explicitly, a pair that
is not allowed is refused with the reason; OpenVINO fp32 on a bundle exported without that check runs when
asked for by name (its math is onnxruntime's fp32, within 1.6e-5 on every task here), never by auto.

auto takes the variants whose gates keep fp32's decisions (fp32, bf16; int8 and fp16 only when asked for),
times the allowed pairs side by side at the configured batch (interleaved rounds, median), takes the
fastest, and stores the decision next to the bundle, keyed by this CPU's flags, the libraries' versions,
the bundle and the request; a later load with the same key reuses it without timing."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable

import numpy as np

from serve.errors import BundleError
from serve.files import write_text_atomic
from serve.manifest import Manifest

log = logging.getLogger("serve")

# serve.load's `variant`: a precision the bundle holds, bf16 (its fp32 file on OpenVINO in bf16), or auto
VARIANTS = ("auto", "fp32", "fp16", "bf16", "int8")
AUTO_VARIANTS = ("fp32", "bf16")  # auto's choice: the precisions whose gates keep fp32's decisions
DECISIONS_FILE = "engine_choice.json"
MAX_DECISIONS = 16  # kept per bundle (distinct machines, batches, thread counts), newest first
TIMING_TOKENS = 64  # text is timed at this many tokens (or the bundle's fixed length)
TIMING_SECONDS = 3.0  # timing stops after this long once every pair has MIN_ROUNDS
MIN_ROUNDS, MAX_ROUNDS, BLOCK = 3, 30, 3


@dataclass(frozen=True)
class Pair:
    engine: str  # onnxruntime | openvino
    variant: str  # fp32 | fp16 | bf16 | int8: the numbers it computes with

    def __str__(self) -> str:
        return f"{self.engine} {self.variant}"


def refusal(manifest: Manifest, pair: Pair, by_name: bool = False) -> str | None:
    """None when `pair` passed its gate at this bundle's export and can run here; else why it may not.
    `by_name`: the pair was asked for explicitly, and OpenVINO fp32 also runs on a bundle exported without
    its check."""
    if pair.engine == "onnxruntime":
        if pair.variant == "bf16":
            return "onnxruntime has no bf16 CPU kernels; bf16 runs on engine 'openvino'"
        if pair.variant != "fp32" and pair.variant not in manifest.variants:
            return f"the bundle has no {pair.variant} variant (zoo export --format onnx-{pair.variant})"
        return None
    from serve.openvino_engine import OPENVINO_FIX, UNSUPPORTED_KINDS

    if manifest.postprocessing.kind in UNSUPPORTED_KINDS:
        return f"OpenVINO cannot run {UNSUPPORTED_KINDS[manifest.postprocessing.kind]}"
    if find_spec("openvino") is None:
        return f"openvino is not installed ({OPENVINO_FIX})"
    if pair.variant == "fp16":
        return "the fp16 variant was checked on onnxruntime only"
    checked = manifest.artifacts.get("openvino", {}).get("pairs", {}).get(pair.variant)
    if checked is None:
        if by_name and pair.variant == "fp32":
            return None
        return ("not checked at export (re-export with --format openvino"
                + (" --format onnx-int8)" if pair.variant == "int8" else ")"))
    if not checked.get("ok"):
        why = checked.get("failed", "no reason recorded")
        return f"not checked at export ({why})" if checked.get("checked") is False else f"failed its gate at export ({why})"
    if pair.variant == "bf16":
        from serve.openvino_engine import bf16_hardware

        if not bf16_hardware():
            return "this CPU has no bf16 instructions (OpenVINO would run f32, not what passed)"
    return None


def candidates(engine: str, variant: str) -> list[Pair]:
    """The pairs a request (engine and variant, each possibly "auto") covers, in order of preference on a tie;
    onnxruntime bf16 (there is none) only when asked for by name, to be refused."""
    engines = ("onnxruntime", "openvino") if engine == "auto" else (engine,)
    variants = AUTO_VARIANTS if variant == "auto" else (variant,)
    return [Pair(e, v) for v in variants for e in engines
            if (e, v) != ("onnxruntime", "bf16") or (engine, variant) == ("onnxruntime", "bf16")]


def synthetic_feeds(manifest: Manifest, batch: int, text_length: int) -> dict[str, np.ndarray]:
    """Inputs (ones) of `batch` rows at the shapes the bundle runs: images at the model's size (a named
    height/width: the square segmentation resizes to, else a 480-pixel side for detectors), texts of
    `text_length` tokens (or the model's fixed length)."""
    feeds = {}
    for spec in manifest.inputs:
        if manifest.modality == "text":
            shape = [batch, spec.shape[1] if isinstance(spec.shape[1], int) else text_length]
        else:
            side = getattr(manifest.preprocessing, "resize", None) or 480
            shape = [batch, *(d if isinstance(d, int) else side for d in spec.shape[1:])]
        feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
    return feeds


def time_runs(runs: dict[Pair, Callable[[], Any]], seconds: float = TIMING_SECONDS) -> dict[Pair, float]:
    """Median milliseconds of each run, timed in interleaved rounds so that drift of a noisy machine falls on
    all alike: per round, each run once untimed (the previous engine's worker threads still spin for a while
    after its last call, and only one engine runs when serving) and then BLOCK timed calls."""
    for run in runs.values():
        run()
    times: dict[Pair, list[float]] = {pair: [] for pair in runs}
    start = time.perf_counter()
    for rounds in range(1, MAX_ROUNDS + 1):
        for pair, run in runs.items():
            run()
            for _ in range(BLOCK):
                began = time.perf_counter()
                run()
                times[pair].append((time.perf_counter() - began) * 1e3)
        if rounds >= MIN_ROUNDS and time.perf_counter() - start >= seconds:
            break
    return {pair: statistics.median(values) for pair, values in times.items()}


def cpu_flags() -> str:
    """This CPU's instruction-set flags (Linux /proc/cpuinfo), else its platform description."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def library_versions() -> dict[str, str | None]:
    import onnxruntime

    from serve.openvino_engine import openvino_version

    return {"onnxruntime": onnxruntime.__version__, "openvino": openvino_version()}


def decision_key(directory: Path, pairs: list[Pair], batch: int, threads: int | None) -> dict[str, Any]:
    """What a decision holds for: this CPU (a digest of its flags), the libraries, the bundle (a digest of its
    manifest, which holds every file's), the pairs timed, the batch and the threads."""
    manifest_digest = hashlib.sha256((directory / "manifest.json").read_bytes()).hexdigest()
    return {"cpu_flags_sha256": hashlib.sha256(cpu_flags().encode()).hexdigest(), **library_versions(),
            "manifest_sha256": manifest_digest, "pairs": [str(p) for p in pairs], "batch": batch, "threads": threads}


def read_decisions(directory: Path) -> list[dict[str, Any]]:
    try:
        decisions = json.loads((directory / DECISIONS_FILE).read_text()).get("decisions", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [d for d in decisions if isinstance(d, dict)] if isinstance(decisions, list) else []


def cached_choice(directory: Path, key: dict[str, Any], pairs: list[Pair]) -> tuple[Pair, dict] | None:
    """The stored decision for exactly `key`, if its choice is still one of `pairs`."""
    for decision in read_decisions(directory):
        if decision.get("key") == key:
            chosen = next((p for p in pairs if str(p) == decision.get("choice")), None)
            if chosen is not None:
                return chosen, decision
    return None


def save_decision(directory: Path, key: dict[str, Any], chosen: Pair, medians: dict[Pair, float], batch: int) -> bool:
    """Store the decision (newest first, at most MAX_DECISIONS); False when the bundle folder is read-only."""
    decision = {"key": key, "choice": str(chosen), "p50_ms": {str(p): round(ms, 3) for p, ms in medians.items()},
                "batch": batch, "decided": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    kept = [d for d in read_decisions(directory) if d.get("key") != key]
    try:
        write_text_atomic(directory / DECISIONS_FILE,
                          json.dumps({"decisions": [decision, *kept][:MAX_DECISIONS]}, indent=1) + "\n")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Choice:
    pair: Pair
    opened: Any  # what `open_pair` returned for it
    line: str  # what was chosen and why


def choose(directory: Path, manifest: Manifest, engine: str, variant: str, batch: int, threads: int | None,
           open_pair: Callable[[Pair], Any], run_of: Callable[[Any, dict[str, np.ndarray]], Callable[[], Any]],
           text_length: int = TIMING_TOKENS) -> Choice:
    """The pair to serve for a request of `engine` and `variant` (each possibly "auto"): the only allowed one,
    the stored decision for this key, or the fastest allowed one timed now. `open_pair` opens a pair's
    session; `run_of(opened, feeds)` is a call that runs it once. BundleError when no pair is allowed."""
    asked = candidates(engine, variant)
    if len(asked) == 1:
        reason = refusal(manifest, asked[0], by_name=True)
        if reason:
            raise BundleError(f"{asked[0]} cannot serve {directory}: {reason}")
        return Choice(asked[0], open_pair(asked[0]), f"{asked[0]} as asked")
    # an engine named: its fp32 counts as asked for by name
    reasons = {pair: refusal(manifest, pair, by_name=engine != "auto") for pair in asked}
    allowed = [pair for pair, reason in reasons.items() if reason is None]
    if not allowed:
        raise BundleError(f"no pair of engine {engine!r} and precision {variant!r} can serve {directory}: "
                          + "; ".join(f"{p}: {r}" for p, r in reasons.items()))
    skipped = [pair for pair in asked if reasons[pair]]
    for pair in skipped:
        log.info("serve: engine auto skips %s: %s", pair, reasons[pair])
    skipped_note = f"; skipped {', '.join(map(str, skipped))}" if skipped else ""
    if len(allowed) == 1:
        return Choice(allowed[0], open_pair(allowed[0]), f"auto: {allowed[0]}, the only pair allowed{skipped_note}")
    key = decision_key(directory, allowed, batch, threads)
    if (cached := cached_choice(directory, key, allowed)) is not None:
        chosen, decision = cached
        return Choice(chosen, open_pair(chosen), f"auto: {chosen} (p50 {_times(decision['p50_ms'], chosen)} at batch "
                                                 f"{batch}, decided {decision.get('decided')} on this CPU and these "
                                                 f"versions){skipped_note}")
    feeds = synthetic_feeds(manifest, batch, text_length)
    opened, runs, broken = {}, {}, {}
    for pair in allowed:  # each opened and run once: a pair that cannot load or run here leaves the others
        try:
            opened[pair] = open_pair(pair)
            runs[pair] = run_of(opened[pair], feeds)
            runs[pair]()
        except Exception as exc:  # the engine's own error types; reported in the line, not raised
            broken[pair] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("serve: engine auto skips %s, which failed here: %s", pair, broken[pair])
            opened.pop(pair, None)
            runs.pop(pair, None)
    if not runs:
        raise BundleError(f"every pair allowed for {directory} failed here: "
                          + "; ".join(f"{p}: {r}" for p, r in broken.items()))
    medians = time_runs(runs)
    chosen = min(runs, key=lambda p: medians[p])  # ties: the earlier, simpler pair
    saved = save_decision(directory, key, chosen, medians, batch)
    broken_note = "".join(f"; {p} failed here ({r})" for p, r in broken.items())
    return Choice(chosen, opened[chosen], f"auto: {chosen} (p50 {_times({str(p): m for p, m in medians.items()}, chosen)} "
                                          f"at batch {batch}, timed now; "
                                          + ("saved" if saved else "not saved: bundle folder not writable")
                                          + f"){skipped_note}{broken_note}")


def _times(p50_ms: dict[str, float], chosen: Pair) -> str:
    """'1.50 ms vs onnxruntime fp32 2.48 ms, ...': the chosen pair's median first."""
    others = ", ".join(f"{name} {ms:.3g} ms" for name, ms in p50_ms.items() if name != str(chosen))
    return f"{p50_ms[str(chosen)]:.3g} ms" + (f" vs {others}" if others else "")
