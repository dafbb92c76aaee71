"""Fetching under injected faults, from a real HTTP server on 127.0.0.1: every case ends in a
verified file or a clear error, the cache never holds a file whose sha256 does not match, and a
later fetch recovers."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zoo.cache import fetch, model_cache_dir
from zoo.errors import FetchError
from zoo.registry import get_model, shipped_registry_path
from zoo.schema import FileSpec, SourceSpec

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class FaultServer:
    """Serves PAYLOAD at /<fault>/weights.bin with the named fault; honours Range requests."""

    def sent(self, expected: int, timeout: float = 10.0) -> int:
        """bytes_sent once it reaches `expected` (or after `timeout`): the handler thread counts a chunk
        after writing it, so on a loaded machine the client may have read it before it is counted."""
        deadline = time.monotonic() + timeout
        while self.bytes_sent < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.bytes_sent

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.agents: list[str | None] = []  # User-Agent of each request
        self.bytes_sent = 0
        self.failures_left: dict[str, int] = {}
        self.drip_delay = 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, body: bytes, start: int = 0, chunk: int = 65536) -> None:
                for i in range(0, len(body), chunk):
                    piece = body[i:i + chunk]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    server.bytes_sent += len(piece)
                    if server.drip_delay:
                        time.sleep(server.drip_delay)

            def do_GET(self) -> None:  # noqa: N802
                fault = self.path.strip("/").split("/")[0]
                server.requests.append((self.path, self.headers.get("Range")))
                server.agents.append(self.headers.get("User-Agent"))
                remaining = server.failures_left.get(fault, 0)
                if fault.startswith("status"):  # /status300/...: that status, nothing else
                    self.send_response(int(fault[6:]))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault == "loop":
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault == "flaky" and remaining:
                    server.failures_left[fault] = remaining - 1
                    self.send_error(503)
                    return
                if fault == "slow":
                    time.sleep(1.5)
                body, start = PAYLOAD, 0
                if fault == "wrong":
                    body = PAYLOAD[:-1] + b"\x00"
                match = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and fault != "norange":
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if fault in ("drop", "norange") and remaining:
                    server.failures_left[fault] = remaining - 1
                    self._send(body[start:start + 300_000])
                    self.close_connection = True
                    self.connection.shutdown(2)  # the peer sees the connection drop mid-file
                    return
                self._send(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = FaultServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch) -> None:
    monkeypatch.setenv("ZOO_FETCH_TIMEOUT", "1")
    monkeypatch.setenv("ZOO_FETCH_DEADLINE", "20")


def _entry(name: str, base: str):
    return dataclasses.replace(get_model("resnet18"), id=name,
                               files=(FileSpec(name="weights.bin", role="weights", sha256=DIGEST),),
                               sources=(SourceSpec(kind="url", base_url=base),))


def _clean(directory: Path) -> None:
    """Nothing in the cache that a later run could take for a complete, verified file."""
    for path in directory.iterdir():
        if path.name == "weights.bin":
            assert hashlib.sha256(path.read_bytes()).hexdigest() == DIGEST
        assert not path.name.endswith((".tmp",)) or path.name.startswith(".")


def test_http_503_then_success(server: FaultServer) -> None:
    server.failures_left["flaky"] = 2
    fetched = fetch(_entry("flaky", server.base + "flaky/"))
    assert fetched.sha256["weights.bin"] == DIGEST
    assert len(server.requests) == 3


def test_dropped_connection_resumes_with_range(server: FaultServer) -> None:
    server.failures_left["drop"] = 2
    fetched = fetch(_entry("drop", server.base + "drop/"))
    assert fetched.files["weights.bin"].read_bytes() == PAYLOAD
    ranges = [r for _, r in server.requests]
    assert ranges == [None, "bytes=300000-", "bytes=600000-"]
    assert server.sent(len(PAYLOAD)) == len(PAYLOAD)  # not one byte sent twice


def test_dropped_connection_without_range_support_restarts(server: FaultServer) -> None:
    server.failures_left["norange"] = 1
    fetched = fetch(_entry("norange", server.base + "norange/"))
    assert fetched.files["weights.bin"].read_bytes() == PAYLOAD
    assert server.sent(300_000 + len(PAYLOAD)) == 300_000 + len(PAYLOAD)


def test_wrong_content_with_correct_length(server: FaultServer) -> None:
    entry = _entry("wrong", server.base + "wrong/")
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(entry)
    assert not (model_cache_dir(entry) / "weights.bin").exists()
    assert not list(model_cache_dir(entry).glob("*.partial")) and not list(model_cache_dir(entry).glob(".*.partial"))


def test_slow_server_times_out_within_the_deadline(server: FaultServer, monkeypatch) -> None:
    monkeypatch.setenv("ZOO_FETCH_RETRIES", "2")
    start = time.monotonic()
    with pytest.raises(FetchError, match="gave up after 2 attempt"):
        fetch(_entry("slow", server.base + "slow/"))
    assert time.monotonic() - start < 10


def test_redirect_loop_is_not_retried(server: FaultServer) -> None:
    with pytest.raises(FetchError, match="redirect loop"):
        fetch(_entry("loop", server.base + "loop/"))
    assert len(server.requests) <= 12  # urllib's own redirect limit, no retries on top


def _registry_with(tmp_path: Path, base: str) -> Path:
    document = json.loads(shipped_registry_path().read_text())
    model = copy.deepcopy(next(m for m in document["models"] if m["id"] == "resnet18"))
    model.update(id="served", files=[{"name": "weights.bin", "role": "weights", "sha256": DIGEST}],
                 sources=[{"kind": "url", "base_url": base}])
    document["models"] = [model]
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(document))
    return path


def _zoo(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zoo_cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_processes_one_download(server: FaultServer, tmp_path: Path) -> None:
    server.drip_delay = 0.02  # ~0.3 s per file: the two processes overlap
    env = {**os.environ, "ZOO_REGISTRY": str(_registry_with(tmp_path, server.base + "ok/")),
           "ZOO_CACHE": str(tmp_path / "cache")}
    processes = [_zoo(["fetch", "served"], env) for _ in range(2)]
    results = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    assert len(server.requests) == 1 and server.sent(len(PAYLOAD)) == len(PAYLOAD)
    assert (tmp_path / "cache" / "models" / "served" / "weights.bin").read_bytes() == PAYLOAD


def test_killed_download_leaves_nothing_complete_and_resumes(server: FaultServer, tmp_path: Path) -> None:
    server.drip_delay = 0.2  # 16 chunks of 64 KiB: ~3 s for the file
    cache = tmp_path / "cache"
    env = {**os.environ, "ZOO_REGISTRY": str(_registry_with(tmp_path, server.base + "ok/")), "ZOO_CACHE": str(cache)}
    process = _zoo(["fetch", "served"], env)
    deadline = time.monotonic() + 30
    while server.bytes_sent < 4 * 65536 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    folder = cache / "models" / "served"
    assert not (folder / "weights.bin").exists()
    sent_before = server.bytes_sent
    server.drip_delay = 0.0
    done = _zoo(["fetch", "served"], env)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert (folder / "weights.bin").read_bytes() == PAYLOAD
    assert server.requests[-1][1] is not None and server.requests[-1][1].startswith("bytes=")  # resumed
    assert server.bytes_sent - sent_before < len(PAYLOAD)


def test_attempts_backoff_and_the_final_error(server: FaultServer, tmp_path: Path, monkeypatch) -> None:
    """Exactly `attempts` requests, the wait doubling up to its cap, every failure named in the error."""
    from zoo import download as downloading

    server.failures_left["flaky"] = 100
    slept: list[float] = []
    monkeypatch.setattr(downloading.time, "sleep", slept.append)
    policy = downloading.RetryPolicy(attempts=6, backoff_s=0.5, max_backoff_s=3.0, deadline_s=60, timeout_s=1)
    with pytest.raises(FetchError) as caught:
        downloading.download(server.base + "flaky/weights.bin", tmp_path / "w", tmp_path / ".w.partial", policy)
    assert len(server.requests) == 6 and slept == [0.5, 1.0, 2.0, 3.0, 3.0]
    message = str(caught.value)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/flaky/weights\.bin: gave up after 6 attempt\(s\) in 0\.\ds: "
                        r"attempt 1: HTTP 503 Service Unavailable; attempt 2: .*; attempt 6: HTTP 503 Service Unavailable",
                        message), message
    assert set(server.agents) == {"zoo-fetch/0.1"} and not (tmp_path / "w").exists()


def test_no_attempt_starts_past_the_deadline(server: FaultServer, tmp_path: Path) -> None:
    from zoo import download as downloading

    server.failures_left["flaky"] = 100
    policy = downloading.RetryPolicy(attempts=10, backoff_s=0.05, max_backoff_s=1.0, deadline_s=0.12, timeout_s=1)
    with pytest.raises(FetchError, match=r"gave up after 2 attempt\(s\)"):
        downloading.download(server.base + "flaky/weights.bin", tmp_path / "w", tmp_path / ".w.partial", policy)
    assert len(server.requests) == 2  # 0.05 s waited after the first; 0.05 + 0.1 would pass 0.12 s


def test_retry_settings_from_the_environment(monkeypatch) -> None:
    from zoo.download import RetryPolicy

    monkeypatch.setenv("ZOO_FETCH_RETRIES", "0")
    monkeypatch.setenv("ZOO_FETCH_TIMEOUT", "2.5")
    monkeypatch.setenv("ZOO_FETCH_DEADLINE", "7")
    assert RetryPolicy.from_env() == RetryPolicy(attempts=1, timeout_s=2.5, deadline_s=7.0)
    for name in ("ZOO_FETCH_RETRIES", "ZOO_FETCH_TIMEOUT", "ZOO_FETCH_DEADLINE"):
        monkeypatch.delenv(name)
    assert RetryPolicy.from_env() == RetryPolicy()
    monkeypatch.setenv("ZOO_FETCH_DEADLINE", "soon")
    with pytest.raises(FetchError, match=r"^\$ZOO_FETCH_DEADLINE='soon' is not a number$"):
        RetryPolicy.from_env()


@pytest.mark.parametrize(("status", "message"), [
    (300, r"redirect loop or too many redirects \(HTTP 300\)"),
    (399, r"redirect loop or too many redirects \(HTTP 399\)"),
    (400, r"HTTP 400 Bad Request$"),
    (404, r"HTTP 404 Not Found$"),
])
def test_permanent_http_errors_are_not_retried(server: FaultServer, tmp_path: Path, status: int, message: str) -> None:
    from zoo.download import download

    with pytest.raises(FetchError, match=message):
        download(server.base + f"status{status}/weights.bin", tmp_path / "w", tmp_path / ".w.partial")
    assert len(server.requests) == 1
