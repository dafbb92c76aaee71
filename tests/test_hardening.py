"""Issue 17: the server and the runtime under hostile and careless input. HTTP cases run against the
real server on 127.0.0.1 (tests/test_http.py's Server); limits, isolation of bad inputs inside a
micro-batch, an event loop that keeps answering, manifests that do not match their model."""

from __future__ import annotations

import io
import json
import shutil
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

import serve
from serve.limits import Limits
from serve.files import sha256_file
from test_http import PHOTO, Server
from zoo_cli import main


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds almost none: what a decompression bomb sends."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_server(bundles):
    server = Server(bundles["efficientnet_lite0"], max_wait_ms=10.0, inference_timeout_s=300.0)
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def text_server(bundles):
    # The worst accepted batch takes seconds here and more on a loaded machine: the timeout is not under test.
    server = Server(bundles["all-minilm-l6-v2"], max_wait_ms=20.0, inference_timeout_s=300.0)
    server.wait_ready()
    yield server
    server.stop()


def _post(server: Server, route: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{server.model}/{route}", timeout=300, **kwargs)


# --- item 2: images whose pixels would blow up memory --------------------------------------------

@pytest.mark.parametrize(("body", "limit"), [
    (png(1, 8000), "aspect ratio over the limit of 20:1 (max_aspect_ratio"),  # 1 x 8000: 2.4 GB once resized
    (png_header_only(30000, 30000), "exceeds the limit of 40,000,000 (max_image_pixels"),
    (png_header_only(12000, 8000), "exceeds the limit of 40,000,000 (max_image_pixels"),
])
def test_images_over_a_limit_are_413_naming_it(image_server, body: bytes, limit: str) -> None:
    response = _post(image_server, "predict", content=body, headers={"content-type": "image/png"})
    assert response.status_code == 413 and limit in response.json()["error"], response.text
    assert "--max-" in response.json()["error"]  # how to raise it


def _liveness_while(server, post) -> tuple[list[float], float]:
    """Poll /v2/health/live while `post()` runs in another thread: the latencies, and the request's time."""
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        pending = pool.submit(post)
        latencies = []
        while not pending.done():
            poll = time.perf_counter()
            assert httpx.get(server.url + "/v2/health/live", timeout=30).status_code == 200
            latencies.append(time.perf_counter() - poll)
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
    response = pending.result()
    assert response.status_code == 200, response.text[:300]
    return latencies, elapsed


def _never_stalled(latencies: list[float], elapsed: float) -> None:
    """Work on the event loop would hold one liveness reply for most of the request (seconds); off the loop
    replies take < 100 ms (nine in ten on an idle machine), and no single one waits more than a few scheduler
    slices while the server's threads fill both cores (0.137 s seen on CI; p90 0.14 s and max 0.16 s here with
    a benchmark on the same two cores, hence the bounds)."""
    assert len(latencies) >= 3, (latencies, elapsed)
    assert sorted(latencies)[int(0.9 * (len(latencies) - 1))] < 0.25, latencies
    assert max(latencies) < min(1.0, elapsed / 3), (max(latencies), elapsed, latencies)

def test_worst_accepted_image_keeps_memory_and_liveness(image_server) -> None:
    """The largest image the limits accept, decoded while /v2/health/live is polled: liveness never
    stalls (_never_stalled), and the server's RSS comes back to within 20 % of its warm level."""
    for _ in range(3):  # warm: arenas and caches at their steady state for normal photos
        assert _post(image_server, "predict", content=PHOTO, headers={"content-type": "image/jpeg"}).status_code == 200
    warm = image_server.rss_kib()
    worst = png(8000, 5000)  # 40 MP, exactly the limit
    latencies, elapsed = _liveness_while(image_server, lambda: _post(
        image_server, "predict", content=worst, headers={"content-type": "image/png"}))
    _never_stalled(latencies, elapsed)
    time.sleep(0.5)
    after = image_server.rss_kib()
    assert after <= 1.2 * warm, (warm, after)


# --- items 3, 5: KServe infer for text, limits on what a request may ask -------------------------

def _ids(batch: int, length: int, value: int | float = 101, datatype: str = "INT64", mask_length: int | None = None):
    mask_length = length if mask_length is None else mask_length
    return {"inputs": [
        {"name": "input_ids", "shape": [batch, length], "datatype": datatype, "data": [value] * (batch * length)},
        {"name": "attention_mask", "shape": [batch, mask_length], "datatype": "INT64", "data": [1] * (batch * mask_length)},
    ]}


@pytest.mark.parametrize(("body", "status", "message"), [
    (_ids(128, 512), 413, "128 inputs in one request exceed the limit of 64"),
    (_ids(1, 100_000), 400, "this model takes at most 256"),
    (_ids(1, 8, 10**9), 400, "the vocabulary has ids 0..30521"),
    (_ids(1, 8, 2**70), 400, "does not fit INT64"),
    (_ids(1, 8, 300, "UINT8"), 400, "does not fit UINT8"),
    (_ids(1, 8, mask_length=7), 400, "differs from input_ids'"),
    (_ids(1, 8, -1), 400, "the vocabulary has ids"),
])
def test_text_infer_limits(text_server, body, status: int, message: str) -> None:
    response = _post(text_server, "infer", json=body)
    assert response.status_code == status and message in response.json()["error"], response.text


@pytest.mark.parametrize(("content", "message"), [
    (b'{"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [NaN]}]}', "NaN is not a number"),
    (b'{"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "FP32", "data": [Infinity]}]}', "Infinity"),
    (b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply"),
])
def test_json_that_python_would_accept_or_choke_on_is_400(text_server, content: bytes, message: str) -> None:
    response = _post(text_server, "infer", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_inputs_and_text_length_are_capped(text_server) -> None:
    many = _post(text_server, "predict", json={"inputs": ["a text"] * 10_000})
    assert many.status_code == 413 and "10000 inputs in one request exceed the limit of 64" in many.json()["error"]
    huge = _post(text_server, "predict", content=("word " * 3_000_000).encode(), headers={"content-type": "text/plain"})
    assert huge.status_code == 413 and "exceeds the limit of 100,000 (max_text_chars" in huge.json()["error"]


def test_a_full_text_batch_keeps_memory_and_liveness(text_server) -> None:
    """The worst accepted text request (64 texts of 100,000 characters: tokenised, then truncated to 64 x
    256 tokens) runs off the event loop: liveness never stalls meanwhile; afterwards the server's RSS is
    back within 20 % of its warm level (onnxruntime's arena kept ~330 MB more before release_memory)."""
    for _ in range(3):
        assert _post(text_server, "predict", json={"inputs": ["an ordinary sentence"] * 8}).status_code == 200
    warm = text_server.rss_kib()
    texts = [("lorem ipsum dolor " * 6000)[:100_000]] * 64
    latencies, elapsed = _liveness_while(text_server, lambda: _post(text_server, "predict", json={"inputs": texts}))
    _never_stalled(latencies, elapsed)
    time.sleep(0.5)
    after = text_server.rss_kib()
    assert after <= 1.2 * warm, (warm, after)


# --- item 4: one bad request inside a micro-batch fails alone ------------------------------------

def test_a_bad_text_fails_only_its_own_request(text_server) -> None:
    bad = b'{"inputs": ["\\ud800"]}'  # a lone surrogate: valid JSON, not valid Unicode text

    def one(index: int) -> int:
        if index % 8 == 0:
            return _post(text_server, "predict", content=bad, headers={"content-type": "application/json"}).status_code
        return _post(text_server, "predict", json={"inputs": [f"innocent request {index}"]}).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(80)))
    assert [s for i, s in enumerate(statuses) if i % 8 == 0] == [400] * 10
    assert [s for i, s in enumerate(statuses) if i % 8] == [200] * 70


def test_a_batch_that_fails_as_a_whole_is_retried_request_by_request(bundles) -> None:
    """Fault injection below the input checks: the micro-batch's run fails whenever it holds the poisoned
    text; the batcher then runs each request alone, so only that one fails."""
    from serve.batching import MicroBatcher

    predictor = serve.load(bundles["all-minilm-l6-v2"])
    original = predictor.run_texts

    def fragile(texts):
        if "poison" in texts:
            raise RuntimeError("the kernel failed on this batch")
        return original(texts)

    predictor.run_texts = fragile
    with MicroBatcher(predictor, max_batch_size=8, max_wait_ms=300) as batcher:
        futures = [batcher.submit(text) for text in ("one", "two", "poison", "three")]
        results = [f.exception(60) or f.result() for f in futures]
    assert isinstance(results[2], RuntimeError)
    assert all(isinstance(r, dict) and len(r["embedding"]) == 384 for i, r in enumerate(results) if i != 2)


# --- item 6: errors are JSON with the right status, and counted -----------------------------------

def test_odd_queries_unknown_routes_and_methods_are_json(image_server) -> None:
    superscript = _post(image_server, "predict?top_k=\u00b2", content=PHOTO, headers={"content-type": "image/jpeg"})
    assert superscript.status_code == 400 and "top_k" in superscript.json()["error"]
    missing = httpx.get(image_server.url + "/v2/nothing/here")
    assert missing.status_code == 404 and "Not Found" in missing.json()["error"]
    method = httpx.get(f"{image_server.url}/v2/models/{image_server.model}/predict")
    assert method.status_code == 405 and "Method Not Allowed" in method.json()["error"]


def test_an_internal_error_is_a_counted_json_500(bundles) -> None:
    """Fault injection in-process: the predictor raises something unexpected; the reply is a JSON 500
    and zoo_requests_total counts it."""
    import asyncio

    from serve.http import ServerConfig, create_app

    predictor = serve.load(bundles["efficientnet_lite0"])

    def broken(*args, **kwargs):
        raise RuntimeError("unexpected")

    predictor.run = broken
    app = create_app(ServerConfig(bundle=bundles["efficientnet_lite0"]), predictor)

    async def scenario():
        async with app.router.lifespan_context(app):
            for _ in range(200):
                if app.state.zoo.predictor is not None:
                    break
                await asyncio.sleep(0.05)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                body = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                    "data": [0.0] * (3 * 224 * 224)}]}
                reply = await client.post("/v2/models/efficientnet_lite0/infer", json=body)
                metrics = await client.get("/metrics")
        return reply, metrics.text

    predictor.warm_up = lambda *args: None  # warm-up calls run(), which is broken here
    reply, metrics = asyncio.run(scenario())
    assert reply.status_code == 500 and reply.json() == {"error": "internal error; see the server log"}
    assert 'zoo_requests_total{endpoint="infer",status="500"} 1.0' in metrics


# --- item 7: manifests that do not match their model ----------------------------------------------

def _edited(bundle: Path, tmp_path: Path, edit, files: dict[str, bytes] | None = None) -> Path:
    """A copy of `bundle` with its manifest edited (and files replaced), digests rewritten to match:
    what a careless hand edit leaves."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    for name, content in (files or {}).items():
        (copy / name).write_bytes(content)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    manifest["files"] = {name: sha256_file(copy / name) for name in manifest["files"]}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _set(path: str, value):
    def edit(manifest: dict) -> None:
        keys = path.split(".")
        target = manifest
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return edit


@pytest.mark.parametrize(("model", "edit", "files", "message"), [
    ("efficientnet_lite0", _set("inputs.0.name", "pixels"), None, "'pixels' is not one of the inputs of model.onnx"),
    ("efficientnet_lite0", _set("outputs.0.name", "scores"), None, "'scores' is not one of the outputs"),
    ("efficientnet_lite0", _set("inputs.0.dtype", "complex128"), None, "inputs[0].dtype: 'complex128' is not one of"),
    ("efficientnet_lite0", _set("inputs.0.dtype", "int64"), None, "pixel_values is int64 ['batch', 3, 224, 224] in the manifest but float32"),
    ("efficientnet_lite0", _set("inputs.0.shape", []), None, "inputs[0].shape: [] should be non-empty"),
    ("efficientnet_lite0", _set("preprocessing.resize", -256), None, "preprocessing.resize: -256 is less than the minimum of 1"),
    ("all-minilm-l6-v2", _set("preprocessing.max_length", -1), None, "preprocessing.max_length: -1 is less than the minimum of 1"),
    ("all-minilm-l6-v2", _set("preprocessing.pad_id", 10**12), None, "is not an id of the tokenizer's vocabulary"),
    ("all-minilm-l6-v2", lambda m: None, {"tokenizer.json": b"\x00garbage"}, "is not a tokenizers tokenizer.json"),
    ("all-minilm-l6-v2", lambda m: None, {"tokenizer.json": b"[PAD]\n[UNK]\nthe\n"}, "is not a tokenizers tokenizer.json"),
])
def test_inconsistent_manifests_are_one_line_at_load(bundles, tmp_path: Path, capsys, model: str, edit, files,
                                                     message: str) -> None:
    bundle = _edited(bundles[model], tmp_path, edit, files)
    with pytest.raises(serve.BundleError, match="manifest|tokenizer"):
        serve.load(bundle)
    code = main(["predict", str(bundle), "x"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code = main(["serve", str(bundle), "--port", "0"])  # never starts: exits like predict
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_manifest_that_is_a_folder_or_nested_too_deep(bundles, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "folder"
    shutil.copytree(bundles["efficientnet_lite0"], folder)
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir()
    assert main(["predict", str(folder), "x"]) == 2 and "cannot be read" in capsys.readouterr().err
    nested = tmp_path / "nested"
    shutil.copytree(bundles["efficientnet_lite0"], nested)
    (nested / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["predict", str(nested), "x"]) == 2 and "nests JSON too deeply" in capsys.readouterr().err


def test_a_server_whose_bundle_breaks_while_loading_reports_it(bundles, tmp_path: Path) -> None:
    """The loading thread never dies silently: readiness says what failed (was 503 "loading" forever)."""
    bundle = _edited(bundles["efficientnet_lite0"], tmp_path, _set("inputs.0.name", "pixels"))
    server = Server(bundle)
    try:
        deadline = time.monotonic() + 30
        while "failed to load" not in (reply := httpx.get(server.url + "/v2/health/ready")).text:
            assert time.monotonic() < deadline, reply.text
            time.sleep(0.1)
        assert reply.status_code == 503 and "'pixels' is not one of the inputs" in reply.json()["error"]
    finally:
        server.stop()


# --- item 10: the CLI's "exit 2, one line" -----------------------------------------------------------

def test_cli_bad_inputs_are_one_line(bundles, tmp_path: Path, capsys) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30000, 30000))
    assert main(["predict", str(bundles["efficientnet_lite0"]), str(bomb)]) == 2
    err = capsys.readouterr().err
    assert "max_image_pixels" in err and len(err.strip().splitlines()) == 1, err
    undecodable = b"\xff\xfe".decode("utf-8", "surrogateescape")  # what argv holds for $'\xff\xfe'
    assert main(["predict", str(bundles["all-minilm-l6-v2"]), undecodable]) == 2
    err = capsys.readouterr().err
    assert "not valid Unicode text" in err and len(err.strip().splitlines()) == 1, err
    assert main(["serve", str(bundles["efficientnet_lite0"]), "--variant", "int8", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "has no 'int8' variant" in err and len(err.strip().splitlines()) == 1, err
    assert main(["list", "--task", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "'bogus' is not a task of the registry" in err and "image-classification" in err


def test_serve_on_a_port_in_use_is_one_line(bundles, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(bundles["efficientnet_lite0"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1, err


def test_limits_are_checked(bundles) -> None:
    predictor = serve.load(bundles["efficientnet_lite0"], limits=Limits(max_image_pixels=100 * 100))
    with pytest.raises(serve.InputError, match="exceeds the limit of 10,000"):
        predictor.predict([png(101, 100)])
    assert predictor.predict([png(100, 100)])[0]["top_k"]
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        Limits(max_aspect_ratio=0.5)


def test_a_plain_pickle_weights_file_is_refused_without_torch_warnings(tmp_path: Path) -> None:
    import pickle
    import warnings

    from zoo.builders.state_dict import read_state_dict
    from zoo.errors import BuildError

    path = tmp_path / "weights.pth"
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BuildError, match="never unpickles"):
            read_state_dict(path, "torch-state-dict")
    assert caught == []


def test_server_start_prints_no_warnings(bundles) -> None:
    """Item 11: a deprecation warning printed at every server start (Starlette's async-generator lifespan)."""
    server = Server(bundles["efficientnet_lite0"])
    server.wait_ready()
    server.stop()
    output = server.process.stdout.read()
    assert "Warning" not in output and "serve: " in output, output


def test_compute_threads_run_below_the_event_loop(bundles) -> None:
    """serve.priority: onnxruntime's, the batcher's and the preprocessing threads run at nice 5, the event
    loop (uvicorn's main thread) at the server's own level, so liveness wins a saturated CPU. Two intra-op
    threads, so onnxruntime has a pool thread of its own (its default is one per physical core: none on a
    machine with one core and two hyperthreads)."""
    server = Server(bundles["efficientnet_lite0"], session={"intra_op_threads": 2})
    try:
        server.wait_ready()
        assert _post(server, "predict", content=PHOTO, headers={"content-type": "image/jpeg"}).status_code == 200
        pid = server.process.pid
        nice = {}
        for task in Path(f"/proc/{pid}/task").iterdir():
            nice[int(task.name)] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])  # field 19
    finally:
        server.stop()
    assert nice.pop(pid) == 0, nice  # uvicorn's event loop runs in the main thread
    assert set(nice.values()) == {5}, nice  # every other: loader, batcher, preprocessing, onnxruntime's pool
    # Not vacuous: onnxruntime's pool thread (intra_op_threads=2 makes one) and the server's own threads are
    # among them. Their exact number depends on the machine (4 here under xdist's OMP_NUM_THREADS=1, 3 on CI,
    # OpenBLAS adds one per extra core), so only the floor is pinned.
    assert len(nice) >= 3, nice


def test_inference_over_the_timeout_is_a_json_504_and_the_server_lives_on(bundles) -> None:
    """inference_timeout_s (`zoo serve --inference-timeout`): a request whose inference runs longer gets
    504 naming the limit, is counted, and the server keeps answering."""
    server = Server(bundles["efficientnet_lite0"], inference_timeout_s=0.001)
    try:
        server.wait_ready()
        response = _post(server, "predict", content=PHOTO, headers={"content-type": "image/jpeg"})
        assert response.status_code == 504, response.text
        assert response.json()["error"] == "inference did not finish within 0.001s"
        body = {"inputs": [{"name": "pixel_values", "shape": [8, 3, 224, 224], "datatype": "FP32",
                            "data": [0.0] * (8 * 3 * 224 * 224)}]}
        assert _post(server, "infer", json=body).status_code == 504
        assert httpx.get(server.url + "/v2/health/live").status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert 'zoo_requests_total{endpoint="predict",status="504"} 1.0' in metrics, metrics
    finally:
        server.stop()
