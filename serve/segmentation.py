"""Per-pixel logits -> a class mask at the input image's own resolution, its class areas, and a
palette PNG (the Pascal VOC colour map: the file holds class indices and shows as colours)."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from serve.kinds import Options, OutputKind
from serve.preprocess import pillow

if TYPE_CHECKING:
    from PIL import Image

MAX_CLASSES = 256  # a palette PNG holds 8-bit indices


def mask_from_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """CHW logits at the model's resolution -> HxW uint8 class indices at `size` = (width, height):
    argmax per pixel, then nearest-neighbour resizing (class ids are never blended)."""
    Image = pillow()
    mask = Image.fromarray(logits.argmax(axis=0).astype(np.uint8))
    if mask.size != tuple(size):
        mask = mask.resize(tuple(size), Image.Resampling.NEAREST)
    return np.asarray(mask)


def class_areas(mask: np.ndarray, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Every class present in `mask`, largest area first: index, label, pixels, fraction of the image."""
    counts = np.bincount(mask.ravel(), minlength=len(labels))
    order = np.argsort(-counts, kind="stable")
    return [{"index": int(i), "label": labels[i] if i < len(labels) else str(i), "pixels": int(counts[i]),
             "fraction": float(counts[i] / mask.size)} for i in order if counts[i]]


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (256 RGB triples, class bits spread over the colour channels)."""
    palette = []
    for index in range(MAX_CLASSES):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


def mask_image(mask: np.ndarray) -> Image.Image:
    """A palette ("P") image: pixel values are the class indices, shown in VOC colours."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    image = pillow().frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    image.putpalette(voc_palette())
    return image


def mask_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    mask_image(mask).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def mask_png_base64(mask: np.ndarray) -> str:
    return base64.b64encode(mask_png(mask)).decode("ascii")


def jsonable(result: dict[str, Any]) -> dict[str, Any]:
    """A predict() result as JSON: a segmentation mask becomes `mask_png_base64`, the palette PNG
    (what `zoo predict --json` prints and the HTTP server returns); other results are unchanged."""
    if "mask" not in result:
        return result
    encoded = {key: value for key, value in result.items() if key != "mask"}
    encoded["mask_png_base64"] = mask_png_base64(result["mask"])
    return encoded


class Segmentation(OutputKind):
    name = "segmentation"
    options = frozenset({"masks"})  # zoo predict --masks: the masks written as PNG files

    def postprocess(self, row: Any, options: Options) -> dict[str, Any]:
        """`{"size": [width, height], "mask": HxW uint8 class indices at the image's own resolution (default
        the model's), "classes": the top_k largest classes by area}`."""
        size = options.size or (row.shape[2], row.shape[1])
        mask = mask_from_logits(row, size)
        return {"size": list(size), "mask": mask, "classes": class_areas(mask, self.post.labels)[:options.top_k]}

    def render(self, result: dict[str, Any]) -> str:
        areas = ", ".join(f"{c['label']} {c['fraction']:.1%}" for c in result["classes"])
        where = f" -> {result['mask_file']}" if "mask_file" in result else ""
        return f"{result['input']}: {result['size'][0]}x{result['size'][1]} mask; {areas}{where}"
