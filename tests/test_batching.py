"""Session options and micro-batching: concurrent single requests merged into few runs, results
identical to unbatched calls, one bad request failing alone."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import serve
from serve.batching import MicroBatcher
from zoo.reference import SENTENCES, asset_path

PHOTOS = [asset_path("flower.jpg"), asset_path("china.jpg")]


def test_concurrent_requests_are_merged_and_split_back(bundles) -> None:
    predictor = serve.load(bundles["efficientnet_lite0"])
    expected = {str(p): predictor.predict([p], top_k=3)[0] for p in PHOTOS}
    results: dict[int, dict] = {}
    with MicroBatcher(predictor, max_batch_size=8, max_wait_ms=50) as batcher:
        barrier = threading.Barrier(12)

        def client(index: int) -> None:
            barrier.wait()
            results[index] = batcher.predict(PHOTOS[index % 2], top_k=3, timeout=60)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == 12
    for index, result in results.items():
        want = expected[str(PHOTOS[index % 2])]
        assert [p["label"] for p in result["top_k"]] == [p["label"] for p in want["top_k"]]
        assert np.allclose([p["score"] for p in result["top_k"]], [p["score"] for p in want["top_k"]], atol=1e-5)
    assert batcher.stats.requests == 12 and batcher.stats.batches < 12 and max(batcher.stats.sizes) > 1


def test_a_bad_request_fails_alone(bundles) -> None:
    predictor = serve.load(bundles["efficientnet_lite0"])
    with MicroBatcher(predictor, max_batch_size=4, max_wait_ms=200) as batcher:
        futures = [batcher.submit(PHOTOS[0]), batcher.submit(b"not an image"), batcher.submit(PHOTOS[1], top_k=1)]
        assert futures[0].result(60)["top_k"][0]["label"] == "daisy"
        with pytest.raises(serve.InputError, match="not a readable image"):
            futures[1].result(60)
        assert [p["label"] for p in futures[2].result(60)["top_k"]] == ["palace"]
    # The bad input never reached a batch (the two good ones may or may not share one: timing).
    assert batcher.stats.requests == 2 and sum(batcher.stats.sizes) == 2


def test_text_requests_are_batched_with_padding(bundles) -> None:
    predictor = serve.load(bundles["all-minilm-l6-v2"])
    alone = [predictor.predict([s])[0]["embedding"] for s in SENTENCES]
    with MicroBatcher(predictor, max_batch_size=8, max_wait_ms=200) as batcher:
        futures = [batcher.submit(s) for s in SENTENCES] + [batcher.submit(42)]
        merged = [f.result(60)["embedding"] for f in futures[:-1]]
        with pytest.raises(serve.InputError, match="expected a str"):
            futures[-1].result(60)
    assert np.abs(np.array(merged) - np.array(alone)).max() <= 1e-5


def test_close_drains_queued_requests(bundles) -> None:
    batcher = MicroBatcher(serve.load(bundles["efficientnet_lite0"]), max_batch_size=2, max_wait_ms=0)
    futures = [batcher.submit(PHOTOS[i % 2]) for i in range(5)]
    batcher.close()
    assert all(f.result(1)["top_k"] for f in futures)
    with pytest.raises(serve.ServeError, match="closed"):
        batcher.submit(PHOTOS[0])


def test_session_options_and_optimised_graph_cache(bundles, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundles["efficientnet_lite0"], copy)
    config = serve.SessionConfig(intra_op_threads=1, inter_op_threads=1, optimization="extended", cache_optimized=True)
    first = serve.load(copy, config=config)
    assert "optimised graph saved" in first.provider_line and "threads 1/1" in first.provider_line
    assert (copy / "model.optimized.onnx").is_file()
    second = serve.load(copy, config=config)
    assert "cached optimised graph" in second.provider_line
    reference = first.predict(PHOTOS, top_k=5)
    again = second.predict(PHOTOS, top_k=5)
    for a, b in zip(reference, again):
        assert np.allclose([p["score"] for p in a["top_k"]], [p["score"] for p in b["top_k"]], atol=1e-5)
    (copy / "model.optimized.onnx").write_bytes(b"corrupted")  # a damaged cache is rebuilt, never used
    assert "optimised graph saved" in serve.load(copy, config=config).provider_line
    with pytest.raises(serve.ProviderError, match="optimization 'fastest'"):
        serve.load(copy, config=serve.SessionConfig(optimization="fastest"))


def test_cpu_sessions_keep_residual_add_and_layer_norm_apart(bundles, tmp_path: Path) -> None:
    """onnxruntime fuses a transformer's residual Add + LayerNormalization into SkipLayerNormalization,
    whose CPU kernel is several times slower (benchmarks/skip_layer_norm.py); serve's CPU sessions do not."""
    import onnx
    import onnxruntime as ort

    copy = tmp_path / "bundle"
    shutil.copytree(bundles["all-minilm-l6-v2"], copy)
    serve.load(copy, config=serve.SessionConfig(device="cpu", optimization="extended", cache_optimized=True))
    ops = {node.op_type for node in onnx.load(copy / "model.optimized.onnx").graph.node}
    assert "LayerNormalization" in ops and "SkipLayerNormalization" not in ops
    options = ort.SessionOptions()  # onnxruntime's defaults fuse them
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "default.onnx")
    ort.InferenceSession(str(copy / "model.onnx"), options, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" in {node.op_type for node in onnx.load(tmp_path / "default.onnx").graph.node}


def test_a_server_batcher_never_opens_paths(bundles) -> None:
    predictor = serve.load(bundles["efficientnet_lite0"])
    with MicroBatcher(predictor, max_batch_size=2, max_wait_ms=0, open_files=False) as batcher:
        for item in (PHOTOS[0], str(PHOTOS[0])):
            with pytest.raises(serve.InputError, match="file paths are not opened here"):
                batcher.submit(item).result(60)
        assert batcher.submit(PHOTOS[0].read_bytes()).result(60)["top_k"][0]["label"] == "daisy"
    assert batcher.stats.requests == 1
