"""Semantic segmentation end to end: image + mask data -> `zoo finetune` (mIoU per epoch) -> `zoo validate`
-> `zoo export` (dynamic height and width) -> `zoo predict` masks at each image's own size, equal to the
torch model's; the HTTP route returns the same mask. LR-ASPP starts from random weights here (its
pretrained file is on download.pytorch.org, out of reach): the path, not the accuracy, is under test."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import serve
import zoo
from serve.segmentation import class_areas, mask_from_logits, mask_png, voc_palette
from zoo_cli import main
from zoo.data import load_segmentation
from zoo.errors import InputError
from zoo.factory import resolve
from zoo.preprocess import preprocess_images

LABELS = ("background", "disc", "square")


def write_pairs(folder: Path, count: int, seed: int) -> None:
    """Photos of a red disc and a blue square on a dark ground, with their masks (class 1 and 2; two
    border pixels marked 255, ignored)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index in range(count):
        width, height = int(rng.integers(56, 80)), int(rng.integers(40, 64))
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 60, 3)))
        mask = Image.new("L", (width, height), 0)
        for value, colour, size, (low, high) in ((1, (220, 40, 40), 18, (2, 2)), (2, (40, 40, 220), 14, (2, 2))):
            x = int(rng.integers(low, width - size - 2))
            y = int(rng.integers(high, height - size - 2))
            shape = "ellipse" if value == 1 else "rectangle"
            getattr(ImageDraw.Draw(image), shape)([x, y, x + size, y + size], fill=colour)
            getattr(ImageDraw.Draw(mask), shape)([x, y, x + size, y + size], fill=value)
        mask.putpixel((0, 0), 255)
        mask.putpixel((1, 0), 255)
        image.save(folder / "images" / f"scene{index}.jpg", quality=95)
        mask.save(folder / "masks" / f"scene{index}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("segmentation")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    write_pairs(root, 4, seed=0)
    return root


@pytest.fixture(scope="module")
def run_and_bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("seg-run")
    code = main(["finetune", "lraspp_mobilenet_v3_large", "--data", str(data), "--out", str(out / "run"),
                 "--epochs", "1", "--batch-size", "2", "--lr", "0.01", "--scratch", "--quiet"])
    assert code == 0
    code = main(["export", str(out / "run"), "--out", str(out / "bundle"), "--format", "onnx",
                 "--format", "onnx-int8"])
    assert code == 0
    return out / "run", out / "bundle"


def test_dataset_pairs_images_with_masks(data: Path) -> None:
    dataset = load_segmentation(data, val_fraction=0.25, seed=0)
    assert dataset.labels == list(LABELS) and dataset.task == "semantic-segmentation"
    assert (len(dataset.train), len(dataset.val)) == (3, 1)
    assert all(Path(e.mask).stem == Path(e.item).stem for e in dataset.train + dataset.val)
    assert dataset.summary()["train"] == 3


@pytest.mark.parametrize(("break_it", "message"), [
    (lambda root: (root / "labels.txt").unlink(), "no labels.txt"),
    (lambda root: (root / "masks" / "scene1.png").unlink(), "scene1.jpg has no mask"),
    (lambda root: Image.new("L", (5, 5)).save(root / "masks" / "scene2.png"), "must match its image pixel for pixel"),
    (lambda root: Image.new("L", (1, 1)).save(root / "masks" / "orphan.png"), "mask(s) without an image: orphan"),
    (lambda root: Image.new("RGB", (5, 5)).save(root / "masks" / "scene0.png"), "mode RGB; a mask is a one-channel PNG"),
])
def test_bad_segmentation_data_is_named(data: Path, tmp_path: Path, break_it, message: str) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    break_it(copy)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_segmentation(copy)


def test_mask_values_beyond_the_labels_are_refused(data: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "labels.txt").write_text("background\ndisc\n")  # the masks also hold 2 (square)
    with pytest.raises(InputError, match=r"class value\(s\) \[2\] but labels.txt names 2 classes"):
        load_segmentation(copy)


def test_finetune_reports_miou_and_the_run_validates(run_and_bundle) -> None:
    run, _ = run_and_bundle
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"val_miou", "val_pixel_accuracy", "val_loss"} <= set(history[0])
    assert 0.0 <= history[0]["val_miou"] <= 1.0 and 0.0 <= history[0]["val_pixel_accuracy"] <= 1.0
    card = json.loads((run / "card.json").read_text())
    assert card["labels"] == list(LABELS) and set(card["best_metrics"]) == {"loss", "miou", "pixel_accuracy"}
    assert np.array(card["reference"]["cases"][0]["output"]).shape == (2, 3, 48, 64)
    assert main(["validate", str(run)]) == 0


def test_reported_miou_is_the_hand_computed_iou_of_the_validation_image(run_and_bundle, data: Path) -> None:
    """The run's val_miou equals IoU computed here by hand on its validation image: the kept model's argmax
    at the evaluation size (shorter side to `resize`), the mask brought to that size by nearest neighbour
    (source pixel floor(i * in / out), as torchvision resizes masks), pixels marked 255 left out, the mean
    over the classes in prediction or mask."""
    run, _ = run_and_bundle
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (example,) = load_segmentation(data, val_fraction=0.2, seed=0).val  # the run's defaults: 1 of 4 images
    entry = resolve(str(run))
    with torch.inference_mode():
        predicted = zoo.build(str(run))(preprocess_images(entry.input, [example.item]))[0].argmax(0).numpy()
    height, width = predicted.shape
    assert min(height, width) == entry.input.resize
    mask = np.asarray(Image.open(example.mask))
    rows = np.floor(np.arange(height) * mask.shape[0] / height).astype(int)
    columns = np.floor(np.arange(width) * mask.shape[1] / width).astype(int)
    target = mask[rows][:, columns]
    keep = target != 255
    ious = []
    for value in range(len(LABELS)):
        p, t = (predicted == value) & keep, (target == value) & keep
        if (p | t).any():
            ious.append((p & t).sum() / (p | t).sum())
    assert keep.sum() < keep.size  # the two marked pixels were scaled up, and left out
    assert history[-1]["val_miou"] == pytest.approx(float(np.mean(ious)), abs=1e-6)
    accuracy = float(((predicted == target) & keep).sum() / keep.sum())
    assert history[-1]["val_pixel_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_classification_metrics_are_refused_for_segmentation(data: Path, tmp_path: Path, capsys) -> None:
    code = main(["finetune", "lraspp_mobilenet_v3_large", "--data", str(data), "--out", str(tmp_path / "r"),
                 "--metric", "macro_f1", "--scratch"])
    assert code == 2 and "expected one of miou, pixel_accuracy, loss" in capsys.readouterr().err


def test_exported_masks_match_torch_at_every_image_size(run_and_bundle, data: Path, tmp_path: Path, capsys) -> None:
    run, bundle = run_and_bundle
    manifest = serve.load(bundle).manifest
    assert manifest.inputs[0].shape == ["batch", 3, "height", "width"] and manifest.postprocessing.kind == "segmentation"
    assert manifest.postprocessing.labels == list(LABELS) and "int8" in manifest.variants
    photos = [str(data / "images" / "scene0.jpg"), str(data / "images" / "scene3.jpg")]
    entry = resolve(str(run))
    model = zoo.build(str(run))
    for variant in ("fp32", "int8"):
        predictor = serve.load(bundle, variant=variant)
        for photo, result in zip(photos, predictor.predict(photos, top_k=3)):
            with Image.open(photo) as image:
                size = image.size
            with torch.inference_mode():
                logits = model(preprocess_images(entry.input, [photo]))[0].numpy()
            expected = mask_from_logits(logits, size)
            assert result["mask"].shape == (size[1], size[0]) and result["size"] == list(size)
            agreement = float(np.mean(result["mask"] == expected))
            assert agreement >= (0.999 if variant == "fp32" else 0.95), (variant, agreement)
            assert result["classes"] == class_areas(result["mask"], LABELS)[:3]
    assert main(["predict", str(bundle), *photos, "--masks", str(tmp_path / "masks"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = np.asarray(Image.open(printed[0]["mask_file"]))
    assert Image.open(printed[0]["mask_file"]).mode == "P"
    assert np.array_equal(written, serve.load(bundle).predict([photos[0]])[0]["mask"])
    assert main(["predict", str(bundle), photos[0], "--json"]) == 0
    encoded = json.loads(capsys.readouterr().out)[0]["mask_png_base64"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded)))), written)


def test_http_predict_returns_the_mask(run_and_bundle, data: Path) -> None:
    import httpx
    from test_http import Server

    _, bundle = run_and_bundle
    photo = data / "images" / "scene1.jpg"
    server = Server(bundle, max_wait_ms=5.0)
    try:
        server.wait_ready()
        response = httpx.post(f"{server.url}/v2/models/{serve.load(bundle).manifest.model_id}/predict",
                              content=photo.read_bytes(), headers={"content-type": "image/jpeg"}, timeout=60)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    result = response.json()[0]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask_png_base64"]))))
    assert np.array_equal(mask, serve.load(bundle).predict([str(photo)])[0]["mask"])


def test_masks_option_is_refused_for_classifiers(bundles, tmp_path: Path, capsys) -> None:
    code = main(["predict", str(bundles["efficientnet_lite0"]), "zoo/assets/flower.jpg", "--masks", str(tmp_path)])
    assert code == 2 and "--masks" in capsys.readouterr().err


def test_mask_helpers() -> None:
    logits = np.zeros((3, 2, 3), dtype=np.float32)
    logits[1, 0, :] = 1.0
    logits[2, 1, 2] = 5.0
    mask = mask_from_logits(logits, (6, 4))  # twice the size: every class pixel becomes a 2x2 block
    assert np.array_equal(mask, np.repeat(np.repeat([[1, 1, 1], [0, 0, 2]], 2, axis=0), 2, axis=1))
    assert [(c["label"], c["pixels"]) for c in class_areas(mask, LABELS)] == [("disc", 12), ("background", 8), ("square", 4)]
    png = Image.open(io.BytesIO(mask_png(mask)))
    assert png.mode == "P" and np.array_equal(np.asarray(png), mask)
    assert png.getpalette()[3:9] == [128, 0, 0, 0, 128, 0] == voc_palette()[3:9]  # VOC: class 1 red, class 2 green


def test_static_shape_is_refused_for_segmentation(tmp_path: Path, capsys) -> None:
    code = main(["export", "lraspp_mobilenet_v3_large", "--static-shape", "1", "--out", str(tmp_path / "b")])
    assert code == 2 and "exported for any image size" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_the_bundle_runs_on_openvino_as_on_onnxruntime(run_and_bundle) -> None:
    from openvino_parity import assert_openvino_matches_onnxruntime

    assert_openvino_matches_onnxruntime(run_and_bundle[1])
