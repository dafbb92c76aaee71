"""`zoo pin SPEC`: a model spec written down as a registry entry (the file $ZOO_REGISTRY can list), with
full sha256s where the lock recorded them on a fetch, so that the entry pins its files by itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serve.files import write_text_atomic
from zoo.errors import InputError
from zoo.registry import FORMAT_VERSION, shipped_label_sets, validate_document


def pin(spec: str, registry: Path, name: str | None = None) -> dict[str, Any]:
    """Add (or replace) `spec`'s entry, called `name` (default: the spec's id), in the registry file
    `registry`, created when missing; the whole file is validated before it is written. Returns the record."""
    from zoo.lock import locked_files
    from zoo.specs import is_spec, spec_entry, spec_record

    if not is_spec(spec):
        raise InputError(f"{spec!r} is not a model spec (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2); registry "
                         "entries are pinned already")
    record, label_sets = spec_record(spec)
    locked = locked_files(spec_entry(spec, record, label_sets))  # digests of a fetch, under the spec's own id
    for file in record["files"]:
        if file["name"] in locked and "sha256" not in file:
            file.pop("sha256_prefix", None)
            file["sha256"] = locked[file["name"]]
    if name is not None:
        record["id"] = name
    document = {"format_version": FORMAT_VERSION, "label_sets": {}, "models": []}
    if registry.exists():
        try:
            document = json.loads(registry.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"--registry {registry} cannot be read as a registry ({exc}); fix it or name another "
                             "file") from None
    shipped = shipped_label_sets()
    if isinstance(document, dict) and isinstance(document.get("models"), list):
        document["models"] = [m for m in document["models"] if not (isinstance(m, dict) and m.get("id") == record["id"])]
        document["models"].append(record)
        document.setdefault("label_sets", {}).update(label_sets)
    validate_document(document, str(registry), inherited_label_sets=shipped)
    registry.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(registry, json.dumps(document, indent=1) + "\n")
    return record
