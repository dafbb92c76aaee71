"""`zoo pin SPEC`: a model spec written down as a registry entry (the file $ZOO_REGISTRY can list), with
full sha256s where the lock recorded them on a fetch, so that the entry pins its files by itself, and, when
the weights are at hand (fetched into the cache), reference outputs for `zoo validate`: the model's outputs
on its task's fixed inputs as pinned, so later library versions or builds that change them are caught."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serve.files import write_text_atomic
from zoo.errors import InputError
from zoo.registry import FORMAT_VERSION, shipped_label_sets, validate_document
from zoo.schema import ModelEntry


def pin(spec: str, registry: Path, name: str | None = None) -> dict[str, Any]:
    """Add (or replace) `spec`'s entry, called `name` (default: the spec's id), in the registry file
    `registry`, created when missing; the whole file is validated before it is written. Returns the record."""
    from zoo.lock import locked_files
    from zoo.specs import is_spec, spec_entry, spec_record

    if not is_spec(spec):
        raise InputError(f"{spec!r} is not a model spec (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2); registry "
                         "entries are pinned already")
    record, label_sets = spec_record(spec)
    entry = spec_entry(spec, record, label_sets)
    locked = locked_files(entry)  # digests of a fetch, under the spec's own id
    for file in record["files"]:
        if file["name"] in locked and "sha256" not in file:
            file.pop("sha256_prefix", None)
            file["sha256"] = locked[file["name"]]
    reference = _reference(spec, entry)
    if reference is not None:
        record["reference"] = reference
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


REFERENCE_KINDS = ("logits", "embedding")  # outputs a registry reference stores: one row per input


def _reference(spec: str, entry: ModelEntry) -> dict[str, Any] | None:
    """The registry `reference` of `entry` built from its cached, pinned files, or None when they are not
    all in the cache (nothing is downloaded) or its outputs are not one row per input."""
    import torch

    from zoo.cache import cached
    from zoo.factory import build
    from zoo.preprocess import load_tokenizer
    from zoo.tasks import get_task, implementation
    from zoo.tolerances import REFERENCE_ATOL
    from zoo.validation import reference_outputs

    fetched = cached(entry)
    if fetched is None or entry.output.kind not in REFERENCE_KINDS:
        return None
    tokenizer = load_tokenizer(fetched.files[entry.input.tokenizer], entry.input) if entry.modality == "text" else None
    model = build(entry, pretrained=True)
    cases = reference_outputs(entry, model, implementation(get_task(entry.task)).reference_cases(entry), tokenizer)
    return {"producer": f"zoo pin {spec} (builder {entry.builder}, torch {torch.__version__}): the pinned weights' "
                        "own outputs, not an independent implementation's", "atol": REFERENCE_ATOL, "cases": cases}
