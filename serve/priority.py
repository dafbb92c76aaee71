"""CPU priority of a server's compute threads (Linux): the event loop that answers health checks and
accepts connections keeps its priority, while decoding, tokenising and onnxruntime's threads run a few
nice levels lower, so a saturated server still answers /v2/health/live at once instead of failing an
orchestrator's liveness probe. Elsewhere, or with niceness 0, nothing changes."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path


def _settable() -> bool:
    return sys.platform == "linux" and hasattr(os, "setpriority")  # Linux: PRIO_PROCESS with a thread id


def lower(niceness: int, base: int, tid: int | None = None) -> None:
    """Set thread `tid` (default: the calling one) to nice `base + niceness` (capped at 19) unless it
    is already lower. Never raises: an unprivileged process may only lower its own priority."""
    if niceness <= 0 or not _settable():
        return
    tid = tid or threading.get_native_id()
    try:
        target = min(19, base + niceness)
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError:
        pass


def lower_all_but(keep: int, niceness: int, base: int) -> None:
    """Lower every thread of this process but `keep` (threads created before the server knew which
    would be the event loop's: onnxruntime's pool when the bundle was loaded in the main thread)."""
    if niceness <= 0 or not _settable():
        return
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) != keep:
            lower(niceness, base, int(task.name))


def current() -> int:
    """The calling thread's nice value (0 where it cannot be read)."""
    if not _settable():
        return 0
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except OSError:
        return 0
