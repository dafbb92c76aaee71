"""HTTP server for a bundle: the Open Inference Protocol (KServe v2 REST) plus a convenience
endpoint that takes image bytes or text and answers like `zoo predict --json`.

    GET  /v2/health/live | /v2/health/ready      200, or 503 while the model loads
    GET  /v2/models/NAME  [/ready]               metadata: named tensors, datatypes, shapes
    POST /v2/models/NAME/infer                   {"inputs": [{"name", "shape", "datatype", "data"}]}
    POST /v2/models/NAME/predict                 image bytes, text/plain, or {"inputs": [...], "top_k": K}
                                                 (?min_score=, ?aggregation=: the kind's options, serve.kinds)
    GET  /metrics                                Prometheus: requests, in flight, latency histogram, batch sizes

Built on Starlette + uvicorn (extra `server`). Errors are JSON `{"error": ...}`: 400 bad input,
404 unknown model, 408 slow upload, 413 oversize, 415 a body an image model cannot take, 503 loading,
504 inference timeout. Nothing in a request is ever opened as a path on the server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serve import priority
from serve.batching import MicroBatcher
from serve.errors import LimitError, ServeError
from serve.entities import AGGREGATIONS
from serve.kinds import kinds_taking
from serve.limits import Limits
from serve.loading import load
from serve.predictor import Predictor
from serve.providers import SessionConfig
from serve.protocol import DATATYPES, HttpError, infer_inputs, parse_json, tensor_metadata
from serve.segmentation import jsonable
from serve.server_config import ServerConfig

log = logging.getLogger("serve")


class _State:
    """The model as it loads in the background: readiness is observable while it happens."""

    def __init__(self, config: ServerConfig, loaded: Predictor | None = None):
        self.config = config
        self.loaded = loaded  # a predictor the caller already loaded (zoo serve checks the bundle first)
        self.predictor: Predictor | None = None
        self.batcher: MicroBatcher | None = None
        self.error: str | None = None
        self.registry = CollectorRegistry()
        self.requests = Counter("zoo_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("zoo_request_seconds", "Request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.in_flight = Gauge("zoo_requests_in_flight", "Requests being handled (read, queued or running)",
                               ["endpoint"], registry=self.registry)
        self.batch_sizes = Histogram("zoo_batch_size", "Requests merged per onnxruntime run", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64))
        self.loop_thread = threading.get_native_id()  # replaced by the event loop's own at startup
        self.base_nice = priority.current()
        self.preprocess = ThreadPoolExecutor(config.preprocess_workers, thread_name_prefix="serve-preprocess",
                                             initializer=self.lower_priority)

    def lower_priority(self) -> None:
        """The calling (compute) thread a few nice levels below the event loop."""
        priority.lower(self.config.compute_niceness, self.base_nice)

    async def off_loop(self, function, *args):
        """`function(*args)` in a preprocessing thread: the event loop keeps answering meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.preprocess, function, *args)

    def load(self) -> None:
        self.lower_priority()
        try:
            predictor = self.loaded or load(self.config.bundle, config=self.config.session, variant=self.config.variant,
                                            limits=self.config.limits, batch_size=self.config.max_batch_size)
            self.loaded = None
            predictor.warm_up(self.config.max_batch_size)  # before reporting ready: no slow first requests
            self.batcher = MicroBatcher(predictor, self.config.max_batch_size, self.config.max_wait_ms,
                                        on_batch=self.batch_sizes.observe, open_files=False)
            # onnxruntime's and tokenizers' threads exist now (a bundle preloaded in the main thread made
            # them there): all but the event loop's thread go below it
            priority.lower_all_but(self.loop_thread, self.config.compute_niceness, self.base_nice)
            self.predictor = predictor
            print(predictor.provider_line, flush=True)
        except Exception as exc:  # anything: readiness must report it, not wait forever
            self.error = f"the model failed to load: {exc}"
            if not isinstance(exc, ServeError):
                log.exception("serve: failed to load %s", self.config.bundle)
            print(f"serve: failed to load {self.config.bundle}: {exc}", flush=True)

    @property
    def name(self) -> str:
        if self.config.name:
            return self.config.name
        return self.predictor.manifest.model_id if self.predictor else self.config.bundle.name

    def ready_predictor(self, name: str) -> Predictor:
        if self.predictor is None:
            raise HttpError(503, self.error or "model is loading; retry shortly")
        if name != self.name:
            raise HttpError(404, f"unknown model {name!r}; this server serves {self.name!r}")
        return self.predictor


async def _body(request: Request, state: _State) -> bytes:
    limit = state.config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), state.config.body_timeout_s)
    except asyncio.TimeoutError:
        raise HttpError(408, f"request body not received within {state.config.body_timeout_s:g}s") from None
    except ClientDisconnect:
        raise HttpError(400, "client disconnected while sending the body") from None


def create_app(config: ServerConfig, predictor: Predictor | None = None) -> Starlette:
    """The server's app; it loads the bundle in the background (readiness says when), or takes the
    already loaded `predictor`."""
    state = _State(config, predictor)

    def endpoint(name: str):
        def wrap(handler):
            async def route(request: Request) -> Response:
                start = time.perf_counter()
                try:
                    with state.in_flight.labels(name).track_inprogress():
                        response = await handler(request)
                except HttpError as exc:
                    response = JSONResponse({"error": str(exc)}, status_code=exc.status)
                except LimitError as exc:
                    response = JSONResponse({"error": str(exc)}, status_code=413)
                except ServeError as exc:  # InputError and friends: the client's input
                    response = JSONResponse({"error": str(exc)}, status_code=400)
                except Exception:  # a bug of ours: this request fails, the server goes on
                    log.exception("serve: %s %s failed", request.method, request.url.path)
                    response = JSONResponse({"error": "internal error; see the server log"}, status_code=500)
                state.requests.labels(name, str(response.status_code)).inc()
                state.latency.labels(name).observe(time.perf_counter() - start)
                return response
            return route
        return wrap

    @endpoint("live")
    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    @endpoint("ready")
    async def ready(request: Request) -> Response:
        if state.predictor is None:
            raise HttpError(503, state.error or "model is loading")
        return JSONResponse({"ready": True})

    @endpoint("server_metadata")
    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "zoo-serve", "version": "1", "extensions": []})

    @endpoint("model_metadata")
    async def model_metadata(request: Request) -> Response:
        predictor = state.ready_predictor(request.path_params["name"])
        manifest = predictor.manifest
        return JSONResponse({"name": state.name, "versions": ["1"], "platform": f"{predictor.engine}_onnx",
                             "inputs": tensor_metadata(manifest.inputs), "outputs": tensor_metadata(manifest.outputs)})

    @endpoint("model_ready")
    async def model_ready(request: Request) -> Response:
        state.ready_predictor(request.path_params["name"])
        return JSONResponse({"name": state.name, "ready": True})

    @endpoint("infer")
    async def infer(request: Request) -> Response:
        predictor = state.ready_predictor(request.path_params["name"])
        data = await _body(request, state)
        payload = await state.off_loop(parse_json, data)
        feeds = await state.off_loop(infer_inputs, payload, predictor)
        # A detector's three outputs (boxes, scores, labels) come from one run at its batch of one image;
        # other models run in chunks of the batch size they were warmed up at (memory stays at that plateau).
        try:
            outputs = await asyncio.wait_for(asyncio.to_thread(predictor.kind.raw, feeds, config.max_batch_size),
                                             config.inference_timeout_s)
        except asyncio.TimeoutError:
            raise HttpError(504, f"inference did not finish within {config.inference_timeout_s:g}s") from None
        body = {"model_name": state.name, "model_version": "1",
                "outputs": [{"name": name, "datatype": DATATYPES.get(str(output.dtype), str(output.dtype)),
                             "shape": list(output.shape), "data": output.ravel().tolist()}
                            for name, output in outputs.items()]}
        if isinstance(payload, dict) and "id" in payload:
            body["id"] = payload["id"]
        return JSONResponse(body)

    @endpoint("predict")
    async def predict(request: Request) -> Response:
        predictor = state.ready_predictor(request.path_params["name"])
        data = await _body(request, state)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        top_k = request.query_params.get("top_k", "5")
        if predictor.manifest.modality == "image":
            # The body is the image itself, whatever its declared type: nothing a client sends is
            # ever taken as a path on the server.
            if kind == "application/json" or kind.startswith("text/"):
                raise HttpError(415, f"Content-Type {kind!r}: this is an image model; send the image bytes "
                                     "with Content-Type image/* (or application/octet-stream)")
            items = [data]
        elif kind == "application/json":
            payload = await state.off_loop(parse_json, data)
            if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
                raise HttpError(400, 'expected {"inputs": ["text", ...]} (or send image bytes with an image/* type)')
            items = payload["inputs"]
            top_k = str(payload.get("top_k", top_k))
        elif kind.startswith("text/"):
            try:
                items = [data.decode("utf-8")]
            except UnicodeDecodeError as exc:
                raise HttpError(400, f"text body is not UTF-8: {exc}") from None
        else:
            items = [data]
        if not data:
            raise HttpError(400, "empty request body; expected image bytes or text")
        if not (top_k.isascii() and top_k.isdigit()) or int(top_k) < 1:
            raise HttpError(400, f"top_k={top_k!r}: expected a positive integer")
        top_k_value = int(top_k)
        min_score = request.query_params.get("min_score")  # the kinds that threshold scores (serve.kinds)
        try:
            score = None if min_score is None else float(min_score)
        except ValueError:
            raise HttpError(400, f"min_score={min_score!r}: expected a number between 0 and 1") from None
        if score is not None and not ("min_score" in predictor.kind.options and 0 <= score <= 1):
            raise HttpError(400, f"min_score={min_score!r}: applies to {' and '.join(kinds_taking('min_score'))} "
                                 "models, between 0 and 1")
        aggregation = request.query_params.get("aggregation")  # token classification
        if aggregation is not None and not ("aggregation" in predictor.kind.options and aggregation in AGGREGATIONS):
            raise HttpError(400, f"aggregation={aggregation!r}: applies to token-classification models, "
                                 f"{' or '.join(AGGREGATIONS)}")
        predictor.limits.inputs(len(items))
        # Decoding and tokenising run in the preprocessing threads, never on the event loop.
        submitted = await state.off_loop(lambda: [state.batcher.submit(item, top_k_value, score, aggregation)
                                                   for item in items])
        futures = [asyncio.wrap_future(future) for future in submitted]
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures), config.inference_timeout_s)
        except asyncio.TimeoutError:
            raise HttpError(504, f"inference did not finish within {config.inference_timeout_s:g}s") from None
        return JSONResponse([jsonable(result) for result in results])

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state.loop_thread, state.base_nice = threading.get_native_id(), priority.current()
        # asyncio.to_thread (KServe infer runs) in threads below the loop's priority too
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(thread_name_prefix="serve-infer",
                                                                           initializer=state.lower_priority))
        loader = threading.Thread(target=state.load, name="serve-loader", daemon=True)
        loader.start()
        yield
        if state.batcher is not None:
            state.batcher.close()
        state.preprocess.shutdown(wait=False, cancel_futures=True)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Starlette's own errors (unknown route 404, wrong method 405) as JSON, like every other reply."""
        state.requests.labels("other", str(exc.status_code)).inc()
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    app = Starlette(exception_handlers={HTTPException: http_error}, routes=[
        Route("/v2", server_metadata), Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        Route("/v2/models/{name}", model_metadata), Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/predict", predict, methods=["POST"]),
        Route("/metrics", metrics),
    ], lifespan=lifespan)
    app.state.zoo = state
    return app


def run(config: ServerConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        predictor: Predictor | None = None) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish, queued ones drain (graceful shutdown)."""
    import os

    import uvicorn

    if workers > 1:  # each worker process loads its own copy of the model, with every setting of `config`
        os.environ["ZOO_SERVE_CONFIG"] = json.dumps(dataclasses.asdict(config), default=str)
        uvicorn.run("serve.http:app_from_env", factory=True, host=host, port=port, workers=workers,
                    timeout_graceful_shutdown=30, log_level="warning")
        return
    uvicorn.run(create_app(config, predictor), host=host, port=port, timeout_graceful_shutdown=30, log_level="warning")


def app_from_env() -> Starlette:
    """The app of one worker process of `run(..., workers=N)`: the ServerConfig the parent wrote."""
    import os

    data = json.loads(os.environ["ZOO_SERVE_CONFIG"])
    return create_app(ServerConfig(**{**data, "bundle": Path(data["bundle"]), "session": SessionConfig(**data["session"]),
                                      "limits": Limits(**data["limits"])}))
