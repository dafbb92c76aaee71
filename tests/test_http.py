"""The HTTP server, started for real on 127.0.0.1 and spoken to over HTTP: KServe v2 routes, the
predict convenience route, JSON errors, limits, metrics, a bounded load test, graceful shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import serve
from zoo.reference import SENTENCES, asset_path, synthetic_images
from zoo.registry import get_model

PHOTO = asset_path("flower.jpg").read_bytes()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`serve.http.run` in its own process, with the given ServerConfig fields."""

    def __init__(self, bundle: Path, **options):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = ("import sys, json; from pathlib import Path; from serve.http import ServerConfig, run; "
                "from serve.limits import Limits; o = json.loads(sys.argv[2]); o['limits'] = Limits(**o.get('limits', {})); from serve.providers import SessionConfig; o['session'] = SessionConfig(**o.get('session', {})); "
                "run(ServerConfig(bundle=Path(sys.argv[1]), **o), port=int(sys.argv[3]))")
        self.model = json.loads((Path(bundle) / "manifest.json").read_text()).get("model_id", "")
        self.process = subprocess.Popen([sys.executable, "-c", code, str(bundle), json.dumps(options), str(self.port)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/v2/health/live", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start: " + self.output())

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.1)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def output(self) -> str:
        if self.process.poll() is None:
            return ""
        return self.process.stdout.read()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def image_server(bundles):
    server = Server(bundles["efficientnet_lite0"], max_body_bytes=4_000_000, max_wait_ms=10.0, body_timeout_s=2.0)
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def text_server(bundles):
    server = Server(bundles["all-minilm-l6-v2"])
    server.wait_ready()
    yield server
    server.stop()


def test_metadata(image_server) -> None:
    assert httpx.get(image_server.url + "/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(image_server.url + "/v2/models/efficientnet_lite0").json()
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]
    assert httpx.get(image_server.url + "/v2/models/efficientnet_lite0/ready").status_code == 200


def test_infer_named_tensors_match_the_predictor(image_server, bundles) -> None:
    pixels = synthetic_images(get_model("efficientnet_lite0").input, 1).numpy()  # ~3 MB of JSON
    body = {"id": "req-1", "inputs": [{"name": "pixel_values", "shape": list(pixels.shape), "datatype": "FP32",
                                       "data": pixels.ravel().tolist()}]}
    response = httpx.post(image_server.url + "/v2/models/efficientnet_lite0/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert response.json()["id"] == "req-1" and output["shape"] == [1, 1000] and output["datatype"] == "FP32"
    expected = serve.load(bundles["efficientnet_lite0"]).run({"pixel_values": pixels})
    assert np.abs(np.array(output["data"]).reshape(1, 1000) - expected).max() <= 1e-5


def test_predict_route_answers_like_zoo_predict(image_server, bundles) -> None:
    response = httpx.post(image_server.url + "/v2/models/efficientnet_lite0/predict?top_k=3", content=PHOTO,
                          headers={"content-type": "image/jpeg"}, timeout=60)
    assert response.status_code == 200, response.text
    [result] = response.json()
    local = serve.load(bundles["efficientnet_lite0"]).predict([PHOTO], top_k=3)[0]
    assert [p["label"] for p in result["top_k"]] == [p["label"] for p in local["top_k"]] == ["daisy", "bee", "mushroom"]
    assert np.allclose([p["score"] for p in result["top_k"]], [p["score"] for p in local["top_k"]], atol=1e-6)


def test_text_predict(text_server, bundles) -> None:
    response = httpx.post(text_server.url + "/v2/models/all-minilm-l6-v2/predict", json={"inputs": list(SENTENCES)},
                          timeout=60)
    assert response.status_code == 200, response.text
    served = np.array([r["embedding"] for r in response.json()])
    local = np.array([r["embedding"] for r in serve.load(bundles["all-minilm-l6-v2"]).predict(list(SENTENCES))])
    assert np.abs(served - local).max() <= 1e-5
    plain = httpx.post(text_server.url + "/v2/models/all-minilm-l6-v2/predict", content="hello".encode(),
                       headers={"content-type": "text/plain"})
    assert plain.status_code == 200 and plain.json()[0]["input"] == "hello"
    bad = httpx.post(text_server.url + "/v2/models/all-minilm-l6-v2/predict", json={"inputs": ["a"], "top_k": "many"})
    assert bad.status_code == 400 and "top_k='many'" in bad.json()["error"]
    not_utf8 = httpx.post(text_server.url + "/v2/models/all-minilm-l6-v2/predict", content=b"\xff\xfe\x00bad",
                          headers={"content-type": "text/plain"})
    assert not_utf8.status_code == 400 and "not UTF-8" in not_utf8.json()["error"]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "message"), [
    ("post", "/v2/models/efficientnet_lite0/infer", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("post", "/v2/models/efficientnet_lite0/infer", {"json": {"inputs": [{"name": "pixel_values", "shape": [1, 3, 224, 224], "datatype": "FP64", "data": [0]}]}}, 400, "datatype 'FP64'"),
    ("post", "/v2/models/efficientnet_lite0/infer", {"json": {"inputs": [{"name": "pixel_values", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0.0] * 12}]}}, 400, "size 2 on axis 2"),
    ("post", "/v2/models/efficientnet_lite0/infer", {"json": {"inputs": [{"name": "pixel_values", "shape": [1, 3], "datatype": "FP32", "data": [0.0]}]}}, 400, "data does not fit FP32 of shape [1, 3]"),
    ("post", "/v2/models/efficientnet_lite0/predict", {"content": b"GIF89a nope", "headers": {"content-type": "image/gif"}}, 400, "not a readable image"),
    ("post", "/v2/models/efficientnet_lite0/predict", {"content": b"x" * 4_500_000, "headers": {"content-type": "image/jpeg"}}, 413, "exceeds the limit"),
    ("post", "/v2/models/efficientnet_lite0/predict?top_k=zero", {"content": PHOTO}, 400, "top_k"),
    ("get", "/v2/models/resnet18", {}, 404, "unknown model 'resnet18'"),
])
def test_errors_are_json(image_server, method, path, kwargs, status, message) -> None:
    response = getattr(httpx, method)(image_server.url + path, timeout=60, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_a_path_in_the_body_is_never_opened(image_server, tmp_path: Path) -> None:
    """Issue 17, item 1: a text body naming a file on the server must not be read: not classified,
    no hint of whether the path exists, and a FIFO (which blocks whoever opens it) hangs nothing."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    url = image_server.url + "/v2/models/efficientnet_lite0/predict"
    replies = []
    for path in (asset_path("flower.jpg"), tmp_path / "missing.jpg", tmp_path, fifo):
        for kind in ("text/plain", "application/json"):
            body = str(path) if kind == "text/plain" else json.dumps({"inputs": [str(path)]})
            response = httpx.post(url, content=body.encode(), headers={"content-type": kind}, timeout=10)
            assert response.status_code == 415, response.text
            replies.append(response.json()["error"].replace(kind, "KIND"))
    assert len(set(replies)) == 1 and "send the image bytes" in replies[0]  # the same words for every path
    # The path as raw bytes with an image type is decoded as an image (and is not one).
    raw = httpx.post(url, content=str(fifo).encode(), headers={"content-type": "image/jpeg"}, timeout=10)
    assert raw.status_code == 400 and "not a readable image" in raw.json()["error"]
    assert httpx.get(image_server.url + "/v2/health/live", timeout=2).status_code == 200


def test_slow_client_does_not_stall_others(image_server) -> None:
    slow = socket.create_connection(("127.0.0.1", image_server.port))
    slow.sendall(b"POST /v2/models/efficientnet_lite0/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 b"Content-Length: 100000\r\n\r\n" + PHOTO[:1000])
    start = time.monotonic()
    fast = httpx.post(image_server.url + "/v2/models/efficientnet_lite0/predict", content=PHOTO,
                      headers={"content-type": "image/jpeg"}, timeout=30)
    assert fast.status_code == 200 and time.monotonic() - start < 5
    slow.settimeout(10)
    reply = b""
    while b"within" not in reply:
        chunk = slow.recv(4096)
        if not chunk:
            break
        reply += chunk
    slow.close()
    reply = reply.decode(errors="replace")
    assert " 408 " in reply.splitlines()[0] and "not received within 2s" in reply


def test_bounded_load_no_failures_flat_memory(image_server, bundles) -> None:
    """16 concurrent clients, 320 requests (a few seconds), every answer checked, RSS before/after."""
    expected = serve.load(bundles["efficientnet_lite0"]).predict([PHOTO], top_k=1)[0]["top_k"][0]
    url = image_server.url + "/v2/models/efficientnet_lite0/predict?top_k=1"

    def one(_: int) -> tuple[int, str, float]:
        response = httpx.post(url, content=PHOTO, headers={"content-type": "image/jpeg"}, timeout=60)
        top = response.json()[0]["top_k"][0] if response.status_code == 200 else {"label": "", "score": 0.0}
        return response.status_code, top["label"], top["score"]

    with ThreadPoolExecutor(16) as pool:  # warm-up: onnxruntime's arena grows to the largest batch once
        list(pool.map(one, range(96)))
    rss_before = image_server.rss_kib()
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(320)))
    seconds = time.monotonic() - start
    rss_after = image_server.rss_kib()
    failures = [o for o in outcomes if o[0] != 200]
    assert failures == []
    assert all(label == expected["label"] and abs(score - expected["score"]) < 1e-5 for _, label, score in outcomes)
    assert rss_after - rss_before < 50 * 1024, (rss_before, rss_after)  # flat after warm-up: no per-request leak
    metrics = httpx.get(image_server.url + "/metrics").text
    assert 'zoo_requests_total{endpoint="predict",status="200"}' in metrics
    batches = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("zoo_batch_size_count")))
    requests = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("zoo_batch_size_sum")))
    assert requests >= 416 and batches < requests  # concurrent requests were merged
    print(f"\nload: 320 requests in {seconds:.1f}s ({320 / seconds:.0f}/s), mean batch {requests / batches:.1f}, "
          f"RSS {rss_before // 1024} -> {rss_after // 1024} MiB")


def _in_flight(server: Server, endpoint: str) -> float:
    metrics = httpx.get(server.url + "/metrics").text
    prefix = f'zoo_requests_in_flight{{endpoint="{endpoint}"}}'
    return next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix)), 0.0)


def test_not_ready_is_503_and_graceful_shutdown(bundles, tmp_path: Path) -> None:
    broken = tmp_path / "bundle"
    shutil.copytree(bundles["efficientnet_lite0"], broken)
    (broken / "model.onnx").write_bytes(b"tampered")
    server = Server(broken)
    try:
        time.sleep(1)
        response = httpx.get(server.url + "/v2/health/ready")
        assert response.status_code == 503 and "does not match the sha256" in response.json()["error"]
        assert httpx.post(server.url + "/v2/models/efficientnet_lite0/predict", content=PHOTO).status_code == 503
    finally:
        server.stop()
    good = Server(bundles["efficientnet_lite0"], max_wait_ms=3000.0)
    good.wait_ready()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(httpx.post(
        good.url + "/v2/models/efficientnet_lite0/predict", content=PHOTO, timeout=60).status_code)) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30  # SIGTERM only once all four are in flight (waiting in the batcher)
    while _in_flight(good, "predict") < 4:
        assert time.monotonic() < deadline, "the four requests never reached the server"
        time.sleep(0.02)
    # uvicorn finishes in-flight requests, runs the lifespan shutdown (the batcher drains), then
    # re-raises SIGTERM so a supervisor sees why it exited.
    assert good.stop() in (0, -signal.SIGTERM)
    for thread in threads:
        thread.join()
    assert results == [200, 200, 200, 200]
