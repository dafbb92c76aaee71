"""Pinning on first fetch (zoo.lock): an entry pinned by less than full sha256s gets them recorded in the
lock by its first fetch; later fetches are held to them (a changed file is refused, naming both digests);
--require-pinned refuses what is not pinned yet; zoo info / zoo list say where the pins come from."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from zoo.cache import fetch, model_cache_dir
from zoo.errors import FetchError
from zoo.lock import lock_path, pin_state
from zoo.registry import get_model, shipped_registry_path
from zoo_cli import main


@pytest.fixture()
def prefix_entry(tmp_path: Path, monkeypatch):
    """A user registry entry whose weights file (in a local folder) is pinned by an 8-hex prefix only."""
    source = tmp_path / "upstream"
    source.mkdir()
    weights = source / "weights-v1.pth"
    weights.write_bytes(b"first upload of the weights")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    shipped = json.loads(shipped_registry_path().read_text())
    model = copy.deepcopy(next(m for m in shipped["models"] if m["id"] == "resnet18"))
    model.update(id="prefix-model", files=[{"name": weights.name, "role": "weights", "sha256_prefix": digest[:8]}],
                 sources=[{"kind": "path", "path": str(source)}])
    registry = tmp_path / "mine.json"
    registry.write_text(json.dumps({"format_version": 1, "label_sets": {}, "models": [model]}))
    monkeypatch.setenv("ZOO_REGISTRY", str(registry))
    monkeypatch.setenv("ZOO_LOCK", str(tmp_path / "zoo.lock"))
    return get_model("prefix-model"), weights, digest


def test_the_first_fetch_records_full_digests_and_later_fetches_are_held_to_them(prefix_entry, capsys) -> None:
    entry, weights, digest = prefix_entry
    assert pin_state(entry) == "not yet" and not lock_path().exists()
    fetched = fetch(entry)
    lock = json.loads(lock_path().read_text())
    assert lock["models"]["prefix-model"]["files"] == {weights.name: digest} and fetched.sha256[weights.name] == digest
    assert pin_state(entry) == "lock"
    assert main(["info", "prefix-model"]) == 0 and f"by the lock {lock_path()}" in capsys.readouterr().out
    fetch(entry)  # cached and still matching: fine, the lock unchanged
    assert json.loads(lock_path().read_text()) == lock
    # Upstream replaces the file (and the cached copy is gone): refused, both digests named, the lock kept.
    weights.write_bytes(b"a second, different upload")
    (model_cache_dir(entry) / weights.name).unlink()
    with pytest.raises(FetchError, match=rf"sha256 mismatch: expected {digest}, got "
                                         rf"{hashlib.sha256(weights.read_bytes()).hexdigest()}(.|\n)*pinned by the lock"):
        fetch(entry)
    assert json.loads(lock_path().read_text()) == lock and not (model_cache_dir(entry) / weights.name).exists()


def test_require_pinned_refuses_what_the_lock_has_not_seen(prefix_entry, monkeypatch, capsys) -> None:
    entry, weights, _ = prefix_entry
    monkeypatch.setenv("ZOO_REQUIRE_PINNED", "0")  # restored after the test (the flag below sets it)
    assert main(["--require-pinned", "fetch", "prefix-model"]) == 2
    err = capsys.readouterr().err
    assert f"{weights.name} not pinned" in err and "--require-pinned refuses it" in err and not lock_path().exists()
    monkeypatch.setenv("ZOO_REQUIRE_PINNED", "0")
    assert main(["fetch", "prefix-model"]) == 0  # where pinning is allowed: the lock records it
    monkeypatch.setenv("ZOO_REQUIRE_PINNED", "1")
    assert fetch(entry).sha256 and pin_state(entry) == "lock"
    assert pin_state(get_model("efficientnet_lite0")) == "registry"  # full sha256s in the entry: never locked
    fetch(get_model("efficientnet_lite0"))
    assert "efficientnet_lite0" not in json.loads(lock_path().read_text())["models"]


def test_a_project_lock_in_the_working_folder_is_used(prefix_entry, tmp_path: Path, monkeypatch) -> None:
    entry, weights, digest = prefix_entry
    project = tmp_path / "project"
    project.mkdir()
    (project / "zoo.lock").write_text(json.dumps({"format_version": 1, "models": {}}))
    monkeypatch.delenv("ZOO_LOCK")
    monkeypatch.chdir(project)
    assert lock_path() == (project / "zoo.lock").resolve()
    fetch(entry)
    assert json.loads((project / "zoo.lock").read_text())["models"]["prefix-model"]["files"] == {weights.name: digest}
    (project / "zoo.lock").write_text("{broken")
    with pytest.raises(Exception, match=r"zoo.lock cannot be read .* fix or delete it"):
        pin_state(entry)
