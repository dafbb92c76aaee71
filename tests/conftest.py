"""Shared fixtures: a private cache per test session, and the two real bundles exported once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_MODELS = ("efficientnet_lite0", "all-minilm-l6-v2")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session starts from an empty zoo cache and an empty, offline Hugging Face cache."""
    root = tmp_path_factory.mktemp("cache")
    saved = {k: os.environ.get(k) for k in ("ZOO_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "ZOO_OFFLINE", "ZOO_REGISTRY")}
    os.environ["ZOO_CACHE"] = str(root / "zoo")
    os.environ["HF_HOME"] = str(root / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"  # this machine has no Hub; nothing may try it
    os.environ.pop("ZOO_REGISTRY", None)
    os.environ.pop("ZOO_OFFLINE", None)
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

    out = tmp_path_factory.mktemp("bundles")
    return {name: export_bundle(name, out / name).directory for name in REAL_MODELS}


@pytest.fixture(scope="session")
def torch_models(private_cache: Path):
    import zoo

    return {name: zoo.build(name) for name in REAL_MODELS}


@pytest.fixture(scope="session")
def all_formats(tmp_path_factory: pytest.TempPathFactory, private_cache: Path) -> dict[str, Path]:
    """Both real backbones exported to every format, once for the whole session."""
    from export import export_bundle
    from export.bundle import FORMATS

    out = tmp_path_factory.mktemp("all")
    return {name: export_bundle(name, out / name, formats=FORMATS).directory for name in REAL_MODELS}
