"""The predictor production apps embed: bundle in, preprocessing exactly as exported, batched
onnxruntime calls, top-k labels or embeddings out."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from serve.engines import synthetic_feeds
from serve.errors import InputError
from serve.kinds import Options, OutputKind, kinds
from serve.lengths import length_runs
from serve.limits import DEFAULT_LIMITS, Limits
from serve.manifest import ImagePreprocessing, Manifest
from serve.openvino_engine import OPENVINO
from serve.preprocess import TextEncoder, describe, pillow, preprocess_image_sized, preprocess_images
from serve.providers import CUDA, SessionChoice

log = logging.getLogger("serve")


def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def run_options(release_memory: bool):
    """onnxruntime RunOptions for serve's runs: with `release_memory`, the CPU arena shrinks after each run."""
    import onnxruntime as ort

    options = ort.RunOptions()
    if release_memory:
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Predictor:
    """Runs one bundle. `predict` takes raw inputs: image paths/bytes/PIL/arrays, strings, or
    `{"question", "context"}` for question answering."""

    def __init__(self, directory: Path, manifest: Manifest, choice: SessionChoice, io_binding: str = "auto",
                 variant: str = "fp32", limits: Limits = DEFAULT_LIMITS, release_memory: bool = True,
                 trim_heap: bool = True):
        self.directory = directory
        self.manifest = manifest
        self.limits = limits
        self.session = choice.session
        self.provider = choice.provider
        self.variant = variant
        self.io_binding = io_binding == "on" or (io_binding == "auto" and choice.provider == CUDA)
        self.provider_line = choice.line + f"; variant {variant}" + ("; IO binding" if self.io_binding else "")
        self.trim_heap = trim_heap
        self.run_options = run_options(release_memory)
        self.input_names = [spec.name for spec in manifest.inputs]
        self.output_name = manifest.outputs[0].name
        # A bundle exported with a static shape: a fixed batch (run() splits and pads to it) and, for
        # text, a fixed sequence length (the tokenizer pads to it).
        first = manifest.inputs[0].shape
        kind = kinds()[manifest.postprocessing.kind]
        # A detector takes exactly one image (its batch of 1 is the graph's, not a chunk size).
        self.fixed_batch = first[0] if isinstance(first[0], int) and not kind.one_image_per_run else None
        self.fixed_length = first[1] if manifest.modality == "text" and isinstance(first[1], int) else None
        self._text = None
        if manifest.modality == "image":
            pillow()  # fail at load, not at the first request, when pillow is not installed
        if manifest.modality == "text":
            self._text = TextEncoder(directory / manifest.preprocessing.tokenizer, manifest.preprocessing,
                                     self.fixed_length, limits)
        self.kind: OutputKind = kind(self)  # what the outputs mean: serve.kinds

    @property
    def engine(self) -> str:
        """The engine that runs the model: "openvino" or "onnxruntime"."""
        return "openvino" if self.provider == OPENVINO else "onnxruntime"

    def run_texts(self, texts: Sequence[Any]) -> list[Any]:
        """One output row per text (per question for question answering), as the kind runs them."""
        return self.kind.run(texts)

    def run_images(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        """One output row per preprocessed CHW image, in order, as the kind runs them."""
        return self.kind.run(arrays)

    def encode(self, texts: Sequence[Any]) -> tuple[dict[str, np.ndarray], list[Any]]:
        """The texts tokenised together: the feeds (padded on the right) and each text's Encoding."""
        return self._text.encode(texts)

    def run_by_length(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One output row per text of a tokenised batch (padded on the right), the rows sorted by
        length and run in the runs serve.lengths chooses, each cut to its own longest text. A token
        classifier's rows are as long as their run. One padded run where that cannot gain: a fixed
        sequence length or batch, and on CUDA (per-run overhead there is larger; not measured)."""
        if self.fixed_batch or self._text.fixed_length or self.provider == CUDA:
            return list(self.run(feeds))
        lengths = feeds["attention_mask"].sum(axis=1)
        rows: list[np.ndarray] = [np.empty(0)] * len(lengths)
        for indices in length_runs(lengths):
            width = int(lengths[indices].max())
            output = self.run({name: np.ascontiguousarray(array[indices, :width]) for name, array in feeds.items()})
            for index, row in zip(indices, output):
                rows[index] = row
        return rows

    def preprocess(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """Model inputs for a batch of raw inputs, exactly as the bundle's manifest describes."""
        if len(items) == 0:
            raise InputError("no inputs given; expected at least one")
        if isinstance(self.manifest.preprocessing, ImagePreprocessing):
            return {self.input_names[0]: preprocess_images(self.manifest.preprocessing, items, self.limits)}
        return self._text(items)

    def run(self, feeds: dict[str, np.ndarray], chunk: int | None = None) -> np.ndarray:
        """The model's raw output for already-preprocessed inputs (checked against the manifest). A
        fixed-batch model takes any batch: it runs in chunks of its batch, the last one padded. `chunk`
        runs any other model in chunks of at most that many rows (a server's memory stays at the
        plateau of its warm-up batch)."""
        checked = self._check(feeds)
        size, total = self.fixed_batch or chunk, len(next(iter(checked.values())))
        if size is None or (self.fixed_batch is None and total <= size):
            return self._session_run([self.output_name], checked)[0]
        outputs = []
        for start in range(0, total, size):
            part = {name: array[start:start + size] for name, array in checked.items()}
            short = size - len(next(iter(part.values())))
            if short and self.fixed_batch:
                part = {name: np.concatenate([array, np.repeat(array[-1:], short, axis=0)]) for name, array in part.items()}
            outputs.append(self._session_run([self.output_name], part)[0])
        return np.concatenate(outputs)[:total]

    def run_all(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the model by name (a detector's boxes, scores and labels), for inputs at the
        graph's own batch."""
        names = [o.name for o in self.manifest.outputs]
        return dict(zip(names, self._session_run(names, self._check(feeds))))

    def _session_run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """`session.run`, or with IO binding: each input copied to the session's device once and bound,
        the outputs allocated on that device by onnxruntime (any shape: detections too) and copied back.
        A binding per call, so concurrent calls share the session safely."""
        if not self.io_binding:
            return self.session.run(names, feeds, self.run_options)
        device = "cuda" if self.provider == CUDA else "cpu"
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in names:
            binding.bind_output(name, device)
        self.session.run_with_iobinding(binding, self.run_options)
        return binding.copy_outputs_to_cpu()

    def release_memory(self) -> None:
        """Give the C heap's free pages back to the OS (glibc's malloc_trim; a few ms). Tokenising 64 long
        texts (or decoding a 40 MP photo) leaves ~200 MB of freed but held heap otherwise. Servers call it
        when their queue is idle; a no-op with `SessionConfig(release_memory=False)` or off glibc."""
        if self.trim_heap and _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)

    def run_by_shape(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One output row per CHW image, in order: images of equal shape share a run (segmentation bundles
        take any height and width, so one batch may hold several shapes)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, array in enumerate(arrays):
            groups.setdefault(array.shape, []).append(index)
        rows: list[np.ndarray] = [np.empty(0)] * len(arrays)
        for indices in groups.values():
            output = self.run({self.input_names[0]: np.stack([arrays[i] for i in indices])})
            for index, row in zip(indices, output):
                rows[index] = row
        return rows

    def warm_up(self, batch_size: int) -> None:
        """One run at the largest shapes this predictor will serve (`batch_size` rows; text at its
        longest sequence), so the first requests are not slow and onnxruntime's memory arena has
        reached its plateau before traffic arrives."""
        feeds = synthetic_feeds(self.manifest, batch_size, self._text.max_length if self._text else 0)
        if self.kind.one_image_per_run:
            feeds = {name: array[:1] for name, array in feeds.items()}
        self.kind.raw(feeds)

    def _check(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise InputError(f"missing input(s) {missing}; this model takes {self.input_names}")
        checked = {}
        for spec in self.manifest.inputs:
            array = feeds[spec.name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"input {spec.name}: expected a numpy array, found {type(array).__name__}")
            expected = f"{spec.dtype} array of shape {spec.shape}"
            if array.dtype != np.dtype(spec.dtype):
                raise InputError(f"input {spec.name}: dtype {array.dtype}, expected {expected}")
            if array.ndim != len(spec.shape):
                raise InputError(f"input {spec.name}: {array.ndim} dimensions {array.shape}, expected {expected}")
            for axis, (size, want) in enumerate(zip(array.shape, spec.shape)):
                if isinstance(want, int) and size != want and not (axis == 0 and self.fixed_batch):
                    raise InputError(f"input {spec.name}: size {size} on axis {axis}, expected {expected}")
            if array.shape[0] == 0:
                raise InputError(f"input {spec.name}: empty batch; expected at least one example")
            checked[spec.name] = array
        if self._text is not None:
            self._check_tokens(checked)
        return checked

    def _check_tokens(self, feeds: dict[str, np.ndarray]) -> None:
        """Token inputs the model can take: every sequence the shape of input_ids and no longer than
        max_length, ids within the vocabulary, an attention mask of 0 and 1."""
        ids = feeds.get("input_ids")
        if ids is None:
            return
        if ids.shape[1] > self._text.max_length:
            raise InputError(f"input input_ids: sequences of {ids.shape[1]} tokens; this model takes at most "
                             f"{self._text.max_length}")
        vocabulary = self._text.tokenizer.get_vocab_size()
        if ids.size and (ids.min() < 0 or ids.max() >= vocabulary):
            raise InputError(f"input input_ids: ids from {ids.min()} to {ids.max()}; the vocabulary has ids 0.."
                             f"{vocabulary - 1}")
        for name, array in feeds.items():
            if name != "input_ids" and array.shape != ids.shape:
                raise InputError(f"input {name}: shape {list(array.shape)} differs from input_ids' {list(ids.shape)}")
        mask = feeds.get("attention_mask")
        if mask is not None and mask.size and not np.isin(mask, (0, 1)).all():
            raise InputError("input attention_mask: expected 0 (padding) and 1 (token) only")

    def predict(self, items: Sequence[Any], top_k: int = 5, batch_size: int = 32,
                min_score: float | None = None, aggregation: str | None = None) -> list[dict[str, Any]]:
        """One result per input: `{"input", "top_k": [{"index", "label", "score"}]}` for classifiers,
        `{"input", "size", "mask", "classes"}` for segmentation, `{"input", "size", "detections"}` for
        detectors, `{"input", "entities"}` for token classifiers, `{"input", "answer", "start", "end",
        "score"}` for question answering, whose inputs are `{"question": ..., "context": ...}` (see
        `postprocess`), `{"input", "embedding": [...]}` for embedding models."""
        if isinstance(items, (str, bytes, Path)) or not isinstance(items, Sequence):
            items = [items]
        if len(items) == 0:
            raise InputError("no inputs given; expected at least one")
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        results: list[dict[str, Any]] = []
        for batch in _batches(list(items), batch_size):
            if self.manifest.modality == "image":  # sizes: where a segmentation mask goes back to
                prepared = [preprocess_image_sized(self.manifest.preprocessing, item, self.limits) for item in batch]
                rows = self.run_images([array for array, _ in prepared])
                sizes = [size for _, size in prepared]
            else:
                rows, sizes = self.run_texts(batch), [None] * len(batch)
            results += [{"input": describe(item), **self.postprocess(row, top_k, size, min_score, aggregation)}
                        for item, row, size in zip(batch, rows, sizes)]
        return results

    def postprocess(self, row: Any, top_k: int, size: tuple[int, int] | None = None,
                    min_score: float | None = None, aggregation: str | None = None) -> dict[str, Any]:
        """One output row -> its result, as the kind makes it (serve.kinds: top-k labels, an embedding,
        a mask, detections, entities, an answer). `size`: the image's own (width, height)."""
        return self.kind.postprocess(row, Options(top_k, size, min_score, aggregation))
