"""Preprocessing in numpy/PIL that reproduces the training-side torchvision pipeline step for step:
EXIF transpose -> RGB -> resize shorter side (PIL, antialiased) -> center crop (torchvision's
rounding; none for segmentation) -> float32 / 255 -> (x - mean) / std, NCHW. Detectors: float32 / 255
at the image's own size (the graph resizes and normalises). Text: the bundle's `tokenizers` file."""

from __future__ import annotations

import importlib.util
import io
import logging
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from serve.errors import BundleError, InputError, LimitError
from serve.limits import DEFAULT_LIMITS, Limits
from serve.manifest import ImagePreprocessing, TextPreprocessing

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("serve")
ORIENTATION = 0x0112  # the EXIF tag (PIL.ExifTags.Base.Orientation)


def pillow() -> ModuleType:
    """PIL.Image, imported when an image is first handled: text-only servers install no pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise BundleError("this bundle takes images and pillow is missing; install it with "
                          "`pip install zoo[image]`") from None
    return Image


def describe(item: Any) -> str:
    """How an input is named in results: the path or text itself, else its kind."""
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, dict) and isinstance(item.get("question"), str):  # question answering
        return item["question"]
    if isinstance(item, (bytes, bytearray)):
        return f"<{len(item)} bytes>"
    if "PIL.Image" in sys.modules and isinstance(item, sys.modules["PIL.Image"].Image):  # no pillow, no PIL image
        return f"<PIL image {item.size[0]}x{item.size[1]}>"
    if isinstance(item, np.ndarray):
        return f"<array {item.shape}>"
    return f"<{type(item).__name__}>"


def to_rgb_image(item: Any, limits: Limits = DEFAULT_LIMITS, resized: bool = True) -> Image.Image:
    """Path, bytes, PIL image or HxW(x3|4) uint8 array -> RGB PIL image with EXIF orientation applied.
    An encoded image's declared size is checked against `limits` before it is decoded (`resized`: the
    short side will be scaled, so the aspect ratio is bounded too)."""
    Image = pillow()
    from PIL import ImageOps, UnidentifiedImageError

    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (3, 4)):
            raise InputError(f"array input {item.dtype} {item.shape}: expected a uint8 image of shape HxW, HxWx3 or HxWx4")
        limits.image_size(item.shape[1], item.shape[0], resized)
        return Image.fromarray(item).convert("RGB")
    if isinstance(item, Image.Image):
        limits.image_size(*item.size, resized)
        image = item
    elif isinstance(item, (str, Path, bytes, bytearray)):
        try:
            # Pillow warns over its MAX_IMAGE_PIXELS (89 MP) and refuses over twice that. The warning is
            # redundant here (the header's size meets `limits` next, before decoding), and turned into an
            # error it refused images under a configured max_image_pixels above 89 MP.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)
            limits.image_size(*image.size, resized)  # the header's size, before any pixel is decoded
            image.load()
        except FileNotFoundError:
            raise InputError(f"image file {item} does not exist") from None
        except IsADirectoryError:
            raise InputError(f"{item} is a folder; expected an image file") from None
        except Image.DecompressionBombError as exc:  # over twice pillow's MAX_IMAGE_PIXELS: it will not open it
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = int(found.group(1)) if found else None
            if pixels is not None and pixels <= limits.max_image_pixels:  # pillow's limit, not ours, refused it
                raise LimitError(f"{describe(item)}: image of {pixels:,} pixels exceeds pillow's decompression-bomb "
                                 f"limit of {2 * Image.MAX_IMAGE_PIXELS:,} (twice PIL.Image.MAX_IMAGE_PIXELS), "
                                 f"below max_image_pixels {limits.max_image_pixels:,}; downscale it first, or raise "
                                 "PIL.Image.MAX_IMAGE_PIXELS in the serving process") from None
            raise LimitError(f"{describe(item)}: image of {f'{pixels:,}' if pixels else 'more'} pixels exceeds the "
                             f"limit of {limits.max_image_pixels:,} (max_image_pixels; `zoo serve "
                             "--max-image-pixels`); downscale it first") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{describe(item)} is not a readable image (expected JPEG, PNG, ...): {exc}") from None
    else:
        raise InputError(f"unsupported image input {describe(item)}: expected a path, bytes, PIL image or uint8 array")
    # ImageOps.exif_transpose and convert("RGB") each copy the image even when they change nothing (a
    # first copy of a fresh 640x427 decode costs ~0.85 ms, as much as decoding half of it): skip them
    # then. The orientation is read as exif_transpose reads it. The caller's image is never modified.
    image.load()
    if image.getexif().get(ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize_shorter(image: Image.Image, size: int, interpolation: str) -> Image.Image:
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return image.resize((new_w, new_h), _resampling(interpolation))


def _resampling(interpolation: str):
    resampling = pillow().Resampling
    return {"bilinear": resampling.BILINEAR, "bicubic": resampling.BICUBIC}[interpolation]


def _center_crop(image: Image.Image, crop: int) -> Image.Image:
    width, height = image.size
    if width < crop or height < crop:
        raise InputError(f"image of {width}x{height} is smaller than the {crop}x{crop} crop after resizing")
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def preprocess_image(spec: ImagePreprocessing, item: Any, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """One CHW float32 array."""
    return preprocess_image_sized(spec, item, limits)[0]


def preprocess_image_sized(spec: ImagePreprocessing, item: Any,
                           limits: Limits = DEFAULT_LIMITS) -> tuple[np.ndarray, tuple[int, int]]:
    """One CHW float32 array and the image's own (width, height), which a mask is mapped back to."""
    image = to_rgb_image(item, limits, resized=spec.resize is not None)
    size = image.size
    if spec.resize is not None and spec.warp:  # both sides, whatever the aspect ratio
        image = image.resize((spec.resize, spec.resize), _resampling(spec.interpolation))
    elif spec.resize is not None:  # None: detectors take the image as it is and resize inside the graph
        image = _resize_shorter(image, spec.resize, spec.interpolation)
    if spec.crop is not None:
        image = _center_crop(image, spec.crop)
    return _normalize(spec, image), size


def _normalize(spec: ImagePreprocessing, image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)


def preprocess_images(spec: ImagePreprocessing, items: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """One NCHW batch; the images must come out the same size (always so with a crop)."""
    arrays = [preprocess_image(spec, item, limits) for item in items]
    shapes = sorted({a.shape[1:] for a in arrays})
    if len(shapes) > 1:
        raise InputError(f"images of different aspect ratios give inputs of sizes {shapes}, which cannot share a "
                         "batch; predict() runs each size separately")
    return np.stack(arrays)


def check_text(item: Any, limits: Limits = DEFAULT_LIMITS) -> str:
    """`item` if it is a text the tokenizer can take within `limits`, else InputError / LimitError."""
    if not isinstance(item, str):
        raise InputError(f"text input {describe(item)}: expected a str")
    limits.text(item)
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"text input: character {exc.start} ({item[exc.start]!r}) is not valid Unicode text "
                         "(a lone surrogate); send UTF-8 text") from None
    return item


def load_tokenizer_file(path: Path):
    """A `tokenizers` Tokenizer from a tokenizer.json; BundleError for anything else in its place."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for a file it cannot parse
        raise BundleError(f"{path.name} is not a tokenizers tokenizer.json ({str(exc).splitlines()[0][:120]}); "
                          "re-export the bundle") from None


class TextEncoder:
    """The bundle's tokenizer with its manifest settings: truncation at max_length, padding to the
    longest text, or to `length` for a model exported with a fixed sequence length."""

    def __init__(self, path: Path, spec: TextPreprocessing, length: int | None = None,
                 limits: Limits = DEFAULT_LIMITS):
        if importlib.util.find_spec("tokenizers") is None:
            raise BundleError("this is a text bundle and the tokenizers package is missing; "
                              "install it with `pip install zoo[text]`")

        self.tokenizer = load_tokenizer_file(path)
        if spec.pad_id >= self.tokenizer.get_vocab_size():
            raise BundleError(f"manifest.json: preprocessing.pad_id: {spec.pad_id} is not an id of the tokenizer's "
                              f"vocabulary (0..{self.tokenizer.get_vocab_size() - 1})")
        self.limits = limits
        self.max_length = length or spec.max_length
        self.fixed_length = length is not None
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=spec.pad_id, pad_token=spec.pad_token, length=length)

    def __call__(self, texts: Sequence[Any]) -> dict[str, np.ndarray]:
        return self.encode(texts)[0]

    def encode(self, texts: Sequence[Any]) -> tuple[dict[str, np.ndarray], list[Any]]:
        """The model inputs and each text's `tokenizers.Encoding` (offsets, word ids: entity spans)."""
        for text in texts:
            check_text(text, self.limits)
        encodings = self.tokenizer.encode_batch(list(texts))
        truncated = [index for index, encoding in enumerate(encodings) if encoding.overflowing]
        if truncated:  # one line per call, not one per text: a server logs this for every long request
            shown = ", ".join(map(str, truncated[:5])) + (f" and {len(truncated) - 5} more" if len(truncated) > 5 else "")
            log.warning("input%s %s: text longer than max_length=%d tokens was truncated",
                        "s" if len(truncated) > 1 else "", shown, self.max_length)
        return {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
        }, encodings
