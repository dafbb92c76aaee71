"""Micro-batching: concurrent single requests merged into one onnxruntime call.

Callers submit one input each and preprocess it in their own thread (images decode and resize in
parallel; a bad input fails only its own request). A worker thread takes the first waiting request,
waits up to `max_wait_ms` for more (at most `max_batch_size`), runs the batch once (text is
tokenised together, run in runs of similar length) and hands each caller its own result."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from serve.errors import InputError, ServeError
from serve.predictor import Predictor
from serve.preprocess import describe, preprocess_image_sized


# Idle time after a batch before the predictor gives freed heap back to the OS (Predictor.release_memory):
# long enough that the requests' own buffers are gone, short enough that memory returns between bursts.
RELEASE_AFTER_IDLE_S = 0.2


@dataclass
class _Request:
    item: Any
    top_k: int
    min_score: float | None = None  # detection (see serve.kinds)
    aggregation: str | None = None  # token classification
    array: np.ndarray | None = None  # the preprocessed CHW image (image models)
    size: tuple[int, int] | None = None  # the image's own (width, height): segmentation masks go back to it
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    sizes: list[int] = field(default_factory=list)


class MicroBatcher:
    """Thread-safe front of a Predictor. `submit` returns a Future; `predict` waits for it."""

    def __init__(self, predictor: Predictor, max_batch_size: int = 16, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int], None] | None = None, open_files: bool = True):
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ServeError(f"max_batch_size={max_batch_size} must be >= 1 and max_wait_ms={max_wait_ms} >= 0")
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self.on_batch = on_batch  # called with each batch's size (metrics)
        # False in servers: an image given as a str/Path is refused, never opened (a client's string
        # must not name a file on the server).
        self.open_files = open_files
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="serve-batcher", daemon=True)
        self._worker.start()

    def submit(self, item: Any, top_k: int = 5, min_score: float | None = None, aggregation: str | None = None) -> Future:
        if self._closed:
            raise ServeError("the batcher is closed")
        request = _Request(item, top_k, min_score, aggregation)
        try:  # in the caller's thread: preprocessing runs in parallel, and a bad input fails alone
            predictor = self.predictor
            if predictor.manifest.modality == "image":
                if not self.open_files and not isinstance(item, (bytes, bytearray)):
                    raise InputError(f"image input {describe(item)}: expected the image's bytes; "
                                     "file paths are not opened here")
                request.array, request.size = preprocess_image_sized(predictor.manifest.preprocessing, item,
                                                                     predictor.limits)
            else:  # a text, or a question with its context
                predictor.kind.check(item)
        except Exception as exc:
            request.future.set_exception(exc)
            return request.future
        self._queue.put(request)
        return request.future

    def predict(self, item: Any, top_k: int = 5, timeout: float | None = None) -> dict[str, Any]:
        return self.submit(item, top_k).result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking requests, finish the ones already queued, stop the worker."""
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)

    def __enter__(self) -> "MicroBatcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                request = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:
                stop = True
                break
            batch.append(request)
        return batch, stop

    def _loop(self) -> None:
        ran = False
        while True:
            try:  # after a batch, RELEASE_AFTER_IDLE_S without work returns the heap it left behind
                first = self._queue.get(timeout=RELEASE_AFTER_IDLE_S) if ran else self._queue.get()
            except queue.Empty:
                self.predictor.release_memory()
                ran = False
                continue
            if first is None:
                return
            batch, stop = self._collect(first)
            self._run(batch)
            ran = True
            if stop:
                while not self._queue.empty():  # drain what was queued before close()
                    request = self._queue.get_nowait()
                    if request is not None:
                        self._run([request])
                return

    def _outputs(self, requests: list[_Request]) -> list[Any]:
        if self.predictor.manifest.modality == "image":  # one run per distinct image shape (segmentation: any)
            return self.predictor.run_images([r.array for r in requests])
        return self.predictor.run_texts([r.item for r in requests])  # tokenised together, runs of similar length

    def _run(self, batch: list[_Request]) -> None:
        good = [request for request in batch if request.future.set_running_or_notify_cancel()]
        if not good:
            return
        self.stats.batches += 1
        self.stats.requests += len(good)
        self.stats.sizes.append(len(good))
        if self.on_batch is not None:
            self.on_batch(len(good))
        self._finish(good)

    def _finish(self, good: list[_Request]) -> None:
        """Run the requests as one batch and hand each its result or its error."""
        predictor = self.predictor
        try:
            output = self._outputs(good)
        except Exception as exc:
            if len(good) > 1:  # one request's input broke the run: run each alone, so only its own fails
                for request in good:
                    self._finish([request])
                return
            good[0].future.set_exception(exc)
            return
        for request, row in zip(good, output):
            try:
                result = predictor.postprocess(row, request.top_k, request.size, request.min_score, request.aggregation)
            except Exception as exc:  # e.g. an unknown aggregation: this request fails, the others not
                request.future.set_exception(exc)
                continue
            request.future.set_result({"input": describe(request.item), **result})
