"""Torch-side preprocessing derived from an entry's input spec (torchvision transforms v2 for
images, the entry's `tokenizers` file for text). `serve` reimplements the same steps in numpy;
tests hold the two to 1e-4 on real photos."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Sequence, Union

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from zoo.errors import InputError
from zoo.schema import ImageInputSpec, TextInputSpec

ImageLike = Union[str, Path, bytes, Image.Image]


def open_image(source: ImageLike) -> Image.Image:
    """An RGB PIL image with EXIF orientation applied; InputError for anything that is not an image."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            image.load()
        except FileNotFoundError:
            raise InputError(f"image file {source} does not exist") from None
        except (UnidentifiedImageError, OSError) as exc:
            name = "the given bytes" if isinstance(source, bytes) else str(source)
            raise InputError(f"{name} is not a readable image (expected JPEG/PNG/...): {exc}") from None
    return ImageOps.exif_transpose(image).convert("RGB")


def image_transform(spec: ImageInputSpec):
    """Resize (shorter side, or both with `warp`) -> center crop (unless `crop` is None) -> float in [0, 1]
    -> normalise, as torchvision v2."""
    from torchvision.transforms import InterpolationMode, v2

    crop = [] if spec.crop is None else [v2.CenterCrop(spec.crop)]
    size = (spec.resize, spec.resize) if spec.warp else spec.resize
    return v2.Compose([
        v2.Resize(size, interpolation=InterpolationMode(spec.interpolation), antialias=True),
        *crop,
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ])


def square(spec: ImageInputSpec) -> ImageInputSpec:
    """The spec with a center crop at its resize when it has none: one fixed square shape, for a model
    that takes any image size (segmentation) fed where one shape is needed (calibration, a fixed-size
    SavedModel)."""
    return spec if spec.crop is not None else dataclasses.replace(spec, crop=spec.resize)


def preprocess_images(spec: ImageInputSpec, images: Sequence[ImageLike]) -> torch.Tensor:
    transform = image_transform(spec)
    return torch.stack([transform(open_image(image)) for image in images])


def image_pixels(image: ImageLike) -> torch.Tensor:
    """1x3xHxW floats in [0, 1] at the image's own size: a detector's input (it resizes and normalises inside)."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    return (pil_to_tensor(open_image(image)).float() / 255.0)[None]


WORDPIECE_VOCAB = "vocab.txt"  # a BERT-family repository without tokenizer.json: its WordPiece vocabulary
BUNDLE_TOKENIZER = "tokenizer.json"  # what a bundle stores when the entry's tokenizer is a vocabulary


def read_tokenizer(path: Path):
    """The `tokenizers` Tokenizer of a tokenizer.json, or of a WordPiece vocab.txt with the settings of the
    tokenizer_config.json beside it (lower-casing, accents, CJK characters), built as transformers'
    BertTokenizerFast builds it from the same files."""
    from tokenizers import Tokenizer

    if path.name != WORDPIECE_VOCAB:
        return Tokenizer.from_file(str(path))
    import json

    from tokenizers.implementations import BertWordPieceTokenizer

    settings_file = path.parent / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text("utf-8")) if settings_file.is_file() else {}

    def token(name: str, default: str) -> str:  # a plain string, or an AddedToken saved as {"content": ...}
        value = settings.get(name) or default
        return value["content"] if isinstance(value, dict) else value

    built = BertWordPieceTokenizer(str(path), lowercase=settings.get("do_lower_case", True),
                                   strip_accents=settings.get("strip_accents"),
                                   handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
                                   **{name: token(name, default) for name, default in (
                                       ("unk_token", "[UNK]"), ("sep_token", "[SEP]"), ("cls_token", "[CLS]"),
                                       ("pad_token", "[PAD]"), ("mask_token", "[MASK]"))})
    return Tokenizer.from_str(built.to_str())


def load_tokenizer(path: Path, spec: TextInputSpec):
    """The entry's tokenizer (read_tokenizer), truncating at `max_length` and padding to the longest text of
    a batch. Bundles store it configured like this, so the runtime applies exactly the same settings."""
    tokenizer = read_tokenizer(path)
    if tokenizer.padding:
        pad_token, pad_id = tokenizer.padding["pad_token"], tokenizer.padding["pad_id"]
    else:
        pad_token = next((t for t in ("[PAD]", "<pad>") if tokenizer.token_to_id(t) is not None), None)
        if pad_token is None:
            raise InputError(f"{path.name}: no padding token ([PAD] or <pad>) in the vocabulary")
        pad_id = tokenizer.token_to_id(pad_token)
    tokenizer.enable_truncation(spec.max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # no fixed length: pad to the longest
    return tokenizer


def tokenize(tokenizer, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` (int64), padded to the longest text."""
    encodings = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.int64),
        "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64),
    }
