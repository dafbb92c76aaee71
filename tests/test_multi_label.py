"""Multi-label image classification end to end, the task added through zoo.tasks alone: an image folder
with labels.csv -> `zoo finetune --task multi-label-image-classification` (real EfficientNet-Lite0
weights; mean AP and micro/macro F1 per epoch, checked here against scikit-learn) -> `zoo validate` ->
`zoo export` (onnx, onnx-fp16, onnx-int8) -> `zoo predict` and the HTTP route list every label at or
above the bundle's threshold, as the torch model's sigmoids say."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import serve
import zoo
from serve.activations import sigmoid
from zoo.config import FinetuneConfig
from zoo.errors import InputError
from zoo.factory import resolve
from zoo.preprocess import preprocess_images
from zoo.registry import get_model
from zoo.tasks import TASKS, implementation
from zoo_cli import main

SHAPES = ("blue disc", "red square", "yellow bar")  # sorted: the labels' order
TASK = "multi-label-image-classification"


def write_scenes(folder: Path, count: int, seed: int) -> list[list[str]]:
    """Grey-ish scenes holding each shape with probability 1/2 (some none, some all three); labels.csv."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, labels = ["image,labels"], []
    for index in range(count):
        image = Image.new("RGB", (96, 96), tuple(rng.randrange(90, 160) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        present = [name for name in SHAPES if rng.random() < 0.5]
        for name in present:
            x, y = rng.randrange(0, 50), rng.randrange(0, 50)
            if name == "red square":
                draw.rectangle([x, y, x + 36, y + 36], fill=(220, 20, 20))
            elif name == "blue disc":
                draw.ellipse([x, y, x + 40, y + 40], fill=(20, 40, 230))
            else:
                draw.rectangle([0, y, 95, y + 12], fill=(240, 230, 20))
        image.save(folder / f"scene{index:02d}.png")
        rows.append(f"scene{index:02d}.png,{';'.join(present)}")
        labels.append(present)
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return labels


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multi-label") / "scenes"
    write_scenes(root, 40, seed=0)
    return root


@pytest.fixture(scope="module")
def run_and_bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("multi-label-run")
    code = main(["finetune", "efficientnet_lite0", "--data", str(data), "--out", str(out / "run"), "--task", TASK,
                 "--epochs", "6", "--batch-size", "8", "--val-fraction", "0.25", "--quiet"])
    assert code == 0
    code = main(["export", str(out / "run"), "--out", str(out / "bundle"), "--format", "onnx", "--format", "onnx-fp16",
                 "--format", "onnx-int8"])
    assert code == 0
    return out / "run", out / "bundle"


def _load(path: Path):
    return implementation(TASKS[TASK]).load_data(path, get_model("efficientnet_lite0"), FinetuneConfig(val_fraction=0.25))


def test_labels_csv_gives_each_image_its_label_set(data: Path) -> None:
    dataset = _load(data)
    assert dataset.task == TASK and dataset.labels == list(SHAPES)
    assert len(dataset.train) == 30 and len(dataset.val) == 10 and dataset.split.startswith("random seed=0")
    rows = dict(line.split(",") for line in (data / "labels.csv").read_text().splitlines()[1:])
    for example in dataset.train + dataset.val:
        expected = sorted(SHAPES.index(name) for name in rows[Path(example.item).name].split(";") if name)
        assert list(example.target) == expected
    assert _load(data / "labels.csv").fingerprint() == dataset.fingerprint()  # the folder or its CSV
    summary = implementation(TASKS[TASK]).summary(dataset)
    assert sum(summary["train"].values()) >= 30 - summary["train"]["(none)"]


@pytest.mark.parametrize("content, message", [
    ("image,tags\na.png,x\n", r"missing column\(s\) labels"),
    ("image,labels,split\nscene00.png,red square;blue disc,train\nscene01.png,green,val\n", r"green appear only in the val split"),
    ("image,labels\nscene00.png,red square\nscene01.png,red square\n", r"found 1 label\(s\)"),
    ("image,labels,split\nscene00.png,a;b,test\n", r":2: split 'test'"),
])
def test_bad_label_files_are_named(data: Path, tmp_path: Path, content: str, message: str) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text(content)
    for image in data.glob("scene0[01].png"):
        (tmp_path / image.name).write_bytes(image.read_bytes())
    with pytest.raises(InputError, match=message):
        _load(tmp_path)
    with pytest.raises(InputError, match="labels.csv of image,labels rows"):
        _load(tmp_path / "missing")


def test_label_smoothing_is_refused_before_anything_is_written(data: Path, tmp_path: Path, capsys) -> None:
    code = main(["finetune", "efficientnet_lite0", "--data", str(data), "--out", str(tmp_path / "run"), "--task", TASK,
                 "--label-smoothing", "0.1"])
    assert code == 2 and "multi-label heads take none" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_finetune_beats_chance_and_its_metrics_are_scikit_learns(run_and_bundle, data: Path) -> None:
    """The logged mean AP and F1 equal scikit-learn's on the kept model's validation outputs; with the
    pretrained features, 6 short epochs put mean AP well above the labels' base rate (~0.5)."""
    from sklearn.metrics import average_precision_score, f1_score

    run, _ = run_and_bundle
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    card = json.loads((run / "card.json").read_text())
    assert card["labels"] == list(SHAPES) and card["head"] == "multilabel"
    assert set(card["best_metrics"]) == {"loss", "mean_ap", "micro_f1", "macro_f1"}
    dataset = _load(data)
    entry = resolve(str(run))
    with torch.inference_mode():
        logits = zoo.build(str(run))(preprocess_images(entry.input, [e.item for e in dataset.val])).numpy()
    truth = np.zeros(logits.shape, dtype=int)
    for row, example in enumerate(dataset.val):
        truth[row, list(example.target)] = 1
    scores, predicted = sigmoid(logits), (sigmoid(logits) >= 0.5).astype(int)
    present = truth.sum(axis=0) > 0
    mean_ap = np.mean([average_precision_score(truth[:, j], scores[:, j]) for j in np.flatnonzero(present)])
    last = history[-1]
    assert last["val_mean_ap"] == pytest.approx(mean_ap, abs=1e-5)
    assert last["val_micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"), abs=1e-5)
    seen = present | predicted.any(axis=0)
    macro = np.mean(f1_score(truth, predicted, average=None, zero_division=0)[seen])
    assert last["val_macro_f1"] == pytest.approx(macro, abs=1e-5)
    assert mean_ap >= 0.8, mean_ap
    assert main(["validate", str(run)]) == 0


def test_bundle_lists_the_labels_above_its_threshold_like_torch(run_and_bundle, data: Path, capsys) -> None:
    run, bundle = run_and_bundle
    manifest = serve.load(bundle).manifest
    post = manifest.postprocessing
    assert (manifest.task, post.kind, post.activation, post.score_threshold) == (TASK, "multi-label", "sigmoid", 0.5)
    assert post.labels == list(SHAPES) and {"fp16", "int8"} <= set(manifest.variants)
    photos = [str(data / f"scene{i:02d}.png") for i in range(8)]
    entry = resolve(str(run))
    with torch.inference_mode():
        scores = sigmoid(zoo.build(str(run))(preprocess_images(entry.input, photos)).numpy())
    results = serve.load(bundle).predict(photos)
    for row, result in zip(scores, results):
        expected = [SHAPES[j] for j in np.argsort(-row, kind="stable") if row[j] >= 0.5]
        assert [p["label"] for p in result["labels"]] == expected
        assert [p["score"] for p in result["labels"]] == pytest.approx([float(row[SHAPES.index(n)]) for n in expected], abs=1e-4)
    everything = serve.load(bundle).predict(photos[:1], min_score=0.0)[0]["labels"]
    assert [p["label"] for p in everything] == [SHAPES[j] for j in np.argsort(-scores[0], kind="stable")]
    assert main(["predict", str(bundle), photos[0], "--min-score", "0.99"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith("(threshold 0.99)") and all(f"{n} " not in line for n in SHAPES if scores[0][SHAPES.index(n)] < 0.99)
    assert main(["predict", str(bundle), photos[0], "--aggregation", "simple"]) == 2  # NER's option: refused


def test_http_predict_lists_the_same_labels(run_and_bundle, data: Path) -> None:
    import httpx
    from test_http import Server

    _, bundle = run_and_bundle
    photo = data / "scene03.png"
    server = Server(bundle, max_wait_ms=5.0)
    try:
        server.wait_ready()
        url = f"{server.url}/v2/models/{serve.load(bundle).manifest.model_id}/predict"
        response = httpx.post(url, content=photo.read_bytes(), headers={"content-type": "image/png"}, timeout=60)
        lowered = httpx.post(url + "?min_score=0", content=photo.read_bytes(), headers={"content-type": "image/png"},
                             timeout=60)
        wrong = httpx.post(url + "?min_score=2", content=photo.read_bytes(), headers={"content-type": "image/png"},
                           timeout=60)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    assert response.json()[0]["labels"] == serve.load(bundle).predict([str(photo)])[0]["labels"]
    assert [p["label"] for p in lowered.json()[0]["labels"]] == [
        p["label"] for p in serve.load(bundle).predict([str(photo)], min_score=0.0)[0]["labels"]]
    assert len(lowered.json()[0]["labels"]) == len(SHAPES)
    assert wrong.status_code == 400 and "detection and multi-label" in wrong.json()["error"]


def test_exports_are_judged_by_the_label_sets() -> None:
    """A multi-label output agrees when every label of a row falls on the same side of the threshold: a
    row whose top label is unchanged but whose second label crosses 0.5 disagrees (top-1 would pass it)."""
    from zoo.reference import compare_outputs

    entry = resolve_run_entry()
    expected = np.array([[3.0, 0.2, -2.0], [1.0, -1.0, -3.0]])
    crossed = expected + np.array([[0.0, -0.3, 0.0], [0.0, 0.0, 0.0]])
    result = compare_outputs(entry, "case", crossed, expected, atol=1.0)
    assert result.agreement_name == "label-set agreement" and result.top1_agreement == 0.5 and not result.ok
    assert compare_outputs(entry, "case", expected + 0.05, expected, atol=0.1).ok


def resolve_run_entry():
    """efficientnet_lite0 as a multi-label run's entry (its task decides the comparison)."""
    import dataclasses

    return dataclasses.replace(get_model("efficientnet_lite0"), task=TASK)
