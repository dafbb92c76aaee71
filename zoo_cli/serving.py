"""zoo predict | serve: bundles run without torch; defaults and choices are serve's own."""

from __future__ import annotations

import json
from pathlib import Path

import click

from serve.limits import DEFAULT_LIMITS
from serve.providers import DEVICES as SESSION_DEVICES, ENGINES, SessionConfig
from serve.server_config import MIB, VARIANTS, server_default

PRECISION_HELP = ("What the model computes in: fp32, fp16 or int8 (files the bundle holds), bf16 (its fp32 file in "
                  "bf16 on OpenVINO). auto: fp16 on a working CUDA session when the bundle has it; on the CPU the "
                  "fastest of fp32 and bf16 among the pairs the bundle's export checked.")
ENGINE_HELP = ("onnxruntime, or openvino (OpenVINO's CPU plugin, the `openvino` extra; bf16 and int8 only where the "
               "bundle's export checked them: zoo export --format openvino). auto: time the allowed pairs at the "
               "batch size, take the fastest, remember it next to the bundle.")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array, one object per input.")
@click.option("--device", type=click.Choice(SESSION_DEVICES), default=SessionConfig.device, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--variant", "--precision", "variant", type=click.Choice(VARIANTS), default=server_default("variant"),
              show_default=True, help=PRECISION_HELP)
@click.option("--masks", type=click.Path(file_okay=False, path_type=Path),
              help="Segmentation: write each mask here as NAME.png (class indices, shown in VOC colours).")
@click.option("--min-score", type=click.FloatRange(0, 1), default=None,
              help="Return only the detections or labels scoring at least this (default: the bundle's threshold).")
@click.option("--aggregation", type=click.Choice(["first", "simple"]), default=None,
              help="Token classification (NER): word pieces into entities by each word's first piece, or token by "
                   "token (default: the bundle's, first).")
@click.option("--question", help="Question answering: the question, asked of each INPUT (the contexts).")
@click.option("--engine", type=click.Choice(ENGINES), default=SessionConfig.engine, show_default=True,
              help=ENGINE_HELP)
def predict(bundle: Path, inputs: tuple[str, ...], top_k: int, as_json: bool, device: str, batch_size: int,
            variant: str, masks: Path | None, min_score: float | None, aggregation: str | None, question: str | None,
            engine: str) -> None:
    """Run a bundle on INPUTS (image files, or texts for text bundles; contexts for --question) without torch."""
    import serve
    from serve.kinds import kinds_taking
    from serve.segmentation import jsonable, mask_image

    predictor = serve.load(bundle, config=SessionConfig(device=device, engine=engine), variant=variant,
                           batch_size=min(batch_size, len(inputs)))
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


@click.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Processes, each with a model.")
@click.option("--name", help="Model name in the /v2/models/NAME routes (default: the bundle's model id).")
@click.option("--device", type=click.Choice(SESSION_DEVICES), default=SessionConfig.device, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Inference threads per worker (onnxruntime's intra-op, "
                                                             "OpenVINO's INFERENCE_NUM_THREADS).")
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
@click.option("--variant", "--precision", "variant", type=click.Choice(VARIANTS), default=server_default("variant"),
              show_default=True, help=PRECISION_HELP)
@click.option("--inference-timeout", type=click.FloatRange(min=0, min_open=True),
              default=server_default("inference_timeout_s"), show_default=True,
              help="Seconds a request's inference may take before it gets 504.")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=server_default("body_timeout_s"),
              show_default=True,
              help="Seconds a client may take to send its body before it gets 408.")
@click.option("--engine", type=click.Choice(ENGINES), default=SessionConfig.engine, show_default=True,
              help=ENGINE_HELP)
def serve_command(bundle: Path, host: str, port: int, workers: int, name: str | None, device: str,
                  threads: int | None, max_batch_size: int, max_wait_ms: float, max_body_mb: float, max_inputs: int,
                  max_image_pixels: int, max_aspect_ratio: float, max_text_chars: int, preprocess_workers: int,
                  variant: str, inference_timeout: float, body_timeout: float, engine: str) -> None:
    """Serve BUNDLE over HTTP (KServe v2 + /v2/models/NAME/predict + /metrics)."""
    import socket

    import serve
    from serve.http import run
    from serve.server_config import ServerConfig
    from serve.limits import Limits

    limits = Limits(max_inputs=max_inputs, max_image_pixels=max_image_pixels, max_aspect_ratio=max_aspect_ratio,
                    max_text_chars=max_text_chars)
    session = SessionConfig(device=device, engine=engine, intra_op_threads=threads)
    try:  # a port in use fails here, in one line, before anything loads
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise click.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
                                 "or stop what uses it", param_hint="--port") from None
    # The whole bundle loads here first: a wrong folder, a modified or inconsistent bundle, a variant it does
    # not have: one line and exit 2, not a server that never becomes ready. One worker keeps this copy.
    predictor = serve.load(bundle, config=session, variant=variant, limits=limits, batch_size=max_batch_size)
    config = ServerConfig(bundle=bundle, name=name, max_body_bytes=int(max_body_mb * MIB),
                          max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, variant=variant, session=session,
                          limits=limits, preprocess_workers=preprocess_workers,
                          inference_timeout_s=inference_timeout, body_timeout_s=body_timeout)
    click.echo(f"zoo serve: http://{host}:{port}/v2/models/{name or predictor.manifest.model_id}", err=True)
    run(config, host=host, port=port, workers=workers, predictor=predictor if workers == 1 else None)
