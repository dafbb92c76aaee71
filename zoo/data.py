"""Training data: an image folder (one subfolder per class, optional train/ and val/), a CSV /
JSONL file of (text, label), or image + mask pairs for segmentation (see `load_segmentation`); a
seeded split when there is no validation split; a content fingerprint for the run's card. Every
problem is an InputError naming the file or class."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageOps, UnidentifiedImageError

from zoo.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEXT_COLUMNS = ("text", "label")


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


@dataclass
class Dataset:
    """Labelled examples split into train and val, with the class names (sorted)."""

    modality: str
    labels: list[str]
    train: list[Example]
    val: list[Example]
    source: str
    split: str  # "given" (train/ + val/ folders, or a split column) or "stratified seed=N fraction=F"
    skipped: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        """"segmentation" when the examples carry masks, "detection" when they carry boxes, else "classification"."""
        if self.train and self.train[0].mask is not None:
            return "segmentation"
        if self.train and self.train[0].tags is not None:
            return "token-classification"
        if self.train and self.train[0].question is not None:
            return "question-answering"
        return "detection" if self.train and self.train[0].objects is not None else "classification"

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
        if self.task == "question-answering":
            contexts = lambda examples: len({e.item for e in examples})  # noqa: E731
            return {"source": self.source, "split": self.split, "labels": self.labels,
                    "train": {"questions": len(self.train), "contexts": contexts(self.train)},
                    "val": {"questions": len(self.val), "contexts": contexts(self.val)}, "skipped": self.skipped}
        if self.task == "token-classification":  # sentences, and entities per type (B- tags)
            count = lambda examples: dict(Counter(self.labels[t][2:] for e in examples for t in e.tags  # noqa: E731
                                                  if self.labels[t].startswith("B-")))
            return {"source": self.source, "split": self.split, "labels": self.labels, "sentences": {
                "train": len(self.train), "val": len(self.val)}, "train": count(self.train), "val": count(self.val),
                "skipped": self.skipped}
        if self.task == "detection":  # objects per class (labels[0] is the background)
            count = lambda examples: dict(Counter(self.labels[o[0]] for e in examples for o in e.objects))  # noqa: E731
            return {"source": self.source, "split": self.split, "labels": self.labels, "images": {
                "train": len(self.train), "val": len(self.val)}, "train": count(self.train), "val": count(self.val),
                "skipped": self.skipped}
        if self.task == "segmentation":
            return {"source": self.source, "split": self.split, "labels": self.labels, "train": len(self.train),
                    "val": len(self.val), "skipped": self.skipped}
        return {"source": self.source, "split": self.split, "labels": self.labels,
                "train": dict(Counter(self.labels[e.label] for e in self.train)),
                "val": dict(Counter(self.labels[e.label] for e in self.val)), "skipped": self.skipped}


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
        raise InputError(f"--data {path}: text models need a .csv or .jsonl file with columns 'text' and 'label'")
    return _text_file(path, val_fraction, seed)


def _images_in(folder: Path, skipped: list[str]) -> list[str]:
    """Readable images under `folder`; unreadable or non-image files are skipped and counted."""
    found = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{file}: not an image file type")
            continue
        try:
            with Image.open(file) as image:
                image.verify()
        except (UnidentifiedImageError, OSError) as exc:
            skipped.append(f"{file}: unreadable image ({exc})")
            continue
        found.append(str(file))
    return found


def _class_folders(root: Path, skipped: list[str]) -> dict[str, list[str]]:
    classes = {d.name: _images_in(d, skipped) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
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
            return Dataset("image", labels, train_examples, val_examples, str(root), "given", skipped)
        train_examples, val_examples = stratified_split(train_examples, val_fraction, seed, labels)
        return Dataset("image", labels, train_examples, val_examples, str(root), _split_name(seed, val_fraction), skipped)
    classes = _class_folders(root, skipped)
    labels = sorted(classes)
    _check_classes(labels, str(root))
    examples = [Example(f, labels.index(c)) for c in labels for f in classes[c]]
    train_examples, val_examples = stratified_split(examples, val_fraction, seed, labels)
    return Dataset("image", labels, train_examples, val_examples, str(root), _split_name(seed, val_fraction), skipped)


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in TEXT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}; "
                                 "expected a header with 'text' and 'label' (and optionally 'split')")
            return list(reader)
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        missing = [c for c in TEXT_COLUMNS if not isinstance(row, dict) or c not in row]
        if missing:
            raise InputError(f"{path}:{number}: missing field(s) {', '.join(missing)}; expected "
                             '{"text": ..., "label": ...}')
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
            return Dataset("text", labels, train, val, str(path), "given", skipped)
        train, val = stratified_split(train, val_fraction, seed, labels)
    else:
        examples = [Example(str(r["text"]), labels.index(str(r["label"]))) for r in rows]
        train, val = stratified_split(examples, val_fraction, seed, labels)
    return Dataset("text", labels, train, val, str(path), _split_name(seed, val_fraction), skipped)


def _check_classes(labels: Sequence[str], where: str) -> None:
    if len(labels) < 2:
        raise InputError(f"{where}: found {len(labels)} class(es) ({', '.join(labels) or 'none'}); "
                         "classification needs at least two (for 'contains X or not', add a folder of negatives)")


def _split_name(seed: int, fraction: float) -> str:
    return f"stratified seed={seed} fraction={fraction}"


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


# ---------------------------------------------------------------------------------------------
# Segmentation: image + mask pairs

LABELS_FILE = "labels.txt"
IGNORE_INDEX = 255  # mask value of pixels that count in no loss and no metric (Pascal VOC's borders)
SEGMENTATION_LAYOUT = ("DATA/labels.txt (one class name per line; line i is mask value i), DATA/images/NAME.jpg "
                       "and DATA/masks/NAME.png (one channel, pixel = class index, 255 = ignore), optionally "
                       "under DATA/train/ and DATA/val/")


def load_segmentation(path: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Image + mask pairs: DATA/labels.txt, DATA/images/*, DATA/masks/*.png (or the same under train/
    and val/). Every mask must match its image's size and hold only class indices or 255."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"--data {root}: segmentation needs a folder laid out as {SEGMENTATION_LAYOUT}")
    labels_file = root / LABELS_FILE
    if not labels_file.is_file():
        raise InputError(f"--data {root}: no {LABELS_FILE}; expected {SEGMENTATION_LAYOUT}")
    labels = [line.strip() for line in labels_file.read_text("utf-8").splitlines() if line.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise InputError(f"{labels_file}: expected at least two distinct class names, one per line; found {labels}")
    if len(labels) >= IGNORE_INDEX:
        raise InputError(f"{labels_file}: {len(labels)} classes; masks hold at most {IGNORE_INDEX} (255 means ignore)")
    skipped: list[str] = []
    if (root / "train").is_dir():
        train = _pairs(root / "train", labels, skipped)
        if (root / "val").is_dir():
            return Dataset("image", labels, train, _pairs(root / "val", labels, skipped), str(root), "given", skipped)
    else:
        train = _pairs(root, labels, skipped)
    train, val = random_split(train, val_fraction, seed)
    return Dataset("image", labels, train, val, str(root), f"random seed={seed} fraction={val_fraction}", skipped)


def _pairs(folder: Path, labels: Sequence[str], skipped: list[str]) -> list[Example]:
    images_dir, masks_dir = folder / "images", folder / "masks"
    for needed in (images_dir, masks_dir):
        if not needed.is_dir():
            raise InputError(f"{folder}: no {needed.name}/ folder; expected {SEGMENTATION_LAYOUT}")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    examples = []
    for image in _images_in(images_dir, skipped):
        mask = masks.pop(Path(image).stem, None)
        if mask is None:
            raise InputError(f"{image} has no mask: expected {masks_dir / (Path(image).stem + '.png')}")
        _check_mask(Path(image), mask, len(labels))
        examples.append(Example(image, 0, str(mask)))
    if masks:
        extra = sorted(masks)[:3]
        raise InputError(f"{masks_dir}: mask(s) without an image: {', '.join(extra)}; add the image or remove the mask")
    if not examples:
        raise InputError(f"{images_dir} holds no readable images")
    return examples


def _check_mask(image: Path, mask: Path, classes: int) -> None:
    import numpy as np

    try:
        with Image.open(mask) as opened:
            if opened.mode not in ("L", "P"):
                raise InputError(f"{mask}: mode {opened.mode}; a mask is a one-channel PNG (L or P) of class indices")
            values = np.unique(np.asarray(opened))
            mask_size = opened.size
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{mask} is not a readable PNG mask ({exc})") from None
    with Image.open(image) as opened:
        image_size = ImageOps.exif_transpose(opened).size
    if mask_size != image_size:
        raise InputError(f"{mask}: {mask_size[0]}x{mask_size[1]}, but its image is {image_size[0]}x{image_size[1]}; "
                         "a mask must match its image pixel for pixel")
    bad = [int(v) for v in values if v >= classes and v != IGNORE_INDEX]
    if bad:
        raise InputError(f"{mask}: class value(s) {bad[:5]} but {LABELS_FILE} names {classes} classes "
                         f"(0..{classes - 1}; {IGNORE_INDEX} = ignore)")


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


# ---------------------------------------------------------------------------------------------
# Detection: COCO JSON or Pascal VOC XML

BACKGROUND = "__background__"
DETECTION_LAYOUT = ("DATA/annotations.json (COCO: images, annotations with bbox [x, y, width, height], categories) "
                    "with the images under DATA/images/, or Pascal VOC: DATA/Annotations/NAME.xml and "
                    "DATA/JPEGImages/NAME.jpg; optionally under DATA/train/ and DATA/val/")


def load_detection(path: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Boxes from COCO JSON or Pascal VOC XML. Labels are ["__background__", classes...]: COCO categories
    in id order, VOC names sorted. Images without objects are kept (negatives); COCO crowd regions are
    left out, as torchvision's detection reference does. Every box must lie within its image."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"--data {root}: detection needs a folder laid out as {DETECTION_LAYOUT}")
    skipped: list[str] = []
    if (root / "train").is_dir():
        labels, train = _annotations(root / "train", None, skipped)
        if (root / "val").is_dir():
            _, val = _annotations(root / "val", labels, skipped)
            return Dataset("image", labels, train, val, str(root), "given", skipped)
    else:
        labels, train = _annotations(root, None, skipped)
    train, val = random_split(train, val_fraction, seed)
    return Dataset("image", labels, train, val, str(root), f"random seed={seed} fraction={val_fraction}", skipped)


def _annotations(folder: Path, labels: list[str] | None, skipped: list[str]) -> tuple[list[str], list[Example]]:
    """(labels, examples) of one split; `labels` given: the val split, whose classes must be known."""
    if (folder / "annotations.json").is_file():
        names, records = _coco(folder / "annotations.json", folder / "images")
    elif (folder / "Annotations").is_dir():
        names, records = _voc(folder)
    else:
        raise InputError(f"{folder}: neither annotations.json nor Annotations/; expected {DETECTION_LAYOUT}")
    if labels is None:
        if not names:
            raise InputError(f"{folder}: no object classes found; detection needs at least one annotated class")
        labels = [BACKGROUND, *names]
    index = {name: i for i, name in enumerate(labels) if i > 0}
    examples = []
    readable = set(_images_in_files([image for image, _ in records], skipped))
    for image, objects in records:
        if image not in readable:
            continue
        unknown = sorted({name for name, *_ in objects if name not in index})
        if unknown:
            raise InputError(f"{image}: class(es) {', '.join(unknown)} do not appear in the training annotations")
        _check_boxes(Path(image), objects)
        examples.append(Example(image, 0, objects=tuple((index[name], *box) for name, *box in objects)))
    if not examples:
        raise InputError(f"{folder} holds no readable annotated images")
    return labels, examples


def _images_in_files(files: list[str], skipped: list[str]) -> list[str]:
    found = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.verify()
        except FileNotFoundError:
            raise InputError(f"{file} is named in the annotations but does not exist") from None
        except (UnidentifiedImageError, OSError) as exc:
            skipped.append(f"{file}: unreadable image ({exc})")
            continue
        found.append(file)
    return found


def _check_boxes(image: Path, objects) -> None:
    with Image.open(image) as opened:
        width, height = ImageOps.exif_transpose(opened).size
    for name, x1, y1, x2, y2 in objects:
        if not (x2 > x1 and y2 > y1):
            raise InputError(f"{image}: box {[x1, y1, x2, y2]} of {name!r} has no area; boxes are x1 < x2, y1 < y2")
        if x1 < -0.5 or y1 < -0.5 or x2 > width + 0.5 or y2 > height + 0.5:
            raise InputError(f"{image}: box {[x1, y1, x2, y2]} of {name!r} lies outside the {width}x{height} image")


def _coco(file: Path, images_dir: Path) -> tuple[list[str], list[tuple[str, list]]]:
    """(category names in id order, [(image path, [(name, x1, y1, x2, y2), ...])])."""
    try:
        document = json.loads(file.read_text("utf-8"))
        categories = {int(c["id"]): str(c["name"]) for c in document["categories"]}
        images = {int(i["id"]): str(i["file_name"]) for i in document["images"]}
        annotations = document.get("annotations", [])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{file} is not valid JSON: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{file}: expected COCO 'images' [{{id, file_name}}] and 'categories' [{{id, name}}] "
                         f"({type(exc).__name__}: {exc})") from None
    names = [categories[k] for k in sorted(categories)]
    if len(set(names)) != len(names):
        raise InputError(f"{file}: category names repeat ({names}); every category needs its own name")
    objects: dict[int, list] = {image_id: [] for image_id in images}
    for number, annotation in enumerate(annotations):
        try:
            image_id, category = int(annotation["image_id"]), int(annotation["category_id"])
            x, y, w, h = (float(v) for v in annotation["bbox"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{file}: annotations[{number}]: expected image_id, category_id and bbox [x, y, width, height]") from None
        if image_id not in images or category not in categories:
            raise InputError(f"{file}: annotations[{number}] names image {image_id} / category {category}, "
                             "which are not in 'images' / 'categories'")
        if annotation.get("iscrowd", 0):
            continue
        objects[image_id].append((categories[category], x, y, x + w, y + h))
    return names, [(str(images_dir / images[i]), objects[i]) for i in sorted(images)]


def _voc(folder: Path) -> tuple[list[str], list[tuple[str, list]]]:
    """Pascal VOC XML: 1-based inclusive pixel corners, made 0-based (xmin - 1, ymin - 1) like detectron2."""
    import xml.etree.ElementTree as ElementTree

    records, names = [], set()
    for file in sorted((folder / "Annotations").glob("*.xml")):
        try:
            tree = ElementTree.parse(file).getroot()
            image = folder / "JPEGImages" / (tree.findtext("filename") or f"{file.stem}.jpg")
            objects = []
            for item in tree.iter("object"):
                box = item.find("bndbox")
                x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                name = (item.findtext("name") or "").strip()
                if not name:
                    raise ValueError("an object without a <name>")
                objects.append((name, x1 - 1, y1 - 1, x2, y2))
                names.add(name)
        except ElementTree.ParseError as exc:
            raise InputError(f"{file} is not valid XML: {exc}") from None
        except (AttributeError, TypeError, ValueError) as exc:
            raise InputError(f"{file}: expected Pascal VOC <object><name/><bndbox><xmin/><ymin/><xmax/><ymax/>"
                             f"</bndbox></object> ({exc})") from None
        records.append((str(image), objects))
    if not records:
        raise InputError(f"{folder / 'Annotations'} holds no .xml files; expected {DETECTION_LAYOUT}")
    return sorted(names), records


# ---------------------------------------------------------------------------------------------
# Token classification (NER): CoNLL or JSONL

TOKEN_LAYOUT = ("a CoNLL file (.conll/.txt: one word per line, its tag in the last column, a blank line between "
                "sentences) or JSONL with {\"tokens\": [...], \"tags\": [...]} per line (optionally \"split\")")


def is_token_data(path: str | Path) -> bool:
    """True for token-tagged data: a .conll/.txt file, or JSONL whose first row has "tokens"."""
    path = Path(path)
    if path.suffix.lower() in (".conll", ".txt"):
        return True
    if path.suffix.lower() == ".jsonl" and path.is_file():
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = next((line for line in handle if line.strip()), "")
        try:
            return isinstance(json.loads(first), dict) and "tokens" in json.loads(first)
        except json.JSONDecodeError:
            return False
    return False


def load_token_tags(path: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Sentences of (word, IOB2 tag). Labels: "O" first, then the other tags sorted. Every tag is "O",
    "B-TYPE" or "I-TYPE"; a sentence's words and tags must pair up."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--data {path}: token classification needs {TOKEN_LAYOUT}")
    try:
        rows = _conll(path) if path.suffix.lower() in (".conll", ".txt") else _token_jsonl(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not rows:
        raise InputError(f"{path} holds no sentences; expected {TOKEN_LAYOUT}")
    names = sorted({tag for _, words, tags, _ in rows for tag in tags if tag != "O"})
    labels = ["O", *names]
    if len(labels) < 2:
        raise InputError(f"{path}: every word is tagged O; token classification needs at least one entity type")
    examples = {"train": [], "val": []}
    for where, words, tags, split in rows:
        example = Example(" ".join(words), 0, words=tuple(words), tags=tuple(labels.index(t) for t in tags))
        examples["val" if split == "val" else "train"].append(example)
    if examples["val"]:
        return Dataset("text", labels, examples["train"], examples["val"], str(path), "given")
    train, val = random_split(examples["train"], val_fraction, seed)
    return Dataset("text", labels, train, val, str(path), f"random seed={seed} fraction={val_fraction}")


def _check_tags(where: str, words: list[str], tags: list[str]) -> None:
    if len(words) != len(tags):
        raise InputError(f"{where}: {len(words)} words but {len(tags)} tags; every word needs one tag")
    for word, tag in zip(words, tags):
        if not word.strip():
            raise InputError(f"{where}: an empty word; words are non-empty strings")
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise InputError(f"{where}: tag {tag!r} of {word!r}; expected O, B-TYPE or I-TYPE (IOB2)")


def _conll(path: Path) -> list[tuple[str, list[str], list[str], str]]:
    rows, words, tags, start = [], [], [], 1
    lines = path.read_text("utf-8").splitlines() + [""]
    for number, line in enumerate(lines, start=1):
        if line.startswith("-DOCSTART-"):
            continue
        if not line.strip():
            if words:
                where = f"{path}:{start}"
                _check_tags(where, words, tags)
                rows.append((where, words, tags, "train"))
            words, tags, start = [], [], number + 1
            continue
        columns = line.split()
        if len(columns) < 2:
            raise InputError(f"{path}:{number}: {line.strip()!r}; expected a word and its tag (last column)")
        words.append(columns[0])
        tags.append(columns[-1])
    return rows


def _token_jsonl(path: Path) -> list[tuple[str, list[str], list[str], str]]:
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
        if (not isinstance(row, dict) or not isinstance(row.get("tokens"), list) or not isinstance(row.get("tags"), list)
                or not all(isinstance(v, str) for v in row["tokens"] + row["tags"])):
            raise InputError(f'{where}: expected {{"tokens": ["word", ...], "tags": ["O", ...]}}')
        _check_tags(where, row["tokens"], row["tags"])
        rows.append((where, row["tokens"], row["tags"], str(row.get("split", "train"))))
    return rows


# ---------------------------------------------------------------------------------------------
# Extractive question answering: SQuAD JSON

SQUAD_LAYOUT = ('SQuAD v1.1 JSON: {"data": [{"paragraphs": [{"context": ..., "qas": [{"id", "question", '
                '"answers": [{"text", "answer_start"}]}]}]}]}, one file (split by context) or a folder with '
                "train.json and val.json (or dev.json)")
ANSWER_LABELS = ["start", "end"]  # the span head's two outputs per token


def is_qa_data(path: str | Path) -> bool:
    """True for SQuAD-style data: a .json file holding {"data": [...]}, or a folder with train.json."""
    path = Path(path)
    if path.is_dir():
        return (path / "train.json").is_file()
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(4096).lstrip()
    return head.startswith("{") and '"data"' in head


def load_squad(path: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Questions with their context and answers. A single file is split by context (a paragraph's
    questions stay on one side); train.json + val.json (or dev.json) are used as given. Every answer
    must be found at its answer_start; unanswerable questions (SQuAD v2) are refused."""
    path = Path(path)
    if path.is_dir():
        val_file = next((path / n for n in ("val.json", "dev.json") if (path / n).is_file()), None)
        if not (path / "train.json").is_file() or val_file is None:
            raise InputError(f"--data {path}: expected train.json and val.json (or dev.json); {SQUAD_LAYOUT}")
        return Dataset("text", ANSWER_LABELS, _squad(path / "train.json"), _squad(val_file), str(path), "given")
    examples = _squad(path)
    contexts = sorted({e.item for e in examples})
    if len(contexts) < 2:
        raise InputError(f"{path}: one context; a validation split needs at least two (add paragraphs, or give "
                         "train.json and val.json)")
    held = min(max(1, round(len(contexts) * val_fraction)), len(contexts) - 1)
    random.Random(seed).shuffle(contexts)
    val_contexts = set(contexts[:held])
    return Dataset("text", ANSWER_LABELS, [e for e in examples if e.item not in val_contexts],
                   [e for e in examples if e.item in val_contexts], str(path),
                   f"random by context seed={seed} fraction={val_fraction}")


def _squad(file: Path) -> list[Example]:
    try:
        document = json.loads(file.read_text("utf-8"))
        paragraphs = [p for article in document["data"] for p in article["paragraphs"]]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{file} is not valid JSON: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise InputError(f"{file}: expected {SQUAD_LAYOUT} (missing {exc})") from None
    examples = []
    for paragraph in paragraphs:
        context = paragraph.get("context")
        for qa in paragraph.get("qas", []):
            where = f"{file}: question {qa.get('id', qa.get('question', '?'))!r}"
            if not isinstance(context, str) or not isinstance(qa.get("question"), str):
                raise InputError(f"{where}: expected a context and a question (strings); {SQUAD_LAYOUT}")
            if qa.get("is_impossible") or not qa.get("answers"):
                raise InputError(f"{where} has no answer; unanswerable questions (SQuAD v2) are not supported")
            answers = []
            for item in qa["answers"]:
                start, text = item.get("answer_start"), item.get("text")
                if not isinstance(start, int) or not isinstance(text, str) or context[start:start + len(text)] != text:
                    raise InputError(f"{where}: answer {text!r} is not at character {start} of its context")
                answers.append((start, text))
            examples.append(Example(context, 0, question=qa["question"], answers=tuple(answers)))
    if not examples:
        raise InputError(f"{file} holds no questions; expected {SQUAD_LAYOUT}")
    return examples
