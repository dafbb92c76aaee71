"""The HTTP server's settings (serve.http), importable without its web framework: `zoo serve` takes its
option defaults from here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve.engines import VARIANTS
from serve.limits import Limits
from serve.providers import SessionConfig

__all__ = ["MIB", "VARIANTS", "ServerConfig", "server_default"]
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of one served bundle; every limit has a safe default."""

    bundle: Path
    name: str | None = None  # default: the manifest's model id
    max_body_bytes: int = 16 * MIB
    body_timeout_s: float = 30.0
    inference_timeout_s: float = 30.0
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    variant: str = "auto"  # see serve.load
    session: SessionConfig = SessionConfig()
    limits: Limits = Limits()  # what one request may ask (serve.limits)
    # Threads that parse bodies and decode/tokenise inputs, off the event loop; at most this many
    # requests are being decoded at once (each holds at most one image of limits.max_image_pixels).
    preprocess_workers: int = 2
    # Nice levels below the event loop for every compute thread (serve.priority; Linux): liveness answers
    # while the cores are saturated. 0 keeps every thread at the loop's priority.
    compute_niceness: int = 5


def server_default(name: str) -> Any:
    """ServerConfig's default for the field `name`."""
    return next(f.default for f in dataclasses.fields(ServerConfig) if f.name == name)
