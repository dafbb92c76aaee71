"""Object-detection data: COCO JSON or Pascal VOC XML boxes (see `load_detection`)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from zoo.data.dataset import Dataset, Example, random_split
from zoo.errors import InputError

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
            return Dataset("object-detection", "image", labels, train, val, str(root), "given", skipped)
    else:
        labels, train = _annotations(root, None, skipped)
    train, val = random_split(train, val_fraction, seed)
    return Dataset("object-detection", "image", labels, train, val, str(root), f"random seed={seed} fraction={val_fraction}", skipped)


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
