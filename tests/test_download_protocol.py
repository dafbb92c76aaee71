"""zoo.download against a raw socket server that answers each request with scripted bytes: the HTTP
edge cases a real CDN or proxy produces (416 for a stale partial file, 206 without or with the wrong
Content-Range, an unknown total, no Content-Length, a stall or a close mid-body, a refused connection),
each with the exact error a user reads, and the partial file kept or discarded as resuming needs."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Callable

import pytest

from zoo.download import RetryPolicy, download
from zoo.errors import FetchError

BODY = b"0123456789"
QUICK = dict(backoff_s=0.01, max_backoff_s=0.01, deadline_s=30, timeout_s=0.5)


class ScriptedServer:
    """Answers the n-th request with the n-th script's bytes (a script may also stall); records each
    request's headers. Beyond the script, the last entry repeats."""

    def __init__(self, scripts: list[Callable[[socket.socket, dict[str, str]], None]]) -> None:
        self.scripts = scripts
        self.requests: list[dict[str, str]] = []
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/weights.bin"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = connection.recv(4096)
                    if not piece:
                        break
                    data += piece
                lines = data.decode("latin-1").split("\r\n")[1:]
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines) if k}
                self.requests.append(headers)
                script = self.scripts[min(len(self.requests), len(self.scripts)) - 1]
                try:
                    script(connection, headers)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def reply(status: str, headers: dict[str, str], body: bytes = b"", stall: float = 0.0):
    def script(connection: socket.socket, request: dict[str, str]) -> None:
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Connection: close\r\n\r\n"
        connection.sendall(head.encode() + body)
        if stall:
            threading.Event().wait(stall)
    return script


def ranged(request: dict[str, str]) -> int:
    return int(request["range"].removeprefix("bytes=").removesuffix("-"))


def honour_range(connection: socket.socket, request: dict[str, str]) -> None:
    """A correct server: 206 with Content-Range for a Range request, else 200; 416 past the end."""
    if "range" not in request:
        return reply("200 OK", {"Content-Length": str(len(BODY))}, BODY)(connection, request)
    start = ranged(request)
    if start >= len(BODY):
        return reply("416 Range Not Satisfiable", {"Content-Range": f"bytes */{len(BODY)}", "Content-Length": "0"})(connection, request)
    reply("206 Partial Content", {"Content-Range": f"bytes {start}-{len(BODY) - 1}/{len(BODY)}",
                                  "Content-Length": str(len(BODY) - start)}, BODY[start:])(connection, request)


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "weights.bin", tmp_path / ".weights.bin.partial"


def run(scripts, dest: Path, partial: Path, attempts: int) -> ScriptedServer:
    server = ScriptedServer(scripts)
    try:
        download(server.url, dest, partial, RetryPolicy(attempts=attempts, **QUICK))
    finally:
        server.close()
    return server


def failure(scripts, dest: Path, partial: Path, attempts: int = 1) -> tuple[str, ScriptedServer]:
    server = ScriptedServer(scripts)
    try:
        with pytest.raises(FetchError) as caught:
            download(server.url, dest, partial, RetryPolicy(attempts=attempts, **QUICK))
    finally:
        server.close()
    return str(caught.value).split(": ", 2)[-1], server  # the failures, after "URL: gave up after ..."


def test_a_partial_file_longer_than_the_upstream_is_discarded_on_416_and_the_file_fetched_again(files) -> None:
    dest, partial = files
    partial.write_bytes(BODY + b"stale")
    server = run([honour_range], dest, partial, attempts=2)
    assert dest.read_bytes() == BODY and not partial.exists()
    assert [r.get("range") for r in server.requests] == ["bytes=15-", None]
    partial.write_bytes(BODY + b"stale")
    message, _ = failure([honour_range], dest, partial)
    assert message == "attempt 1: stale partial download discarded (HTTP 416)" and not partial.exists()


def test_a_permanent_error_on_resume_keeps_the_partial_file(files) -> None:
    """404 while resuming is not retried and is not a reason to throw away what arrived."""
    dest, partial = files
    partial.write_bytes(BODY[:4])
    server = ScriptedServer([reply("404 Not Found", {"Content-Length": "0"})])
    try:
        with pytest.raises(FetchError, match=r"/weights\.bin: HTTP 404 Not Found$"):
            download(server.url, dest, partial, RetryPolicy(attempts=3, **QUICK))
    finally:
        server.close()
    assert len(server.requests) == 1 and partial.read_bytes() == BODY[:4] and not dest.exists()


def test_a_refused_connection_names_the_reason(files) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(FetchError) as caught:
        download(f"http://127.0.0.1:{port}/w", *files, RetryPolicy(attempts=2, **QUICK))
    assert str(caught.value).endswith("attempt 1: [Errno 111] Connection refused; attempt 2: [Errno 111] Connection refused")


def test_a_server_that_never_answers_times_out(files) -> None:
    message, server = failure([lambda connection, request: threading.Event().wait(2.0)], *files)
    assert message == "attempt 1: timed out", message
    assert len(server.requests) == 1


def test_206_without_content_range_is_refused_then_recovered(files) -> None:
    dest, partial = files
    partial.write_bytes(BODY[:4])
    no_range = reply("206 Partial Content", {"Content-Length": "6"}, BODY[4:])
    message, _ = failure([no_range], dest, partial)
    assert message == "attempt 1: server answered the range request with None" and not partial.exists()
    partial.write_bytes(BODY[:4])
    server = run([no_range, honour_range], dest, partial, attempts=2)
    assert dest.read_bytes() == BODY and [r.get("range") for r in server.requests] == ["bytes=4-", None]


def test_206_for_another_offset_is_never_appended(files) -> None:
    """A range that starts elsewhere than the partial file ends (here: 206 to a plain request) would
    splice the wrong bytes: the partial file is dropped and the attempt fails."""
    dest, partial = files
    message, _ = failure([reply("206 Partial Content", {"Content-Range": "bytes 5-9/10", "Content-Length": "5"},
                                BODY[5:])], dest, partial)
    assert message == "attempt 1: server answered the range request with 'bytes 5-9/10'"
    assert not partial.exists() and not dest.exists()


def test_a_range_answer_with_an_unknown_total_resumes(files) -> None:
    dest, partial = files
    partial.write_bytes(BODY[:4])
    run([reply("206 Partial Content", {"Content-Range": "bytes 4-9/*", "Content-Length": "6"}, BODY[4:])],
        dest, partial, attempts=1)
    assert dest.read_bytes() == BODY


def test_a_body_without_content_length_is_read_to_the_close(files) -> None:
    dest, partial = files
    run([reply("200 OK", {}, BODY)], dest, partial, attempts=1)
    assert dest.read_bytes() == BODY


def test_a_stall_mid_body_keeps_the_chunks_read_and_counts_from_the_file_start(files) -> None:
    """Reads are 64 KiB: a stall keeps every whole chunk that arrived (the bytes of the chunk being read
    are lost and fetched again on resume)."""
    dest, partial = files
    total = 4 + 65536 + 100
    stall = reply("206 Partial Content", {"Content-Range": f"bytes 4-{total - 1}/{total}", "Content-Length": str(total - 4)},
                  bytes(65536 + 10), stall=2.0)
    partial.write_bytes(BODY[:4])
    message, _ = failure([stall], dest, partial)
    assert message == "attempt 1: connection lost after 65540 bytes (TimeoutError: timed out)", message
    assert partial.read_bytes() == BODY[:4] + bytes(65536) and not dest.exists()


def test_a_close_mid_body_is_counted_from_the_file_start(files) -> None:
    dest, partial = files
    partial.write_bytes(BODY[:4])
    short = reply("206 Partial Content", {"Content-Range": "bytes 4-9/10", "Content-Length": "6"}, BODY[4:6])
    message, _ = failure([short], dest, partial)
    assert message == "attempt 1: connection closed after 6 of 10 bytes", message
    assert partial.read_bytes() == BODY[:6]
    run([honour_range], dest, partial, attempts=1)  # and the next attempt resumes at byte 6
    assert dest.read_bytes() == BODY
