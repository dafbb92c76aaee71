"""The records every task's loader fills: `Example` (one input and its target) and `Dataset` (labelled
examples split into train and val, with a content fingerprint and a summary for the run's card), the
seeded splits, and the readable-image check the image loaders share."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError

from zoo.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Example:
    item: str  # image path, or the text itself
    label: int  # the class (0 for segmentation, whose labels are the mask's pixels)
    mask: str | None = None  # segmentation: the PNG of class indices
    # detection: (class, x1, y1, x2, y2) per object, classes from 1 (0 is the background), pixels
    objects: tuple[tuple[int, float, float, float, float], ...] | None = None
    # token classification (NER): one tag per word of `item`, which is the words joined by spaces
    words: tuple[str, ...] | None = None
    tags: tuple[int, ...] | None = None
    # extractive question answering: `item` is the context; answers are (start character, text)
    question: str | None = None
    answers: tuple[tuple[int, str], ...] | None = None
    # any other task's target, read by its task module alone (zoo.tasks); hashable, part of the fingerprint
    target: tuple | None = None


@dataclass
class Dataset:
    """Labelled examples split into train and val, with the class names (sorted)."""

    task: str  # zoo.tasks: the task the loader read the data for
    modality: str
    labels: list[str]
    train: list[Example]
    val: list[Example]
    source: str
    split: str  # "given" (train/ + val/ folders, or a split column) or "stratified seed=N fraction=F"
    skipped: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 over (split, label, content) of every example: changes when any byte of the data does."""
        digest = hashlib.sha256()
        for part, examples in (("train", self.train), ("val", self.val)):
            for example in sorted(examples, key=lambda e: (e.item, e.label)):
                digest.update(f"{part}\0{self.labels[example.label]}\0".encode())
                if self.modality == "image":
                    digest.update(hashlib.sha256(Path(example.item).read_bytes()).digest())
                    if example.mask is not None:
                        digest.update(hashlib.sha256(Path(example.mask).read_bytes()).digest())
                    if example.objects is not None:
                        digest.update(repr(example.objects).encode())
                else:
                    digest.update(example.item.encode())
                    if example.tags is not None:
                        digest.update(repr(example.tags).encode())
                    if example.question is not None:
                        digest.update(f"\0{example.question}\0{example.answers!r}".encode())
                if example.target is not None:
                    digest.update(repr(example.target).encode())
        return digest.hexdigest()

    def val_items(self) -> list[str]:
        """The held-out examples (image paths relative to the data folder, the texts, or the questions):
        the split record."""
        root = Path(self.source)
        if self.task == "question-answering":
            return sorted(e.question for e in self.val)
        if self.modality == "image":
            return sorted(str(Path(e.item).relative_to(root)) for e in self.val)
        return sorted(e.item for e in self.val)

    def summary(self) -> dict[str, Any]:
        """What the run's card says about the data: its source, split and labels, and the task's counts."""
        from zoo.tasks import get_task, implementation

        counts = implementation(get_task(self.task)).summary(self)
        return {"source": self.source, "split": self.split, "labels": self.labels, **counts, "skipped": self.skipped}


def readable_images(folder: Path, skipped: list[str]) -> list[str]:
    """Readable images under `folder`; unreadable or non-image files are skipped and counted."""
    found = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if (problem := image_problem(file)) is not None:
            skipped.append(f"{file}: {problem}")
            continue
        found.append(str(file))
    return found


def image_problem(file: Path) -> str | None:
    """Why `file` is not a readable image (its type, or what decoding it said), or None when it is one."""
    if file.suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image file type"
    try:
        with Image.open(file) as image:
            image.verify()
    except (UnidentifiedImageError, OSError) as exc:  # a missing file too
        return f"unreadable image ({exc})"
    return None


def stratified_split(examples: Sequence[Example], fraction: float, seed: int,
                     names: Sequence[str] = ()) -> tuple[list[Example], list[Example]]:
    """Per class, a seeded shuffle and `fraction` (at least one example, never all) held out."""
    if not 0 < fraction < 1:
        raise InputError(f"--val-fraction {fraction} must be between 0 and 1")
    by_label: dict[int, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda e: e.item)
        rng.shuffle(group)
        if len(group) < 2:
            name = names[label] if label < len(names) else label
            raise InputError(f"class {name!r} has a single example; a validation split needs at least two per class "
                             "(add examples, or give an explicit validation split)")
        held = min(max(1, round(len(group) * fraction)), len(group) - 1)
        val += group[:held]
        train += group[held:]
    return train, val


def random_split(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded shuffle with `fraction` held out (at least one example, never all)."""
    if not 0 < fraction < 1:
        raise InputError(f"--val-fraction {fraction} must be between 0 and 1")
    if len(examples) < 2:
        raise InputError(f"{len(examples)} example(s); a validation split needs at least two "
                         "(add examples, or give train/ and val/ folders)")
    shuffled = sorted(examples, key=lambda e: e.item)
    random.Random(seed).shuffle(shuffled)
    held = min(max(1, round(len(shuffled) * fraction)), len(shuffled) - 1)
    return shuffled[held:], shuffled[:held]
