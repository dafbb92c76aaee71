"""Load and validate registry.json, and look entries up by name or pattern."""

from __future__ import annotations

import difflib
import fnmatch
import functools
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import jsonschema

from zoo.errors import RegistryError, UnknownModelError
from zoo.schema import (
    FileSpec,
    FinetuneDefaults,
    ImageInputSpec,
    Metric,
    ModelEntry,
    OutputSpec,
    Provenance,
    Reference,
    ReferenceCase,
    SourceSpec,
    TextInputSpec,
)
from zoo.tasks import TASKS

FORMAT_VERSION = 1
REGISTRY_ENV = "ZOO_REGISTRY"


def shipped_registry_path() -> Path:
    return Path(str(resources.files("zoo") / "registry.json"))


def registry_paths() -> list[Path]:
    """The registry files, in the order they are layered: the shipped one, then each file `$ZOO_REGISTRY`
    lists (separated by os.pathsep); a later file's entry replaces an earlier one with the same id."""
    extra = os.environ.get(REGISTRY_ENV, "")
    return [shipped_registry_path(), *(Path(p).expanduser() for p in extra.split(os.pathsep) if p.strip())]


def _schema() -> dict[str, Any]:
    return json.loads((resources.files("zoo") / "registry.schema.json").read_text("utf-8"))


def _location(document: dict[str, Any], path: Iterable[Any]) -> str:
    """Render a JSON path, naming the model entry by its id: `models[3] ('resnet18').input.mean[2]`."""
    parts: list[str] = []
    node: Any = document
    for key in path:
        if isinstance(key, int):
            parts.append(f"[{key}]")
            node = node[key] if isinstance(node, list) and key < len(node) else None
            if len(parts) == 2 and parts[0] == "models" and isinstance(node, dict) and "id" in node:
                parts.append(f" ({node['id']!r})")
        else:
            parts.append(("." if parts else "") + str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return "".join(parts) or "<document>"


def validate_document(document: Any, origin: str = "registry", inherited_label_sets: Iterable[str] = ()) -> None:
    """Raise RegistryError listing every schema violation with its exact location. `inherited_label_sets`:
    the label sets of the registries this one extends, which its entries may name."""
    if not isinstance(document, dict):
        raise RegistryError(f"{origin}: expected a JSON object at the top level, found {type(document).__name__}")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise RegistryError(
            f"{origin}: format_version {version!r} is not supported (this zoo reads version {FORMAT_VERSION}); "
            "upgrade zoo or regenerate the registry"
        )
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {_location(document, e.absolute_path)}: {_short(e)}" for e in errors[:20]]
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise RegistryError(f"{origin} does not match registry.schema.json:\n" + "\n".join(lines) + more)
    _check_semantics(document, origin, set(inherited_label_sets))


def _short(error: jsonschema.ValidationError) -> str:
    if error.validator == "oneOf" and error.context:
        # Name the closest alternative instead of "is not valid under any of the given schemas".
        best = jsonschema.exceptions.best_match(error.context)
        return best.message
    return error.message


def _check_semantics(document: dict[str, Any], origin: str, inherited_label_sets: set[str]) -> None:
    seen: set[str] = set()
    known = set(document["label_sets"]) | inherited_label_sets  # what an entry's labels may name
    for index, model in enumerate(document["models"]):
        where = f"{origin}: models[{index}] ({model['id']!r})"
        if model["id"] in seen:
            raise RegistryError(f"{where}: duplicate id; every entry needs a unique id")
        seen.add(model["id"])
        names = {f["name"] for f in model["files"]}
        if len(names) != len(model["files"]):
            raise RegistryError(f"{where}.files: duplicate file names")
        floating = [s["repo_id"] for s in model["sources"] if s["kind"] == "hf" and s["revision"] == "main"]
        digested = [f["name"] for f in model["files"] if "sha256" in f or "sha256_prefix" in f]
        if floating and digested:
            raise RegistryError(f"{where}.sources: {floating[0]}@main with pinned files ({', '.join(digested)}): pin "
                                "the revision to a commit, or drop the digests and let the lock pin the files")
        if sum(f["role"] == "weights" for f in model["files"]) != 1:
            raise RegistryError(f"{where}.files: expected exactly one file with role 'weights'")
        spec = model["input"]
        if spec["kind"] != model["modality"]:
            raise RegistryError(f"{where}.input.kind: {spec['kind']!r} does not match modality {model['modality']!r}")
        if spec["kind"] == "image":
            side, name = (spec["crop"], "crop") if spec["crop"] is not None else (spec["resize"], "resize")
            if spec["size"] != [side, side]:
                raise RegistryError(f"{where}.input.size: {spec['size']} must equal [{name}, {name}] = [{side}, {side}]")
        expected = TASKS[model["task"]].output_kind  # the schema allows only the tasks of zoo.tasks
        if model["output"]["kind"] != expected:
            raise RegistryError(f"{where}.output.kind: {model['output']['kind']!r}, but {model['task']} models output "
                                f"{expected!r}")
        if spec["kind"] == "text" and spec["tokenizer"] not in names:
            raise RegistryError(f"{where}.input.tokenizer: {spec['tokenizer']!r} is not one of the entry's files {sorted(names)}")
        labels = model["output"].get("labels")
        if labels is not None and labels not in known:
            raise RegistryError(
                f"{where}.output.labels: unknown label set {labels!r}; the document's label_sets (and those of the "
                f"registries it extends) define {sorted(known) or 'none'}: add it there or name one of them"
            )


def _entry(model: dict[str, Any], label_sets: dict[str, list[str]]) -> ModelEntry:
    spec = dict(model["input"])
    if spec["kind"] == "image":
        input_spec: ImageInputSpec | TextInputSpec = ImageInputSpec(
            size=tuple(spec["size"]), resize=spec["resize"], crop=spec["crop"],
            interpolation=spec["interpolation"], mean=tuple(spec["mean"]), std=tuple(spec["std"]),
            warp=spec.get("warp", False),
        )
    else:
        input_spec = TextInputSpec(tokenizer=spec["tokenizer"], max_length=spec["max_length"])
    out = model["output"]
    label_set = out.get("labels")
    output = OutputSpec(
        kind=out["kind"], labels=tuple(label_sets[label_set]) if label_set else (), label_set=label_set,
        dim=out.get("dim"), pooling=out.get("pooling"), normalize=out.get("normalize", False),
    )
    reference = None
    if "reference" in model:
        ref = model["reference"]
        reference = Reference(
            producer=ref["producer"], atol=ref["atol"],
            cases=tuple(
                ReferenceCase(input=c["input"], output=tuple(tuple(row) for row in c["output"]),
                              texts=tuple(c.get("texts", ())), top1_label=c.get("top1_label"))
                for c in ref["cases"]
            ),
        )
    return ModelEntry(
        id=model["id"], modality=model["modality"], task=model["task"], architecture=model["architecture"],
        builder=model["builder"], builder_args=dict(model["builder_args"]), weights_format=model["weights_format"],
        files=tuple(FileSpec(**f) for f in model["files"]),
        sources=tuple(SourceSpec(**s) for s in model["sources"]),
        provenance=Provenance(**model["provenance"]), params=model["params"], input=input_spec, output=output,
        metrics=tuple(Metric(**m) for m in model.get("metrics", ())), gflops=model.get("gflops"),
        reference=reference, description=model.get("description", ""),
        finetune=FinetuneDefaults(**model["finetune"]) if "finetune" in model else None,
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"registry file {path} does not exist; fix ${REGISTRY_ENV} (files separated by "
                            f"{os.pathsep!r}) or point it at a registry.json") from None
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"registry file {path} cannot be read: {exc}") from None


@functools.lru_cache(maxsize=8)
def _load(layers: tuple[tuple[str, int], ...]) -> tuple[dict[str, ModelEntry], dict[str, tuple[str, ...]]]:
    """Entries of the registry files `layers` ((path, mtime) each, mtime only for the cache key), each file
    validated with the label sets of those before it; and for every id, the files that define it."""
    entries: dict[str, ModelEntry] = {}
    origins: dict[str, tuple[str, ...]] = {}
    label_sets: dict[str, list[str]] = {}
    for path, _ in layers:
        document = _read(Path(path))
        validate_document(document, origin=path, inherited_label_sets=label_sets)
        label_sets = {**label_sets, **document["label_sets"]}
        for model in document["models"]:
            entries[model["id"]] = _entry(model, label_sets)
            origins[model["id"]] = (*origins.get(model["id"], ()), path)
    return entries, origins


def _layers(paths: list[Path]) -> tuple[tuple[str, int], ...]:
    def mtime(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return 0

    return tuple((str(path), mtime(path)) for path in paths)


def load_registry(path: str | os.PathLike[str] | None = None) -> dict[str, ModelEntry]:
    """All entries, validated, keyed by id: of the registry file `path` alone, or else of every layer
    (registry_paths: the shipped registry extended by $ZOO_REGISTRY's files)."""
    paths = [Path(path)] if path is not None else registry_paths()
    return _load(_layers(paths))[0]


def registry_origins() -> dict[str, tuple[str, ...]]:
    """For each id, the registry files that define it, in layer order: more than one is an override (the
    last wins), which `zoo info` and `zoo list` report."""
    return _load(_layers(registry_paths()))[1]


@functools.lru_cache(maxsize=1)
def shipped_label_sets() -> dict[str, list[str]]:
    """The shipped registry's label sets by name, read once (package data; callers do not mutate it)."""
    return json.loads(shipped_registry_path().read_text("utf-8"))["label_sets"]


def entry_from_record(record: dict[str, Any], label_sets: dict[str, list[str]], origin: str) -> ModelEntry:
    """The ModelEntry of one registry record made outside a registry file (a model spec, zoo.specs), checked
    by the registry's schema and rules as a one-entry registry that may name the shipped label sets."""
    shipped = shipped_label_sets()
    validate_document({"format_version": FORMAT_VERSION, "label_sets": label_sets, "models": [record]}, origin,
                      inherited_label_sets=shipped)
    return _entry(record, {**shipped, **label_sets})


def get_model(name: str, registry: dict[str, ModelEntry] | None = None) -> ModelEntry:
    """The entry called `name`; an unknown name raises with the closest known names."""
    entries = load_registry() if registry is None else registry
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise UnknownModelError(f"unknown model {name!r}; {hint}run `zoo list` to see the {len(entries)} known models")


def list_models(
    include: str | Iterable[str] = "*",
    exclude: str | Iterable[str] = (),
    modality: str | None = None,
    task: str | None = None,
    registry: dict[str, ModelEntry] | None = None,
) -> list[str]:
    """Sorted ids matching any `include` fnmatch pattern and no `exclude` pattern."""
    entries = load_registry() if registry is None else registry
    includes = [include] if isinstance(include, str) else list(include)
    excludes = [exclude] if isinstance(exclude, str) else list(exclude)
    return sorted(
        name for name, entry in entries.items()
        if any(fnmatch.fnmatch(name, p) for p in includes)
        and not any(fnmatch.fnmatch(name, p) for p in excludes)
        and (modality is None or entry.modality == modality)
        and (task is None or entry.task == task)
    )
