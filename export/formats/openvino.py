"""openvino: the fp32 model as OpenVINO IR in the model repository OpenVINO Model Server reads
(`openvino/config.json`, `openvino/NAME/1/model.xml|bin`), and every (OpenVINO, precision) pair serve may run
the bundle with, checked against torch by the gates of the variants:

- fp32: the ONNX file and the IR at the f32 hint, within the fp32 tolerance (a failure fails the format);
- bf16: the ONNX file at the bf16 hint, each row's cosine >= BF16_MIN_COSINE and its decisions agreeing on
  BF16_MIN_AGREEMENT of the rows (images: also on the held-out photographs); checked only on a CPU that
  computes bf16 (elsewhere the plugin would run f32 and prove nothing);
- int8: the onnx-int8 file, when built, by the int8 gate (export.formats.onnx_int8.int8_results).

A pair that fails is recorded with why, and serve never runs it (serve.engines)."""

from __future__ import annotations

import json
from dataclasses import replace

from zoo.errors import ExportError
from zoo.reference import Comparison
from zoo.tolerances import BF16_MIN_AGREEMENT, BF16_MIN_COSINE, EXPORT_ATOL

from export.formats import INT8_FILE, ONNX_FILE
from export.formats.common import Built, DerivedContext, checked, compared, report_row
from export.formats.onnx_int8 import held_out_comparison, int8_results

REPOSITORY = "openvino"


def _session(path, variant: str):
    from serve.errors import ServeError
    from serve.openvino_engine import HINTS, create_openvino_session

    try:
        return create_openvino_session(path, None, HINTS[variant])[0]
    except ServeError as exc:
        raise ExportError(str(exc)) from None


def _bf16_results(context: DerivedContext) -> tuple[list[Comparison], Comparison | None]:
    """bf16's comparisons with torch (every parity case; image models also the held-out photographs), and the
    held-out one."""
    session = _session(context.staging / ONNX_FILE, "bf16")
    held_out = None
    if context.entry.modality == "image":
        held_out = replace(held_out_comparison(context, session, BF16_MIN_COSINE), min_agreement=BF16_MIN_AGREEMENT)
    results = compared(context, session, None, BF16_MIN_COSINE, extra=[held_out] if held_out else [])
    return [replace(c, min_agreement=BF16_MIN_AGREEMENT) for c in results], held_out


def _record(results: list[Comparison], gate: str) -> dict:
    agreements = [c.top1_agreement for c in results if c.top1_agreement is not None]
    failing = [c.line() for c in results if not c.ok]
    return {"ok": not failing, "gate": gate, "max_abs_diff": max(c.max_abs_diff for c in results),
            "min_cosine": min(c.min_cosine for c in results), "top1_agreement": min(agreements, default=None),
            **({"failed": "; ".join(failing)} if failing else {})}


def _status(record: dict) -> str:
    """A pair's report status: the format is kept either way; a pair below its gate is never served."""
    return "ok" if record["ok"] else f"below its gate, never served: {record['failed']}"


def ovms_config(name: str) -> dict:
    """OpenVINO Model Server's config.json for the repository: the model's folder relative to the config, and
    the precision hint serve checked (the plugin's default is bf16 on CPUs that have it)."""
    return {"model_config_list": [{"config": {"name": name, "base_path": name,
                                              "plugin_config": {"INFERENCE_PRECISION_HINT": "f32",
                                                                "PERFORMANCE_HINT": "LATENCY"}}}]}


def build(context: DerivedContext) -> Built:
    from importlib.util import find_spec

    from serve.openvino_engine import UNSUPPORTED_KINDS

    kind = context.entry.output.kind
    if kind in UNSUPPORTED_KINDS:
        raise ExportError(f"OpenVINO cannot run {UNSUPPORTED_KINDS[kind]}")
    if find_spec("openvino") is None:
        raise ExportError("--format openvino needs the openvino package: pip install 'zoo[openvino]'")
    from serve.openvino_engine import bf16_hardware, openvino_version, save_ir

    name, staging = context.entry.id, context.staging
    xml = staging / REPOSITORY / name / "1" / "model.xml"
    try:
        save_ir(staging / ONNX_FILE, xml)
    except RuntimeError as exc:
        raise ExportError(f"OpenVINO could not convert {ONNX_FILE}: {str(exc).strip().splitlines()[0]}") from None
    (staging / REPOSITORY / "config.json").write_text(json.dumps(ovms_config(name), indent=1) + "\n")
    atol = EXPORT_ATOL["float32"]
    fp32 = checked(context, staging / ONNX_FILE, atol, session=_session(staging / ONNX_FILE, "fp32"))
    fp32 += [replace(c, label=f"{c.label} (IR)") for c in checked(context, xml, atol, session=_session(xml, "fp32"))]
    pairs = {"fp32": _record(fp32, f"max |diff| <= {atol:g}")}
    rows = [report_row("openvino", str(xml.relative_to(staging)), staging, fp32)]
    has_bf16 = bf16_hardware()
    if has_bf16:
        bf16, held_out = _bf16_results(context)
        pairs["bf16"] = _record(bf16, f"min cosine >= {BF16_MIN_COSINE:g}, decisions agree on >= "
                                      f"{BF16_MIN_AGREEMENT:.0%}")
        rows.append(report_row("openvino bf16", ONNX_FILE, staging, bf16, held_out=held_out,
                               status=_status(pairs["bf16"])))
    else:
        pairs["bf16"] = {"ok": False, "checked": False,
                         "failed": "the exporting CPU has no bf16 instructions (its plugin runs a bf16 hint at f32)"}
    if (staging / INT8_FILE).is_file():
        int8, held_out = int8_results(context, _session(staging / INT8_FILE, "int8"))
        pairs["int8"] = _record(int8, "as onnx-int8")
        rows.append(report_row("openvino int8", INT8_FILE, staging, int8, held_out=held_out,
                               status=_status(pairs["int8"])))
    record = {"repository": REPOSITORY, "model_name": name, "version": 1, "file": str(xml.relative_to(staging)),
              "openvino": openvino_version(), "bf16_hardware": has_bf16, "pairs": pairs}
    written = [f"{REPOSITORY}/config.json", str(xml.relative_to(staging)), str(xml.with_suffix(".bin").relative_to(staging))]
    return rows, record, written
