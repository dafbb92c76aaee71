"""The `zoo` command line: a thin layer over the library. Heavy modules load inside commands.

Exit codes: 0 success, 1 a check ran and failed (validation, export parity), 2 a user mistake
(unknown model, missing file, bad input, bad flag), always with a one-line message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from export.formats import FORMAT_NAMES
from serve.limits import DEFAULT_LIMITS
from serve.providers import DEVICES as SESSION_DEVICES, SessionConfig
from serve.server_config import MIB, VARIANTS, server_default
from zoo import config
from zoo.errors import ExportError, ZooError


def _sources(source_dir: tuple[str, ...]):
    from zoo.schema import SourceSpec

    for folder in source_dir:
        if not Path(folder).is_dir():
            raise click.BadParameter(f"{folder} is not a folder", param_hint="--source-dir")
    return [SourceSpec(kind="path", path=str(Path(folder).resolve())) for folder in source_dir]


def _shape(value: str | tuple[int, ...]) -> tuple[int, ...]:
    """click type: "8" -> (8,), "1,128" -> (1, 128)."""
    if isinstance(value, tuple):
        return value
    parts = value.split(",")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise click.BadParameter(f"expected BATCH or BATCH,SEQ (integers, e.g. 8 or 1,128), found {value!r}")
    return tuple(int(p) for p in parts)


source_dir_option = click.option("--source-dir", multiple=True, metavar="DIR",
                                 help="Folder holding the model's files; tried before the registry's sources.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zoo")
def cli() -> None:
    """Pretrained backbones: fetch, validate, export to ONNX, predict without torch."""


@cli.command("list")
@click.argument("patterns", nargs=-1)
@click.option("--modality", type=click.Choice(["image", "text"]), help="Only image or text models.")
@click.option("--task", help="Only this task (image-classification, semantic-segmentation, object-detection, "
                             "sentence-embedding, feature-extraction).")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Leave out ids matching this fnmatch pattern.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the entries' cards (as `zoo info --json`).")
def list_command(patterns: tuple[str, ...], modality: str | None, task: str | None, exclude: tuple[str, ...],
                 as_json: bool) -> None:
    """List registry models whose id matches any PATTERN (fnmatch, default '*')."""
    from zoo.registry import get_model, list_models, load_registry

    tasks = sorted({entry.task for entry in load_registry().values()})
    if task is not None and task not in tasks:
        raise click.BadParameter(f"{task!r} is not a task of the registry; expected one of {', '.join(tasks)}",
                                 param_hint="--task")
    names = list_models(patterns or "*", exclude, modality=modality, task=task)
    if as_json:
        from zoo.card import card_dict

        click.echo(json.dumps([card_dict(get_model(name)) for name in names], indent=1))
        return
    entries = [get_model(name) for name in names]
    width = max([len(name) for name in names] + [2])  # columns fit the longest id
    tasks = max([len(entry.task) for entry in entries] + [4])
    for entry in entries:
        ref = "reference" if entry.reference else ""
        click.echo(f"{entry.id:{width}}  {entry.modality:5} {entry.task:{tasks}} {entry.params / 1e6:7.1f}M  {ref}".rstrip())


@cli.command()
@click.argument("name", metavar="NAME|RUN_DIR")
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def info(name: str, as_json: bool) -> None:
    """Show the model card of NAME (a registry model or a fine-tuning run)."""
    from zoo.card import card_dict, card_lines
    from zoo.runs import resolve_name

    entry = resolve_name(name)
    click.echo(json.dumps(card_dict(entry), indent=1) if as_json else "\n".join(card_lines(entry)))


@cli.command()
@click.argument("name")
@source_dir_option
def fetch(name: str, source_dir: tuple[str, ...]) -> None:
    """Download (or copy) NAME's files into the cache, verifying every sha256."""
    from zoo.cache import fetch as fetch_files
    from zoo.registry import get_model

    fetched = fetch_files(get_model(name), _sources(source_dir))
    for file, digest in fetched.sha256.items():
        click.echo(f"✓ {file}  sha256 {digest}")
    click.echo(f"{name}: {len(fetched.files)} file(s) in {fetched.directory}")


@cli.command()
@click.argument("name", metavar="NAME|RUN_DIR")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), help="Override the stored tolerance.")
@source_dir_option
def validate(name: str, atol: float | None, source_dir: tuple[str, ...]) -> None:
    """Rebuild NAME from verified weights and compare with its stored reference outputs."""
    from zoo.validation import validate as run_validation

    report = run_validation(name, atol=atol, extra_sources=_sources(source_dir))
    click.echo("\n".join(report.lines()))
    report.raise_for_failures()


@cli.command()
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
@click.option("--static-shape", type=_shape, metavar="BATCH[,SEQ]",
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
                           extra_sources=_sources(source_dir), formats=chosen, options=FormatOptions(calibration, static_shape))
    click.echo("\n".join(result.lines()))
    if result.failed:
        raise ExportError(f"{len(result.failed)} format(s) failed and were left out: "
                          + "; ".join(f"{r['format']}: {r['status']}" for r in result.failed))


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array, one object per input.")
@click.option("--device", type=click.Choice(SESSION_DEVICES), default=SessionConfig.device, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--variant", type=click.Choice(VARIANTS), default=server_default("variant"), show_default=True,
              help="Precision to run; auto = fp16 on a working CUDA session when the bundle has it, else fp32.")
@click.option("--masks", type=click.Path(file_okay=False, path_type=Path),
              help="Segmentation: write each mask here as NAME.png (class indices, shown in VOC colours).")
@click.option("--min-score", type=click.FloatRange(0, 1), default=None,
              help="Detection: return detections scoring at least this (default: the bundle's threshold, 0.5).")
@click.option("--aggregation", type=click.Choice(["first", "simple"]), default=None,
              help="Token classification (NER): word pieces into entities by each word's first piece, or token by "
                   "token (default: the bundle's, first).")
@click.option("--question", help="Question answering: the question, asked of each INPUT (the contexts).")
def predict(bundle: Path, inputs: tuple[str, ...], top_k: int, as_json: bool, device: str, batch_size: int,
            variant: str, masks: Path | None, min_score: float | None, aggregation: str | None, question: str | None) -> None:
    """Run a bundle on INPUTS (image files, or texts for text bundles; contexts for --question) without torch."""
    import serve
    from serve.kinds import kinds_taking
    from serve.segmentation import jsonable, mask_image

    predictor = serve.load(bundle, device=device, variant=variant)
    kind = predictor.kind
    for option, value, flag in (("masks", masks, "--masks"), ("question", question, "--question"),
                                ("aggregation", aggregation, "--aggregation"), ("min_score", min_score, "--min-score")):
        if value is not None and option not in kind.options:
            raise click.BadParameter(f"applies to {' and '.join(kinds_taking(option))} bundles; {bundle} is a "
                                     f"{predictor.manifest.task} model", param_hint=flag)
    if "question" in kind.options and question is None:
        raise click.BadParameter(f"{bundle} answers questions: give the question with --question and the contexts "
                                 "as INPUTS", param_hint="--question")
    items = [{"question": question, "context": text} for text in inputs] if question is not None else list(inputs)
    results = predictor.predict(items, top_k=top_k, batch_size=batch_size, min_score=min_score, aggregation=aggregation)
    click.echo(predictor.provider_line, err=True)  # after the inputs were taken: a bad one stays a one-line error
    if masks is not None:
        masks.mkdir(parents=True, exist_ok=True)
        for index, result in enumerate(results):
            stem = Path(result["input"]).stem
            taken = sum(Path(r["input"]).stem == stem for r in results[:index])
            target = masks / f"{stem}.png" if not taken else masks / f"{stem}-{taken + 1}.png"
            mask_image(result.pop("mask")).save(target)
            result["mask_file"] = str(target)
    if as_json:
        click.echo(json.dumps([jsonable(result) for result in results]))
        return
    for result in results:
        click.echo(kind.render(result))


@cli.command()
@click.argument("name")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Image folder (one subfolder per class, optional train/ val/), CSV/JSONL with text,label, or for "
                   "segmentation labels.txt + images/ + masks/, for detection annotations.json + images/ (COCO) or "
                   "Annotations/ + JPEGImages/ (Pascal VOC) (each with optional train/ val/), for token classification "
                   "(NER) a CoNLL file or JSONL with tokens,tags, for question answering SQuAD JSON.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory to write.")
@click.option("--task", type=click.Choice(config.FINETUNE_TASKS),
              help="What to fine-tune for; --data is read as that task's data. Default: the model's own task; "
                   "text-classification for a text encoder (token-classification: NER, question-answering: SQuAD).")
@click.option("--epochs", type=int, help="Default: a budget of optimizer steps scaled to the data (zoo.recipe).")
@click.option("--batch-size", type=int, default=config.default("batch_size"), show_default=True)
@click.option("--lr", type=float, help="Learning rate of the head (blocks below: see --lr-decay). Default: the "
                                      "registry card's fine-tuning rate, or 1e-3 for a randomly initialised head.")
@click.option("--optimizer", type=click.Choice(config.OPTIMIZERS), default=config.default("optimizer"), show_default=True)
@click.option("--momentum", type=float, default=config.default("momentum"), show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=float, help="Default: the registry card's.")
@click.option("--warmup-epochs", type=float, help="Default: the first tenth of the epochs.")
@click.option("--schedule", type=click.Choice(config.SCHEDULES), default=config.default("schedule"), show_default=True)
@click.option("--clip-grad", type=float, help="Clip the gradient norm to this value.")
@click.option("--accumulate", type=int, default=config.default("accumulate"), show_default=True,
              help="Gradient accumulation steps.")
@click.option("--patience", type=int, help="Early stopping: epochs without improvement of --metric (0: never stop "
                                           "early). Default: a quarter of the epochs, at least 3.")
@click.option("--metric", type=click.Choice(config.METRICS), default=config.default("metric"), show_default=True,
              help="Model selection and early stopping: auto = macro_f1 (classification), miou (segmentation), "
                   "map50 (detection), entity_f1 (token classification) or squad_f1 (question answering).")
@click.option("--label-smoothing", type=float, default=config.default("label_smoothing"), show_default=True)
@click.option("--seed", type=int, default=config.default("seed"), show_default=True)
@click.option("--freeze", default=config.default("freeze"), show_default=True,
              help="full | head (backbone and its BatchNorm statistics frozen) | N (first N blocks) | gradual:K.")
@click.option("--lr-decay", type=float, default=config.default("lr_decay"), show_default=True,
              help="Discriminative LR: each block below the head trains at this factor of the one above.")
@click.option("--head", type=click.Choice(config.HEAD_KINDS), default=config.default("head"), show_default=True)
@click.option("--head-init", type=click.Choice(config.HEAD_INITS), default=config.default("head_init"), show_default=True,
              help="probe: fit the head on frozen features before fine-tuning (LP-FT; auto for classifiers).")
@click.option("--probe", "probe_only", is_flag=True,
              help="Linear probe only: fit the head on frozen features in seconds; the backbone never trains.")
@click.option("--after-probe", type=click.Choice(config.AFTER_PROBE), default=config.default("after_probe"),
              show_default=True,
              help="gated (auto with a probe): fine-tune after the probe unless it made no error in "
                   "cross-validation on the training examples; finetune: always.")
@click.option("--pairs", type=click.Choice(config.PAIRS), default=config.default("pairs"), show_default=True,
              help="on: contrastive pair training of the text encoder before the probe (SetFit's first stage; "
                   "off by default: measured no better than LP-FT); --probe --pairs on is SetFit.")
@click.option("--augment", type=click.Choice(config.AUGMENTS), default=config.default("augment"),
              show_default=True, help="Image augmentation: none (auto); light = random crops >= half the image + flips; "
                                      "trivial adds TrivialAugmentWide; imagenet crops down to 8 percent.")
@click.option("--refit", type=click.Choice(config.REFIT), default=config.default("refit"), show_default=True,
              help="on (auto when zoo split the validation set off the data): once selection is done, train the "
                   "selected procedure again on train + val.")
@click.option("--select", type=click.Choice(config.SELECT), default=config.default("select"), show_default=True,
              help="Weights kept: last (auto) = the final epoch's, or the probe's if it validated better; best = "
                   "the epoch with the best validation --metric.")
@click.option("--batchnorm", type=click.Choice(config.BATCHNORM), default=config.default("batchnorm"), show_default=True,
              help="frozen (auto): BatchNorm keeps its pretrained running statistics; train: updates them.")
@click.option("--positive", help="Binary head: the positive label (default: the second in sorted order).")
@click.option("--val-fraction", type=float, default=config.default("val_fraction"), show_default=True,
              help="Held out per class when the data has no validation split (seeded, stratified).")
@click.option("--scratch", is_flag=True, help="Random initialisation instead of the pretrained weights (baselines).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes [default: 0 on CPU; on CUDA the cores per rank less one, at most 16].")
@click.option("--device", type=click.Choice(config.DEVICES), default=config.default("device"), show_default=True)
@click.option("--amp", type=click.Choice(config.AMP), default=config.default("amp"), show_default=True,
              help="Mixed precision on CUDA. auto: bf16 on GPUs that compute it natively (compute capability 8.0+), "
                   "fp16 with loss scaling before them, off on CPU.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out with its stored settings.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("--dry-run", is_flag=True, help="Print which blocks train and how many parameters, then stop.")
@click.option("--quiet", is_flag=True, help="Log lines only, no progress bars.")
def finetune(name: str, data: Path, out: Path | None, scratch: bool, resume: bool, overwrite: bool, dry_run: bool,
             quiet: bool, **options) -> None:
    """Fine-tune NAME on --data into the run directory --out (under torchrun: DDP)."""
    from zoo.runs import resolve_name

    resolve_name(name)  # unknown names fail before torch is imported
    from zoo.freeze import describe_trainable
    from zoo.training import finetune as run_finetune

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if resume:  # the stored settings apply; only the model name and data location are checked
        result = run_finetune(name, data, out, resume=True, quiet=quiet)
    else:
        result = run_finetune(name, data, out, overwrite=overwrite, quiet=quiet, dry_run=dry_run,
                              pretrained=not scratch, **options)
    if dry_run:
        click.echo("\n".join(describe_trainable(result.trainable)))
        return
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
    click.echo(f"{result.run_dir}: best epoch {result.best_epoch}: {metrics}")


@cli.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Processes, each with a model.")
@click.option("--name", help="Model name in the /v2/models/NAME routes (default: the bundle's model id).")
@click.option("--device", type=click.Choice(SESSION_DEVICES), default=SessionConfig.device, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads per worker.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=server_default("max_batch_size"), show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=server_default("max_wait_ms"), show_default=True)
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=server_default("max_body_bytes") / MIB,
              show_default=True)
@click.option("--max-inputs", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_inputs, show_default=True,
              help="Images or texts per request (the batch of one KServe infer request).")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_image_pixels, show_default=True,
              help="Width x height of one image, as its header declares it, checked before decoding.")
@click.option("--max-aspect-ratio", type=click.FloatRange(min=1), default=DEFAULT_LIMITS.max_aspect_ratio, show_default=True,
              help="Long side over short side of an image the model resizes.")
@click.option("--max-text-chars", type=click.IntRange(min=1), default=DEFAULT_LIMITS.max_text_chars, show_default=True,
              help="Characters of one text.")
@click.option("--preprocess-workers", type=click.IntRange(min=1), default=server_default("preprocess_workers"),
              show_default=True,
              help="Threads that decode and tokenise, off the event loop (images decoded at once, at most).")
@click.option("--variant", type=click.Choice(VARIANTS), default=server_default("variant"), show_default=True,
              help="Precision to serve; auto = fp16 on a working CUDA session when the bundle has it, else fp32.")
@click.option("--inference-timeout", type=click.FloatRange(min=0, min_open=True),
              default=server_default("inference_timeout_s"), show_default=True,
              help="Seconds a request's inference may take before it gets 504.")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=server_default("body_timeout_s"),
              show_default=True,
              help="Seconds a client may take to send its body before it gets 408.")
def serve_command(bundle: Path, host: str, port: int, workers: int, name: str | None, device: str,
                  threads: int | None, max_batch_size: int, max_wait_ms: float, max_body_mb: float, max_inputs: int,
                  max_image_pixels: int, max_aspect_ratio: float, max_text_chars: int, preprocess_workers: int,
                  variant: str, inference_timeout: float, body_timeout: float) -> None:
    """Serve BUNDLE over HTTP (KServe v2 + /v2/models/NAME/predict + /metrics)."""
    import socket

    import serve
    from serve.http import run
    from serve.server_config import ServerConfig
    from serve.limits import Limits

    limits = Limits(max_inputs=max_inputs, max_image_pixels=max_image_pixels, max_aspect_ratio=max_aspect_ratio,
                    max_text_chars=max_text_chars)
    session = SessionConfig(device=device, intra_op_threads=threads)
    try:  # a port in use fails here, in one line, before anything loads
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise click.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
                                 "or stop what uses it", param_hint="--port") from None
    # The whole bundle loads here first: a wrong folder, a modified or inconsistent bundle, a variant it does
    # not have: one line and exit 2, not a server that never becomes ready. One worker keeps this copy.
    predictor = serve.load(bundle, config=session, variant=variant, limits=limits)
    config = ServerConfig(bundle=bundle, name=name, max_body_bytes=int(max_body_mb * MIB),
                          max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, variant=variant, session=session,
                          limits=limits, preprocess_workers=preprocess_workers,
                          inference_timeout_s=inference_timeout, body_timeout_s=body_timeout)
    click.echo(f"zoo serve: http://{host}:{port}/v2/models/{name or predictor.manifest.model_id}", err=True)
    run(config, host=host, port=port, workers=workers, predictor=predictor if workers == 1 else None)


@cli.command()
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


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become `zoo: error: ...` on stderr and exit 2, never a traceback."""
    from serve.errors import ServeError

    try:
        cli.main(args=argv, prog_name="zoo", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("zoo: aborted", err=True)
        return 130
    except click.ClickException as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
        click.echo(f"zoo: error: {exc.format_message()}{hint}", err=True)
        return exc.exit_code
    except ZooError as exc:
        click.echo(f"zoo: error: {exc}", err=True)
        return exc.exit_code
    except ServeError as exc:
        click.echo(f"zoo: error: {exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
