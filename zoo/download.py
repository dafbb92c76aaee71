"""HTTP(S) downloads that survive real networks: retries with exponential back-off inside a bounded
total time, resume of an interrupted transfer with a Range request, per-read timeouts, and a
clear error for what will not get better by retrying (404, redirect loops)."""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import FetchError

_CHUNK = 1 << 16  # small reads: a killed or dropped transfer keeps what arrived
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff_s: float = 0.5  # doubled after every failed attempt, capped at max_backoff_s
    max_backoff_s: float = 8.0
    deadline_s: float = 900.0  # no new attempt starts after this much time
    timeout_s: float = 60.0  # per connect / read

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        """Defaults, overridable by ZOO_FETCH_RETRIES, ZOO_FETCH_TIMEOUT and ZOO_FETCH_DEADLINE (seconds)."""
        def number(name: str, default: float) -> float:
            value = os.environ.get(name)
            try:
                return float(value) if value else default
            except ValueError:
                raise FetchError(f"${name}={value!r} is not a number") from None
        return cls(attempts=max(1, int(number("ZOO_FETCH_RETRIES", cls.attempts))),
                   timeout_s=number("ZOO_FETCH_TIMEOUT", cls.timeout_s),
                   deadline_s=number("ZOO_FETCH_DEADLINE", cls.deadline_s))


class _Transient(Exception):
    """A failure worth another attempt."""


def download(url: str, dest: Path, partial: Path, policy: RetryPolicy | None = None) -> None:
    """Download `url` to `dest`. Bytes accumulate in `partial`, which survives a crash so that the
    next attempt (or process) resumes it with `Range`; only a complete transfer is renamed to `dest`.
    The caller verifies the digest."""
    policy = policy or RetryPolicy.from_env()
    start = time.monotonic()
    failures: list[str] = []
    delay = policy.backoff_s
    for attempt in range(1, policy.attempts + 1):
        try:
            _attempt(url, partial, policy.timeout_s)
            os.replace(partial, dest)
            return
        except _Transient as exc:
            failures.append(f"attempt {attempt}: {exc}")
        if attempt == policy.attempts or time.monotonic() - start + delay > policy.deadline_s:
            break
        time.sleep(delay)
        delay = min(delay * 2, policy.max_backoff_s)
    elapsed = time.monotonic() - start
    raise FetchError(f"{url}: gave up after {len(failures)} attempt(s) in {elapsed:.1f}s: " + "; ".join(failures))


def _attempt(url: str, partial: Path, timeout: float) -> None:
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": "zoo-fetch/0.1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file does not fit what the server has now
            partial.unlink()
            raise _Transient("stale partial download discarded (HTTP 416)") from None
        if exc.code in _TRANSIENT_HTTP:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        if 300 <= exc.code < 400:
            raise FetchError(f"{url}: redirect loop or too many redirects (HTTP {exc.code})") from None
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException) as exc:
        raise _Transient(f"{getattr(exc, 'reason', exc) or type(exc).__name__}") from None
    with response:
        if response.status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                partial.unlink(missing_ok=True)
                raise _Transient(f"server answered the range request with {response.headers.get('Content-Range')!r}")
            mode, expected_total = "ab", None if match.group(2) == "*" else int(match.group(2))
        else:  # 200: the whole file again, from the start
            mode, offset = "wb", 0
            length = response.headers.get("Content-Length")
            expected_total = int(length) if length is not None else None
        received = 0
        try:
            with open(partial, mode) as out:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    received += len(chunk)
        except (socket.timeout, ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Transient(f"connection lost after {offset + received} bytes ({type(exc).__name__}: {exc})") from None
    if expected_total is not None and offset + received != expected_total:
        raise _Transient(f"connection closed after {offset + received} of {expected_total} bytes")
