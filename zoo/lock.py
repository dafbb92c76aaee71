"""Pinning on first fetch, like a package manager's lock: an entry whose files are pinned by less than a full
sha256 (a torchvision:/registry entry with upstream's digest prefix, a timm: or hf: spec) gets every file's
full sha256 recorded in a lock file the first time it is fetched (and for an hf: spec, the commit its
revision resolved to, which later resolutions keep), and every later fetch is verified against it; a changed file
is refused, naming it and both digests.

The lock is `$ZOO_LOCK`, else `./zoo.lock` where a project keeps one, else `zoo.lock` in the cache.
`$ZOO_REQUIRE_PINNED` (or `zoo --require-pinned`) refuses to fetch anything that is not pinned yet."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from serve.files import write_text_atomic
from zoo.errors import FetchError, RegistryError
from zoo.schema import ModelEntry

LOCK_ENV = "ZOO_LOCK"
REQUIRE_PINNED_ENV = "ZOO_REQUIRE_PINNED"
LOCK_NAME = "zoo.lock"
FORMAT_VERSION = 1


def lock_path() -> Path:
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV]).expanduser()
    if Path(LOCK_NAME).is_file():
        return Path(LOCK_NAME).resolve()
    from zoo.cache import cache_root

    return cache_root() / LOCK_NAME


def pinned_by_entry(entry: ModelEntry) -> bool:
    """Every file has its full sha256 in the entry itself (the registry record)."""
    return all(spec.sha256 for spec in entry.files)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "models": {}}
    try:
        document = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"lock file {path} cannot be read ({exc}); fix or delete it (it is rewritten on the "
                            "next fetch)") from None
    if not isinstance(document, dict) or document.get("format_version") != FORMAT_VERSION \
            or not isinstance(document.get("models"), dict):
        raise RegistryError(f"lock file {path} is not a zoo lock (format_version {FORMAT_VERSION}); fix or delete it")
    return document


def locked_files(entry: ModelEntry) -> dict[str, str]:
    """The full sha256 of each of `entry`'s files the lock recorded, by file name."""
    record = _read(lock_path())["models"].get(entry.id, {})
    files = record.get("files", {}) if isinstance(record, dict) else {}
    return {name: digest for name, digest in files.items() if isinstance(digest, str) and len(digest) == 64}


def locked_pin(entry_id: str, spec: str) -> tuple[str, list[str]] | None:
    """(commit, file names) the lock recorded for Hub spec `spec` (entry `entry_id`) on its first fetch, or None."""
    record = _read(lock_path())["models"].get(entry_id, {})
    if isinstance(record, dict) and record.get("spec") == spec and isinstance(record.get("revision"), str) \
            and isinstance(record.get("files"), dict):
        return record["revision"], sorted(record["files"])
    return None


def pin_state(entry: ModelEntry) -> str:
    """"registry", "lock" or "not yet": where the full digests of the entry's files come from."""
    if pinned_by_entry(entry):
        return "registry"
    locked = locked_files(entry)
    return "lock" if all(spec.name in locked for spec in entry.files) else "not yet"


def with_locked_digests(entry: ModelEntry) -> ModelEntry:
    """`entry` with the lock's full sha256 on every file the entry pins by less. FetchError when the lock is
    required ($ZOO_REQUIRE_PINNED) and a file is pinned by neither."""
    if pinned_by_entry(entry):
        return entry
    locked = locked_files(entry)
    files = tuple(spec if spec.sha256 or spec.name not in locked else dataclasses.replace(spec, sha256=locked[spec.name])
                  for spec in entry.files)
    unpinned = [spec.name for spec in files if not spec.sha256]
    if unpinned and os.environ.get(REQUIRE_PINNED_ENV, "").lower() in {"1", "true", "yes", "on"}:
        raise FetchError(f"{entry.id}: {', '.join(unpinned)} not pinned (no full sha256 in its entry or in the lock "
                         f"{lock_path()}); ${REQUIRE_PINNED_ENV} / --require-pinned refuses it. Fetch it once where "
                         "pinning is allowed (the lock records it) and ship the lock")
    return dataclasses.replace(entry, files=files)


def record(entry: ModelEntry, digests: dict[str, str], origin: str) -> Path | None:
    """Write the full digests of a fetched entry that its record pins by less; None when there is nothing
    to record. `origin`: what the entry came from (a spec, a registry file)."""
    if pinned_by_entry(entry):
        return None
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = entry.extra.get("spec", "")
    hub = [source.revision for source in entry.sources if source.kind == "hf"]
    revision = {"spec": spec, "revision": hub[0]} if spec.startswith("hf:") and hub else {}
    updated = {"origin": origin, **revision, "files": dict(sorted(digests.items()))}
    with FileLock(str(path) + ".lock"):
        document = _read(path)
        if document["models"].get(entry.id) == updated:
            return path
        document["models"][entry.id] = updated
        document["models"] = dict(sorted(document["models"].items()))
        write_text_atomic(path, json.dumps(document, indent=1) + "\n")
    return path
