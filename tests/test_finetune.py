"""zoo finetune on tiny real-format datasets: every freeze policy, head, optimizer, resume,
reproducibility, a two-process DDP run, run directories that validate and export, bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import serve
import zoo
from zoo_cli import main
from zoo.errors import InputError
from zoo.freeze import backbone_blocks, parameter_groups
from zoo.heads import attach_head, head_prefix
from zoo.registry import get_model
from zoo.metrics import classification_metrics
from zoo.optimization import lr_schedule
from zoo.training import FinetuneConfig, finetune

TEXTS = [("great movie, loved it", "pos"), ("wonderful and fun", "pos"), ("a delight to watch", "pos"),
         ("superb acting", "pos"), ("terrible, boring film", "neg"), ("awful and dull", "neg"),
         ("a waste of time", "neg"), ("bad script and worse acting", "neg")]


def _write_images(root: Path, per_class: int = 6, classes=(("red", (200, 30, 30)), ("blue", (30, 30, 200)))) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return _write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "reviews.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in TEXTS))
    return path


def _pretrained_state() -> dict[str, torch.Tensor]:
    return zoo.build("efficientnet_lite0").state_dict()


def _changed(run: Path, base: dict[str, torch.Tensor]) -> dict[str, bool]:
    state = load_file(str(run / "checkpoints" / "last.safetensors"))
    return {k: not torch.equal(v, base[k]) for k, v in state.items() if k in base and v.shape == base[k].shape}


# Mechanisms, not the recipe: the test images are separable, so the recipe would stop at the probe (gated)
FAST = {"epochs": 1, "batch_size": 4, "quiet": True, "refit": "off", "after_probe": "finetune"}


def test_head_only_freezes_backbone_and_batchnorm_statistics(images: Path, tmp_path: Path) -> None:
    result = finetune("efficientnet_lite0", images, tmp_path / "run", freeze="head", lr=1e-2, **FAST)
    changed = _changed(tmp_path / "run", _pretrained_state())
    assert not any(changed.values()), [k for k, c in changed.items() if c][:5]  # weights and running stats
    assert result.trainable[-1][1] == 1280 * 2 + 2  # only the new head trains


def test_freeze_first_blocks(images: Path, tmp_path: Path) -> None:
    finetune("efficientnet_lite0", images, tmp_path / "run", freeze="5", lr=1e-3, **FAST)
    changed = _changed(tmp_path / "run", _pretrained_state())
    frozen = [k for k in changed if k.startswith(("_conv_stem", "_bn0", "_blocks.0.", "_blocks.1.", "_blocks.2.", "_blocks.3."))]
    statistics = [k for k in changed if "running_" in k or "num_batches" in k]
    trained = [k for k in changed if k.startswith(("_blocks.15.", "_conv_head")) and k not in statistics]
    assert frozen and not any(changed[k] for k in frozen)
    assert trained and all(changed[k] for k in trained)
    assert statistics and not any(changed[k] for k in statistics)  # --batchnorm frozen (the default)


def test_gradual_unfreezing_adds_one_block_per_epoch(images: Path, tmp_path: Path) -> None:
    result = finetune("efficientnet_lite0", images, tmp_path / "run", freeze="gradual:1", lr=1e-3,
                      epochs=3, batch_size=4, after_probe="finetune", quiet=True)
    assert [row["frozen_blocks"] for row in result.history] == [18, 18, 17, 16]  # the probe, then 3 epochs
    changed = _changed(tmp_path / "run", _pretrained_state())
    assert all(changed[k] for k in changed if k.startswith(("_conv_head", "_bn1.weight")))  # 'top' trained
    assert any(changed[k] for k in changed if k.startswith("_blocks.15."))  # unfrozen in epoch 3
    assert not any(changed[k] for k in changed if k.startswith("_blocks.14."))


def test_discriminative_learning_rates() -> None:
    entry = get_model("efficientnet_lite0")
    model = attach_head(zoo.build(entry, pretrained=False), entry, "multiclass", 3)
    prefix = head_prefix(model)
    blocks = backbone_blocks(model, prefix)
    groups = parameter_groups(model, blocks, prefix, lr=0.1, lr_decay=0.5, weight_decay=0.0)
    assert [g["name"] for g in groups[:3]] == ["head", "top", "_blocks.15"]
    assert [g["lr"] for g in groups[:3]] == pytest.approx([0.1, 0.05, 0.025])
    assert groups[-1]["name"] == "stem" and groups[-1]["lr"] == pytest.approx(0.1 * 0.5 ** 18)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize(("name", "head"), [
    ("torchvision:Swin_T_Weights.DEFAULT", "head"),  # registered last, after stages whose blocks end in linear layers
    ("timm:deit_tiny_patch16_224.fb_in1k", "head"),  # blocks.11.mlp.fc2 is the deepest linear layer, not the head
    ("resnet18", "fc"),
    ("mobilenet_v3_small", "classifier.3"),
])
def test_the_new_head_replaces_the_classifier_and_nothing_else(name: str, head: str) -> None:
    from zoo.factory import resolve

    entry = resolve(name)
    model = zoo.build(entry, pretrained=False)
    before = {key: value.shape for key, value in model.state_dict().items()}
    model = attach_head(model, entry, "multiclass", 3)
    after = {key: value.shape for key, value in model.state_dict().items()}
    assert head_prefix(model) == f"{head}." and after[f"{head}.weight"][0] == 3
    assert {key for key in before if before[key] != after[key]} == {f"{head}.weight", f"{head}.bias"}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "adagrad"])
def test_each_optimizer_trains(images: Path, tmp_path: Path, optimizer: str) -> None:
    result = finetune("efficientnet_lite0", images, tmp_path / "run", optimizer=optimizer, freeze="12", lr=1e-3,
                      clip_grad=1.0, label_smoothing=0.1, **FAST)
    state = torch.load(tmp_path / "run" / "training_state.pt", weights_only=True)
    assert type(state["optimizer"]["state"]) is dict and state["optimizer"]["state"]
    assert np.isfinite(result.history[0]["train_loss"])
    assert any(_changed(tmp_path / "run", _pretrained_state()).values())


def test_a_diverging_run_stops_with_a_clear_error(images: Path, tmp_path: Path, capsys) -> None:
    """A learning rate far too high: the loss turns NaN/inf within the epoch; the run stops there, before
    the bad step reaches the weights, and says what to change."""
    code = main(["finetune", "efficientnet_lite0", "--data", str(images), "--out", str(tmp_path / "run"),
                 "--optimizer", "sgd", "--lr", "1e12", "--epochs", "1", "--batch-size", "2", "--after-probe", "finetune",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "the run diverged (lr 1e+12). Lower --lr" in err, err
    assert not (tmp_path / "run" / "card.json").exists()


def test_warmup_cosine_schedule_and_accumulation(images: Path, tmp_path: Path) -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = lr_schedule(optimizer, FinetuneConfig(epochs=4, warmup_epochs=1), steps_per_epoch=2)
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:2] == pytest.approx([0.5, 1.0])  # linear warm-up over 2 steps
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.1 and lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)
    # 8 train images, batch 2, accumulate 2 -> 2 optimizer steps per epoch
    finetune("efficientnet_lite0", images, tmp_path / "run", epochs=2, batch_size=2, accumulate=2, freeze="head",
             val_fraction=0.34, after_probe="finetune", quiet=True)
    state = torch.load(tmp_path / "run" / "training_state.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 4


def test_same_seed_same_run(images: Path, tmp_path: Path) -> None:
    # refit off: a refit that picks the probe fits it on all the data, the same for every seed by design.
    # device cpu: bit-identical runs are a CPU promise; CUDA's default kernels are not deterministic
    settings = {"freeze": "14", "epochs": 2, "batch_size": 4, "quiet": True, "refit": "off", "after_probe": "finetune",
                "device": "cpu"}
    first = finetune("efficientnet_lite0", images, tmp_path / "a", **settings)
    second = finetune("efficientnet_lite0", images, tmp_path / "b", **settings)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "samples_per_second"} for r in rows]  # noqa: E731
    assert strip(first.history) == strip(second.history)
    assert first.last_weights_sha256 == second.last_weights_sha256
    other = finetune("efficientnet_lite0", images, tmp_path / "c", seed=1, **settings)
    assert other.last_weights_sha256 != first.last_weights_sha256


def test_resume_continues_exactly(images: Path, tmp_path: Path) -> None:
    settings = {"freeze": "14", "epochs": 3, "batch_size": 4, "quiet": True, "lr": 3e-3, "after_probe": "finetune",
                "device": "cpu"}  # bit-identical: see test_same_seed_same_run
    uninterrupted = finetune("efficientnet_lite0", images, tmp_path / "full", **settings)

    def interrupt(epoch: int, row: dict) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune("efficientnet_lite0", images, tmp_path / "cut", on_epoch_end=interrupt, **settings)
    assert not (tmp_path / "cut" / "card.json").exists()
    with pytest.raises(InputError, match="not a finished fine-tuning run"):
        zoo.validate(str(tmp_path / "cut"))
    with pytest.raises(InputError, match="drop epochs"):
        finetune(None, None, tmp_path / "cut", resume=True, epochs=5)
    resumed = finetune(None, None, tmp_path / "cut", resume=True, quiet=True)
    split = json.loads((tmp_path / "cut" / "run.json").read_text())["data"]["val_items"]
    assert split == json.loads((tmp_path / "full" / "run.json").read_text())["data"]["val_items"]
    assert len(split) == 2 and {item.split("/")[0] for item in split} == {"red", "blue"}  # recorded, stratified
    assert resumed.last_weights_sha256 == uninterrupted.last_weights_sha256
    strip = lambda rows: [{k: v for k, v in r.items() if k != "samples_per_second"} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(uninterrupted.history)
    with pytest.raises(InputError, match="already finished"):
        finetune(None, None, tmp_path / "cut", resume=True)


def test_early_stopping(images: Path, tmp_path: Path) -> None:
    result = finetune("efficientnet_lite0", images, tmp_path / "run", freeze="head", lr=1e-9, epochs=5, batch_size=4,
                      patience=1, metric="accuracy", after_probe="finetune", quiet=True)
    assert result.stopped_early and len(result.history) == 2 and result.best_epoch == 1


def test_text_binary_head_end_to_end(texts: Path, tmp_path: Path) -> None:
    """Text backbone, one sigmoid unit with BCE, --positive; the run validates, exports and serves."""
    run = tmp_path / "run"
    result = finetune("all-minilm-l6-v2", texts, run, head="binary", positive="neg", lr=2e-3, epochs=2,
                      batch_size=4, val_fraction=0.25, quiet=True)
    card = json.loads((run / "card.json").read_text())
    assert card["labels"] == ["pos", "neg"] and card["positive_label"] == "neg" and card["head"] == "binary"
    assert len(card["data"]["fingerprint"]) == 64 and card["hyperparameters"]["head"] == "binary"
    # mechanics only: 2 validation texts say nothing of quality (tests/test_recipe.py holds the quality floor)
    assert {"accuracy", "macro_f1", "loss"} <= set(result.best_metrics)
    assert zoo.validate(str(run)).ok
    bundle = tmp_path / "bundle"
    from export import export_bundle

    export_bundle(str(run), bundle)
    predictor = serve.load(bundle)
    assert predictor.manifest.postprocessing.activation == "sigmoid"
    outputs = predictor.predict(["what a great film", "boring and awful"], top_k=2)
    for output in outputs:
        assert abs(sum(p["score"] for p in output["top_k"]) - 1.0) < 1e-9
    model = zoo.build(str(run))
    from zoo.preprocess import load_tokenizer, tokenize

    tokenizer = load_tokenizer(run / "tokenizer.json", get_model("all-minilm-l6-v2").input)
    with torch.inference_mode():
        logit = model(**tokenize(tokenizer, ["what a great film"]))[0, 0].item()
    neg = next(p["score"] for p in outputs[0]["top_k"] if p["label"] == "neg")
    assert abs(neg - 1 / (1 + np.exp(-logit))) <= 1e-4


def test_text_multiclass_and_image_binary(texts: Path, images: Path, tmp_path: Path) -> None:
    text = finetune("all-minilm-l6-v2", texts, tmp_path / "t", freeze="3", lr_decay=0.8, val_fraction=0.25, **FAST)
    assert text.trainable[0][1] == 0 and text.trainable[-2][1] > 0  # embeddings frozen, last layer trains
    image = finetune("efficientnet_lite0", images, tmp_path / "i", head="binary", freeze="head", **FAST)
    assert image.trainable[-1][1] == 1281  # one logit
    assert zoo.validate(str(tmp_path / "i")).ok


def test_image_run_exports_and_serves_like_torch(images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    finetune("efficientnet_lite0", images, run, freeze="16", lr=1e-2, **FAST)
    code = main(["export", str(run), "--out", str(tmp_path / "bundle")])
    assert code == 0
    predictor = serve.load(tmp_path / "bundle")
    files = sorted((images / "red").iterdir())[:3]
    served = predictor.run(predictor.preprocess(files))
    from zoo.preprocess import preprocess_images

    with torch.inference_mode():
        expected = zoo.build(str(run))(preprocess_images(get_model("efficientnet_lite0").input, files)).numpy()
    assert np.abs(served - expected).max() <= 1e-4
    assert predictor.manifest.postprocessing.labels == ["blue", "red"]
    from zoo.card import card_lines
    from zoo.runs import resolve_name

    lines = "\n".join(card_lines(resolve_name(str(run))))
    assert "2 classes: blue, red" in lines and "fine-tuned on" in lines and "val/accuracy" in lines
    for name in ("metrics.csv", "metrics.jsonl", "metrics.png", "run.json", "model.safetensors"):
        assert (run / name).is_file()
    assert Image.open(run / "metrics.png").size[0] > 100


def test_two_process_ddp_with_gradual_unfreezing_ranks_end_identical(images: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = Path(__file__).with_name("ddp_worker.py")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port), str(worker), str(images), str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    try:  # once seen failing to parse under load (not reproduced): show what the ranks printed
        reports = [json.loads(line) for line in lines]
    except json.JSONDecodeError as exc:
        pytest.fail(f"unparsable rank report ({exc}); stdout:\n{result.stdout[-2000:]}")
    assert sorted(r["rank"] for r in reports) == [0, 1]
    # the probe, the head alone, then the top block too: without DDP rebuilt on unfreezing, that block
    # trained on each rank's half of the data alone and the weights differed
    assert reports[0]["sha"] == reports[1]["sha"] and reports[0]["epochs"] == [0, 1, 2]
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert reports[0]["group_destroyed"] and reports[1]["group_destroyed"]
    assert (tmp_path / "run" / "card.json").is_file()
    assert json.loads((tmp_path / "run" / "card.json").read_text())["processes"] == 2


def test_dry_run_lists_trainable_parameters(images: Path, capsys, tmp_path: Path) -> None:
    code = main(["finetune", "efficientnet_lite0", "--data", str(images), "--freeze", "head", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "head" in out and "2,562" in out
    assert "_blocks.0 " in out and list(tmp_path.iterdir()) == []


def test_classification_metrics() -> None:
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])
    target = torch.tensor([0, 1, 1, 1, 2, 0])
    metrics = classification_metrics(predicted, target, 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # per-class F1: class0 2*1/(2+1+1)=0.5, class1 2*2/(4+0+1)=0.8, class2 2*1/(2+1+0)=0.667
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


# --- bad input: one message, exit 2, no run directory ------------------------------------------


def _cli_fails(capsys, argv: list[str], message: str, out: Path) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not (out / "run.json").exists()


def test_bad_image_folders(capsys, tmp_path: Path) -> None:
    out = tmp_path / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    _cli_fails(capsys, ["finetune", "efficientnet_lite0", "--data", str(empty), "--out", str(out)], "no class subfolders", out)
    one = _write_images(tmp_path / "one", classes=(("cat", (1, 2, 3)),))
    _cli_fails(capsys, ["finetune", "efficientnet_lite0", "--data", str(one), "--out", str(out)], "at least two", out)
    two = _write_images(tmp_path / "two")
    (two / "green").mkdir()
    (two / "green" / "notes.txt").write_text("not an image")
    _cli_fails(capsys, ["finetune", "efficientnet_lite0", "--data", str(two), "--out", str(out)],
               "green contain no readable images", out)
    _cli_fails(capsys, ["finetune", "efficientnet_lite0", "--data", str(tmp_path / "missing"), "--out", str(out)],
               "does not exist", out)
    _cli_fails(capsys, ["finetune", "efficientnet_lite0", "--data", str(tmp_path / "two" / "red"), "--out", str(out)],
               "no class subfolders", out)


def test_unreadable_files_are_skipped_and_counted(tmp_path: Path) -> None:
    root = _write_images(tmp_path / "data")
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "red" / "readme.md").write_text("hello")
    from zoo.data import load_dataset

    dataset = load_dataset(root, "image")
    assert len(dataset.skipped) == 2 and any("broken.jpg" in s for s in dataset.skipped)
    assert len(dataset.train) + len(dataset.val) == 12


def test_bad_splits_and_text_files(capsys, tmp_path: Path) -> None:
    out = tmp_path / "run"
    split = tmp_path / "split"
    _write_images(split / "train")
    _write_images(split / "val", classes=(("red", (200, 30, 30)), ("green", (30, 200, 30))))
    _cli_fails(capsys, ["finetune", "efficientnet_lite0", "--data", str(split), "--out", str(out)],
               "classes green do not appear in train/", out)
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("sentence,label\nhello,a\n")
    _cli_fails(capsys, ["finetune", "all-minilm-l6-v2", "--data", str(csv_file), "--out", str(out)],
               "missing column(s) text", out)
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y", "split": "val"}\n')
    _cli_fails(capsys, ["finetune", "all-minilm-l6-v2", "--data", str(jsonl), "--out", str(out)], "at least two", out)
    _cli_fails(capsys, ["finetune", "all-minilm-l6-v2", "--data", str(split), "--out", str(out)], ".csv or .jsonl", out)


def test_bad_options(capsys, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = ["finetune", "efficientnet_lite0", "--data", str(images), "--out", str(out)]
    _cli_fails(capsys, base + ["--freeze", "19"], "this backbone has 18 blocks", out)
    _cli_fails(capsys, base + ["--freeze", "some"], "--freeze 'some'", out)
    _cli_fails(capsys, base + ["--head", "binary", "--positive", "green"], "--positive 'green'", out)
    _cli_fails(capsys, base + ["--lr-decay", "2"], "--lr-decay 2.0", out)
    _cli_fails(capsys, base + ["--device", "cuda"] if not torch.cuda.is_available() else base + ["--epochs", "0"],
               "--device cuda" if not torch.cuda.is_available() else "--epochs 0", out)
    _cli_fails(capsys, base + ["--resume", "--overwrite"], "exclude each other", out)
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    _cli_fails(capsys, base, "exists and is not empty", out)
    _cli_fails(capsys, base + ["--overwrite"], "not a run directory", out)
    assert (out / "precious.txt").read_text() == "keep"
    _cli_fails(capsys, ["finetune", "efficientnet_lite0", "--data", str(images), "--out", str(tmp_path / "nothing"),
                        "--resume"], "no interrupted run", tmp_path / "nothing")
