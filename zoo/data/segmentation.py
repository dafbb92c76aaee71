"""Semantic segmentation data: image + mask PNG pairs (see `load_segmentation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageOps, UnidentifiedImageError

from zoo.data.dataset import Dataset, Example, random_split, readable_images
from zoo.errors import InputError

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
            return Dataset("semantic-segmentation", "image", labels, train, _pairs(root / "val", labels, skipped), str(root), "given", skipped)
    else:
        train = _pairs(root, labels, skipped)
    train, val = random_split(train, val_fraction, seed)
    return Dataset("semantic-segmentation", "image", labels, train, val, str(root), f"random seed={seed} fraction={val_fraction}", skipped)


def _pairs(folder: Path, labels: Sequence[str], skipped: list[str]) -> list[Example]:
    images_dir, masks_dir = folder / "images", folder / "masks"
    for needed in (images_dir, masks_dir):
        if not needed.is_dir():
            raise InputError(f"{folder}: no {needed.name}/ folder; expected {SEGMENTATION_LAYOUT}")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    examples = []
    for image in readable_images(images_dir, skipped):
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
