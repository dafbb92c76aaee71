"""What several commands share: --source-dir and the BATCH[,SEQ] shape type."""

from __future__ import annotations

from pathlib import Path

import click


def sources(source_dir: tuple[str, ...]):
    """--source-dir folders as path sources, tried before the registry's."""
    from zoo.schema import SourceSpec

    for folder in source_dir:
        if not Path(folder).is_dir():
            raise click.BadParameter(f"{folder} is not a folder", param_hint="--source-dir")
    return [SourceSpec(kind="path", path=str(Path(folder).resolve())) for folder in source_dir]


def shape(value: str | tuple[int, ...]) -> tuple[int, ...]:
    """click type: "8" -> (8,), "1,128" -> (1, 128)."""
    if isinstance(value, tuple):
        return value
    parts = value.split(",")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise click.BadParameter(f"expected BATCH or BATCH,SEQ (integers, e.g. 8 or 1,128), found {value!r}")
    return tuple(int(p) for p in parts)


source_dir_option = click.option("--source-dir", multiple=True, metavar="DIR",
                                 help="Folder holding the model's files; tried before the registry's sources.")
