"""Images for static int8 quantization: the calibration set and the held-out agreement set.

Default set (offline, documented, hash-checked): colour photographs shipped in the scikit-image wheel
(`skimage/data/`, CC0 or public domain, see scikit-image's `skimage/data/_fetchers.py`) and zoo's two
sample photos. It is split by photograph, never by crop, so the held-out half is never calibrated on.
Each photo is seen as five views (the whole frame and its four 70 % corners) through the entry's
evaluation transform, which multiplies a small set without inventing pixels.

`--calibration DIR` replaces the default set with the user's images (every image file under DIR, one
view each): with at least HELD_OUT_EVERY of them, every HELD_OUT_EVERY-th file (in sorted order) is held
out for the agreement and the rest calibrates; with fewer, all calibrate and the agreement is measured
on the default held-out half."""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import torch
from PIL import Image

from zoo.data.dataset import IMAGE_SUFFIXES  # what a training folder accepts, a calibration folder too
from zoo.errors import InputError
from zoo.preprocess import open_image, preprocess_images, square
from zoo.reference import asset_path
from zoo.schema import ImageInputSpec

# (file in skimage/data or zoo/assets, sha256)
CALIBRATION_PHOTOS = (
    ("skimage", "astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    ("skimage", "coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    ("skimage", "motorcycle_left.png", "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    ("skimage", "motorcycle_right.png", "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797"),
    ("skimage", "hubble_deep_field.jpg", "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    ("skimage", "brick.png", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
    ("skimage", "gravel.png", "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
    ("zoo", "china.jpg", "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
)
HELD_OUT_PHOTOS = (
    ("skimage", "chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    ("skimage", "rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    ("skimage", "retina.jpg", "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
    ("skimage", "grass.png", "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
    ("skimage", "ihc.png", "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
    ("zoo", "flower.jpg", "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
)
CORNER = 0.7  # side of each corner view, as a share of the image's sides
HELD_OUT_EVERY = 4  # --calibration DIR: one image in four is held out (never calibrated on)


def _photo(origin: str, name: str, sha256: str) -> Path:
    if origin == "zoo":
        path = asset_path(name)
    else:
        try:
            path = Path(distribution("scikit-image").locate_file(f"skimage/data/{name}"))
        except PackageNotFoundError:
            raise InputError("the default int8 calibration photos ship with scikit-image; install zoo[torch] "
                             "or pass --calibration DIR") from None
    if not path.is_file():
        raise InputError(f"default calibration photo {path} is missing; reinstall scikit-image or pass --calibration DIR")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise InputError(f"default calibration photo {path} has sha256 {digest}, expected {sha256}; "
                         "reinstall scikit-image (a different release may ship other files) or pass --calibration DIR")
    return path


def views(image: Image.Image) -> list[Image.Image]:
    """The whole frame and its four corners at CORNER of each side."""
    width, height = image.size
    w, h = round(width * CORNER), round(height * CORNER)
    boxes = [(0, 0, w, h), (width - w, 0, width, h), (0, height - h, w, height), (width - w, height - h, width, height)]
    return [image, *(image.crop(box) for box in boxes)]


def _default_batch(spec: ImageInputSpec, photos) -> torch.Tensor:
    images = [view for photo in photos for view in views(open_image(_photo(*photo)))]
    return preprocess_images(square(spec), images)  # any-size models: one batch of one shape


def user_split(directory: Path) -> tuple[list[Path], list[Path]]:
    """(calibration files, held-out files) of a --calibration folder; no held-out files below HELD_OUT_EVERY."""
    files = calibration_files(directory)
    if len(files) < HELD_OUT_EVERY:
        return files, []
    return [f for i, f in enumerate(files) if i % HELD_OUT_EVERY], files[::HELD_OUT_EVERY]


def held_out_images(spec: ImageInputSpec, directory: Path | None = None) -> tuple[torch.Tensor, str]:
    """The held-out images, preprocessed (NCHW), and what they are: the user's held-out share of
    `directory`, else the default held-out views."""
    held_out = user_split(directory)[1] if directory is not None else []
    if held_out:
        return preprocess_images(square(spec), held_out), f"{len(held_out)} held-out images of {directory}"
    images = _default_batch(spec, HELD_OUT_PHOTOS)
    return images, f"{len(images)} held-out views"


def calibration_images(spec: ImageInputSpec, directory: Path | None = None) -> torch.Tensor:
    """The calibration views, preprocessed (NCHW): the user's images in `directory`, else the default half."""
    if directory is None:
        return _default_batch(spec, CALIBRATION_PHOTOS)
    return preprocess_images(square(spec), user_split(directory)[0])


def calibration_files(directory: Path) -> list[Path]:
    """Every image file under `directory`; InputError naming the fix when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"--calibration {directory} is not a folder; give a folder of JPEG/PNG images")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"--calibration {directory} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                         "give a folder of images like the ones the model will see")
    return files
