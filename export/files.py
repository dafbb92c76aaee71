"""Files shared by several layouts of one bundle (Triton's and TF Serving's copies of a model)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> str:
    """A hard link where the filesystem allows one (a layout's copy costs no disk), else a copy.

    Bundle files are written once and never modified in place, so sharing their bytes is safe."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return str(target)


def link_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, copy_function=link_or_copy)


def files_under(bundle: Path, folder: Path) -> list[str]:
    """Every file below `folder`, relative to the bundle, sorted."""
    return sorted(p.relative_to(bundle).as_posix() for p in folder.rglob("*") if p.is_file())
