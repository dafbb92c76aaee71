"""Shared fixtures: a private cache per test session, and the two real bundles exported once.

The suite runs in pytest-xdist worker processes (pyproject: `-n auto --dist loadfile`, each file on one
worker, so module fixtures are made once). Each worker gets its share of the cores for torch and
onnxruntime's OpenMP (set before torch is imported), and the session-wide exports are made once for all
workers (`shared_once`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:  # 2 workers x 2 threads on 2 cores: each waits on the other's spinning threads
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_MODELS = ("efficientnet_lite0", "all-minilm-l6-v2")


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """A folder that `make` fills once per test run: under pytest-xdist the first worker to ask makes it
    (the others wait on a file lock) in the run's common temporary folder, and every worker reads it;
    without workers, a plain temporary folder. A failed `make` leaves no folder marked done."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".complete").touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session starts from an empty zoo cache and an empty, offline Hugging Face cache."""
    root = tmp_path_factory.mktemp("cache")
    saved = {k: os.environ.get(k) for k in ("ZOO_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "ZOO_OFFLINE", "ZOO_REGISTRY",
                                            "ZOO_LOCK", "ZOO_REQUIRE_PINNED")}
    os.environ["ZOO_CACHE"] = str(root / "zoo")
    os.environ["HF_HOME"] = str(root / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"  # this machine has no Hub; nothing may try it
    os.environ.pop("ZOO_REGISTRY", None)
    os.environ.pop("ZOO_OFFLINE", None)
    os.environ["ZOO_LOCK"] = str(root / "zoo.lock")  # never a project's ./zoo.lock
    os.environ.pop("ZOO_REQUIRE_PINNED", None)
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, private_cache: Path) -> dict[str, Path]:
    """ONNX bundles of both real backbones, exported once for the whole session."""
    from export import export_bundle

    def make(out: Path) -> None:
        for name in REAL_MODELS:
            export_bundle(name, out / name)

    out = shared_once(tmp_path_factory, "bundles", make)
    return {name: out / name for name in REAL_MODELS}


@pytest.fixture(scope="session")
def torch_models(private_cache: Path):
    import zoo

    return {name: zoo.build(name) for name in REAL_MODELS}


@pytest.fixture(scope="session")
def all_formats(tmp_path_factory: pytest.TempPathFactory, private_cache: Path) -> dict[str, Path]:
    """Both real backbones exported to every format, once for the whole session."""
    from export import export_bundle
    from export.formats import FORMAT_NAMES

    def make(out: Path) -> None:
        for name in REAL_MODELS:
            export_bundle(name, out / name, formats=FORMAT_NAMES)

    out = shared_once(tmp_path_factory, "all", make)
    return {name: out / name for name in REAL_MODELS}
