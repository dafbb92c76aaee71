"""zoo list | info | fetch | validate: the registry's models (and fine-tuned runs)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from zoo_cli.options import source_dir_option, sources


@click.command("list")
@click.argument("patterns", nargs=-1)
@click.option("--modality", type=click.Choice(["image", "text"]), help="Only image or text models.")
@click.option("--task", help="Only this task (image-classification, semantic-segmentation, object-detection, "
                             "sentence-embedding, feature-extraction).")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Leave out ids matching this fnmatch pattern.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the entries' cards (as `zoo info --json`).")
def list_command(patterns: tuple[str, ...], modality: str | None, task: str | None, exclude: tuple[str, ...],
                 as_json: bool) -> None:
    """List registry models whose id matches any PATTERN (fnmatch, default '*')."""
    from zoo.lock import pin_state
    from zoo.registry import get_model, list_models, load_registry

    tasks = sorted({entry.task for entry in load_registry().values()})
    if task is not None and task not in tasks:
        raise click.BadParameter(f"{task!r} is not a task of the registry; expected one of {', '.join(tasks)}",
                                 param_hint="--task")
    names = list_models(patterns or "*", exclude, modality=modality, task=task)
    if as_json:
        from zoo.card import card_dict

        click.echo(json.dumps([card_dict(get_model(name)) for name in names], indent=1))
        return
    entries = [get_model(name) for name in names]
    width = max([len(name) for name in names] + [2])  # columns fit the longest id
    tasks = max([len(entry.task) for entry in entries] + [4])
    for entry in entries:
        ref = "reference" if entry.reference else ""
        pinned = {"registry": "pinned", "lock": "pinned (lock)",
                  "not yet": "prefix only" if all(f.sha256_prefix for f in entry.files) else "unpinned"}[pin_state(entry)]
        click.echo(f"{entry.id:{width}}  {entry.modality:5} {entry.task:{tasks}} {entry.params / 1e6:7.1f}M  "
                   f"{pinned:13} {ref}".rstrip())
    for line in override_lines(names):
        click.echo(line, err=True)


def override_lines(names: list[str]) -> list[str]:
    """One line per listed id that a later registry layer redefines ($ZOO_REGISTRY): which file wins."""
    from zoo.registry import registry_origins

    origins = registry_origins()
    return [f"note: {name}: the entry of {files[-1]} replaces that of {', '.join(files[:-1])}"
            for name in names if len(files := origins.get(name, ())) > 1]


@click.command()
@click.argument("name", metavar="NAME|RUN_DIR")
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def info(name: str, as_json: bool) -> None:
    """Show the model card of NAME (a registry model or a fine-tuning run)."""
    from zoo.card import card_dict, card_lines
    from zoo.runs import resolve_name

    entry = resolve_name(name)
    click.echo(json.dumps(card_dict(entry), indent=1) if as_json else "\n".join(card_lines(entry)))
    for line in override_lines([name]):
        click.echo(line, err=True)


@click.command()
@click.argument("name")
@source_dir_option
def fetch(name: str, source_dir: tuple[str, ...]) -> None:
    """Download (or copy) NAME's files (a registry id or a model spec) into the cache, verifying every sha256."""
    from zoo.cache import fetch as fetch_files
    from zoo.runs import resolve_name

    fetched = fetch_files(resolve_name(name), sources(source_dir))
    for file, digest in fetched.sha256.items():
        click.echo(f"✓ {file}  sha256 {digest}")
    click.echo(f"{name}: {len(fetched.files)} file(s) in {fetched.directory}")


@click.command()
@click.argument("name", metavar="NAME|RUN_DIR")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), help="Override the stored tolerance.")
@source_dir_option
def validate(name: str, atol: float | None, source_dir: tuple[str, ...]) -> None:
    """Rebuild NAME from verified weights and compare with its stored reference outputs."""
    from zoo.validation import validate as run_validation

    report = run_validation(name, atol=atol, extra_sources=sources(source_dir))
    click.echo("\n".join(report.lines()))
    report.raise_for_failures()


@click.command()
@click.argument("spec")
@click.option("--registry", "registry_file", type=click.Path(dir_okay=False, path_type=Path), default="registry.json",
              show_default=True, help="The registry file to add the entry to (created when missing); list it in "
                                      "$ZOO_REGISTRY to use it.")
@click.option("--name", help="The entry's id (default: the spec's, e.g. resnet50.imagenet1k_v2).")
def pin(spec: str, registry_file: Path, name: str | None) -> None:
    """Write model SPEC (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2) as a registry entry; files the lock
    recorded on a fetch are pinned by their full sha256, and fetched weights give reference outputs."""
    from zoo.pin import pin as pin_spec

    record = pin_spec(spec, registry_file, name)
    pins = ", ".join(f"{f['name']} sha256 {'prefix ' if 'sha256_prefix' in f else ''}"
                     f"{f.get('sha256') or f.get('sha256_prefix')}" for f in record["files"])
    references = ("with reference outputs of the cached weights" if "reference" in record else
                  "no reference outputs (fetch it first to record them)")
    click.echo(f"{record['id']} -> {registry_file} ({pins}; {references}); use it with ZOO_REGISTRY={registry_file}")
