"""serve.files: the one sha256 and the one atomic write that the runtime, the exporter and training share."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from serve.files import atomic_path, sha256_file, write_text_atomic


def test_sha256_of_a_file_over_several_reads(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # 2.2 MiB: three 1 MiB reads
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_a_finished_write_replaces_the_file_readable_by_all(tmp_path: Path) -> None:
    target = tmp_path / "card.json"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_two_writers_get_their_own_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the outer block finished last
