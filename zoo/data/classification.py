"""Classification data: an image folder (one subfolder per class, optional train/ and val/) or a CSV /
JSONL file of (text, label); a seeded, stratified split when there is no validation split."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from zoo.data.dataset import Dataset, Example, readable_images, stratified_split
from zoo.errors import InputError

TEXT_COLUMNS = ("text", "label")
# Text data is read for the task the run is for, never sniffed: other tasks' files fail here, saying how to ask.
OTHER_TEXT_TASKS = ("; for named-entity recognition or question answering data, pass --task token-classification "
                    "or --task question-answering")


def load_dataset(path: str | Path, modality: str, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Image folder for image models, CSV/JSONL for text models."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"--data {path} does not exist")
    if modality == "image":
        if not path.is_dir():
            raise InputError(f"--data {path}: image models need a folder with one subfolder per class")
        return _image_folder(path, val_fraction, seed)
    if path.is_dir() or path.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise InputError(f"--data {path}: text classification needs a .csv or .jsonl file with columns 'text' and "
                         f"'label'{OTHER_TEXT_TASKS}")
    return _text_file(path, val_fraction, seed)


def _class_folders(root: Path, skipped: list[str]) -> dict[str, list[str]]:
    classes = {d.name: readable_images(d, skipped) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    if not classes:
        raise InputError(f"{root} has no class subfolders; expected {root}/<class name>/<images>")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise InputError(f"{root}: class folder(s) {', '.join(empty)} contain no readable images; "
                         "add images or remove the folder")
    return classes


def _image_folder(root: Path, val_fraction: float, seed: int) -> Dataset:
    skipped: list[str] = []
    if (root / "train").is_dir():
        train = _class_folders(root / "train", skipped)
        labels = sorted(train)
        _check_classes(labels, str(root / "train"))
        train_examples = [Example(f, labels.index(c)) for c in labels for f in train[c]]
        if (root / "val").is_dir():
            val = _class_folders(root / "val", skipped)
            unseen = sorted(set(val) - set(labels))
            if unseen:
                raise InputError(f"{root / 'val'}: classes {', '.join(unseen)} do not appear in train/; "
                                 "every validation class needs training images")
            val_examples = [Example(f, labels.index(c)) for c in val for f in val[c]]
            return Dataset("image-classification", "image", labels, train_examples, val_examples, str(root), "given", skipped)
        train_examples, val_examples = stratified_split(train_examples, val_fraction, seed, labels)
        return Dataset("image-classification", "image", labels, train_examples, val_examples, str(root), _split_name(seed, val_fraction), skipped)
    classes = _class_folders(root, skipped)
    labels = sorted(classes)
    _check_classes(labels, str(root))
    examples = [Example(f, labels.index(c)) for c in labels for f in classes[c]]
    train_examples, val_examples = stratified_split(examples, val_fraction, seed, labels)
    return Dataset("image-classification", "image", labels, train_examples, val_examples, str(root), _split_name(seed, val_fraction), skipped)


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in TEXT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}; "
                                 f"expected a header with 'text' and 'label' (and optionally 'split'){OTHER_TEXT_TASKS}")
            return list(reader)
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not valid JSON Lines ({exc.msg}){OTHER_TEXT_TASKS}") from None
        missing = [c for c in TEXT_COLUMNS if not isinstance(row, dict) or c not in row]
        if missing:
            raise InputError(f"{path}:{number}: missing field(s) {', '.join(missing)}; expected "
                             f'{{"text": ..., "label": ...}}{OTHER_TEXT_TASKS}')
        rows.append(row)
    return rows


def _text_file(path: Path, val_fraction: float, seed: int) -> Dataset:
    try:
        rows = _rows(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not rows:
        raise InputError(f"{path} has no rows")
    skipped = [f"{path}: row {i + 2}: empty text" for i, r in enumerate(rows) if not str(r["text"]).strip()]
    rows = [r for r in rows if str(r["text"]).strip()]
    labels = sorted({str(r["label"]) for r in rows if str(r.get("split", "train")) != "val"})
    _check_classes(labels, str(path))
    if any("split" in r for r in rows):
        unseen = sorted({str(r["label"]) for r in rows if str(r.get("split")) == "val"} - set(labels))
        if unseen:
            raise InputError(f"{path}: labels {', '.join(unseen)} appear only in the val split; "
                             "every validation label needs training rows")
        train = [Example(str(r["text"]), labels.index(str(r["label"]))) for r in rows if str(r.get("split", "train")) != "val"]
        val = [Example(str(r["text"]), labels.index(str(r["label"]))) for r in rows if str(r.get("split")) == "val"]
        if val:
            return Dataset("text-classification", "text", labels, train, val, str(path), "given", skipped)
        train, val = stratified_split(train, val_fraction, seed, labels)
    else:
        examples = [Example(str(r["text"]), labels.index(str(r["label"]))) for r in rows]
        train, val = stratified_split(examples, val_fraction, seed, labels)
    return Dataset("text-classification", "text", labels, train, val, str(path), _split_name(seed, val_fraction), skipped)


def _check_classes(labels: Sequence[str], where: str) -> None:
    if len(labels) < 2:
        raise InputError(f"{where}: found {len(labels)} class(es) ({', '.join(labels) or 'none'}); "
                         "classification needs at least two (for 'contains X or not', add a folder of negatives)")


def _split_name(seed: int, fraction: float) -> str:
    return f"stratified seed={seed} fraction={fraction}"
