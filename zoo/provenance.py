"""Which package versions produced an artefact (bundle manifests, run cards)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Iterable


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of `names` (missing ones left out) and the Python version."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    return found
