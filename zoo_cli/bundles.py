"""zoo export | bench: validated bundles, and their engines timed side by side."""

from __future__ import annotations

from pathlib import Path

import click

from export.formats import FORMAT_NAMES
from zoo.errors import ExportError
from zoo_cli.options import shape, source_dir_option, sources


@click.command()
@click.argument("name", metavar="NAME|RUN_DIR")
@click.option("--format", "formats", multiple=True, default=("onnx",), show_default=True,
              type=click.Choice([*FORMAT_NAMES, "all"]),
              help="Repeatable. onnx (fp32) is always written; others derive from it.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder to write.")
@click.option("--opset", type=click.IntRange(min=18),
              help="ONNX opset (default 20; detectors use the TorchScript exporter at 17).")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), help="Override the fp32 parity tolerance.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--calibration", type=click.Path(path_type=Path),
              help="onnx-int8 of image models: a folder of images to calibrate on (default: a documented "
                   "offline photo set).")
@click.option("--static-shape", type=shape, metavar="BATCH[,SEQ]",
              help="Export every format at this fixed input shape (no dynamic axes): BATCH for image models, "
                   "BATCH,SEQ for text models. Text SavedModels are always fixed: this, or 1,max_length.")
@source_dir_option
def export(name: str, formats: tuple[str, ...], out: Path, opset: int | None, atol: float | None, force: bool,
           calibration: Path | None, static_shape: tuple[int, ...] | None, source_dir: tuple[str, ...]) -> None:
    """Export NAME to a validated bundle (model, manifest, validation report) in --out."""
    from zoo.runs import resolve_name

    entry = resolve_name(name)  # unknown names fail before torch is imported
    from export.bundle import export_bundle
    from export.formats import FormatOptions
    from export.onnx_export import DEFAULT_OPSET

    chosen = FORMAT_NAMES if "all" in formats else tuple(dict.fromkeys(("onnx", *formats)))
    result = export_bundle(entry, out, opset=opset or DEFAULT_OPSET, atol=atol, overwrite=force,
                           extra_sources=sources(source_dir), formats=chosen, options=FormatOptions(calibration, static_shape))
    click.echo("\n".join(result.lines()))
    if result.failed:
        raise ExportError(f"{len(result.failed)} format(s) failed and were left out: "
                          + "; ".join(f"{r['format']}: {r['status']}" for r in result.failed))


@click.command()
@click.argument("target", metavar="NAME|BUNDLE_DIR")
@click.option("--batch", "batches", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for torch and onnxruntime (default: torch's).")
@click.option("--seconds", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Minimum measuring time per batch size.")
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON report.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG bar chart.")
def bench(target: str, batches: str, threads: int | None, seconds: float, as_json: bool, plot: Path | None) -> None:
    """Latency p50/p90/p99 and throughput of every engine, as ratios to torch eager."""
    try:
        sizes = tuple(int(b) for b in batches.split(","))
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{batches!r}: expected positive integers like 1,8,32", param_hint="--batch") from None
    if not (Path(target) / "manifest.json").is_file():
        from zoo.runs import resolve_name

        resolve_name(target)  # unknown names fail before torch is imported
    from export.bench import bench as run_bench, dumps, plot as draw, table

    report = run_bench(target, sizes, threads, seconds=seconds)
    click.echo(dumps(report) if as_json else "\n".join(table(report)), nl=not as_json)
    if plot:
        draw(report, plot)
