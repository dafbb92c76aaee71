"""What one request may ask of the runtime. Every limit has a safe default, is configuration (serve.load,
ServerConfig, `zoo serve --max-...`), and is named, with the way to raise it, in the error it raises."""

from __future__ import annotations

from dataclasses import dataclass

from serve.errors import LimitError


@dataclass(frozen=True)
class Limits:
    # Inputs per call: images or texts of one predict request, the batch of one KServe infer request.
    max_inputs: int = 64
    # Pixels of one image as its header declares them, checked before decoding (a 24 MP camera photo
    # is 6000 x 4000). Decoding costs ~4 bytes a pixel; resizing and normalising ~16 more per pixel kept.
    max_image_pixels: int = 40_000_000
    # Long side over short side. Resizing the short side to the model's size scales the long side by
    # this ratio: a 1 x 8000 PNG of 93 bytes would otherwise become 256 x 2,048,000 float pixels (2.4 GB).
    max_aspect_ratio: float = 20.0
    # Characters of one text (tokenizers builds ~100 bytes of encoding per character before truncating).
    max_text_chars: int = 100_000

    def __post_init__(self) -> None:
        for name, value in (("max_inputs", self.max_inputs), ("max_image_pixels", self.max_image_pixels),
                            ("max_aspect_ratio", self.max_aspect_ratio), ("max_text_chars", self.max_text_chars)):
            if not value > 0:
                raise ValueError(f"Limits.{name}={value}: must be positive")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"Limits.max_aspect_ratio={self.max_aspect_ratio}: must be at least 1")

    def inputs(self, count: int) -> None:
        if count > self.max_inputs:
            raise LimitError(f"{count} inputs in one request exceed the limit of {self.max_inputs} "
                             "(max_inputs; `zoo serve --max-inputs`); send fewer per request")

    def image_size(self, width: int, height: int, resized: bool) -> None:
        """`resized`: the short side is scaled to the model's size (the aspect ratio bounds the long one)."""
        if width * height > self.max_image_pixels:
            raise LimitError(f"image of {width}x{height} = {width * height:,} pixels exceeds the limit of "
                             f"{self.max_image_pixels:,} (max_image_pixels; `zoo serve --max-image-pixels`); "
                             "downscale it first")
        if resized and max(width, height) > self.max_aspect_ratio * max(1, min(width, height)):
            raise LimitError(f"image of {width}x{height} has an aspect ratio over the limit of "
                             f"{self.max_aspect_ratio:g}:1 (max_aspect_ratio; `zoo serve --max-aspect-ratio`); "
                             "crop it first")

    def text(self, text: str) -> None:
        if len(text) > self.max_text_chars:
            raise LimitError(f"text of {len(text):,} characters exceeds the limit of {self.max_text_chars:,} "
                             "(max_text_chars; `zoo serve --max-text-chars`); the model reads only its first "
                             "tokens anyway: send the beginning")


DEFAULT_LIMITS = Limits()
