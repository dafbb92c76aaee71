"""The `zoo` CLI contract that scripts depend on: output shapes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from zoo_cli import main
from zoo.reference import asset_path
from zoo.registry import list_models


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_filters(capsys) -> None:
    code, out, _ = run(capsys, "list", "--modality", "text", "--json")
    assert code == 0
    cards = json.loads(out)  # the records `zoo info --json` gives, not bare ids
    assert [c["id"] for c in cards] == ["all-minilm-l6-v2", "bert-base-ner", "bert-base-uncased",
                                        "distilbert-base-cased-distilled-squad", "distilbert-base-uncased",
                                        "distilbert-base-uncased-finetuned-sst-2-english", "roberta-base"]
    assert cards[0] == json.loads(run(capsys, "info", "all-minilm-l6-v2", "--json")[1])
    code, out, _ = run(capsys, "list", "res*", "--task", "image-classification")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["resnet101", "resnet18", "resnet34",
                                                                             "resnet50", "resnext50_32x4d"]
    code, out, _ = run(capsys, "list")  # columns line up under the longest id
    rows = out.splitlines()
    assert len({row.index(" image ") if " image " in row else row.index(" text ") for row in rows}) == 1, out


def test_info_names_every_output_kind(capsys) -> None:
    for name, expected in (("ssdlite320_mobilenet_v3_large", "boxes, scores and labels per image, 90 classes"),
                           ("lraspp_mobilenet_v3_large", "per-pixel logits, 21 classes"),
                           ("all-minilm-l6-v2", "384-d embedding, mean pooling, L2-normalised")):
        code, out, _ = run(capsys, "info", name)
        assert code == 0 and expected in out and "None" not in out, out


def test_info_shows_the_card(capsys) -> None:
    code, out, _ = run(capsys, "info", "resnet50")
    assert code == 0
    assert "25,557,032" in out and "https://download.pytorch.org/models/" in out and "(prefix)" in out
    code, out, _ = run(capsys, "info", "all-minilm-l6-v2", "--json")
    card = json.loads(out)
    assert card["output"]["pooling"] == "mean" and card["reference"]["cases"] == ["texts"]


@pytest.mark.parametrize(("argv", "message"), [
    (["info", "resnet5"], "did you mean 'resnet50'"),
    (["validate", "efficientnet-lite0"], "did you mean 'efficientnet_lite0'"),
    (["export", "bert-base-uncase", "--out", "x"], "did you mean 'bert-base-uncased'"),
    (["list", "--modality", "audio"], "Invalid value for '--modality'"),
    (["predict", "/no/such/bundle", "x.jpg"], "/no/such/bundle is not a folder"),
    (["fetch", "resnet18", "--source-dir", "/no/such/dir"], "/no/such/dir is not a folder"),
    (["predict", "--top-k", "0", "b", "x"], "--top-k"),
    (["list", "--bogus"], "No such option"),
    (["validate", "resnet18"], "no reference outputs"),
])
def test_user_mistakes_exit_2_with_one_line(capsys, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.startswith("zoo: error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_predict_json_contract_for_a_classifier(capsys, bundles) -> None:
    photos = [str(asset_path("flower.jpg")), str(asset_path("china.jpg"))]
    code, out, err = run(capsys, "predict", str(bundles["efficientnet_lite0"]), *photos, "--top-k", "3", "--json")
    assert code == 0, err
    results = json.loads(out)
    assert [r["input"] for r in results] == photos
    for result in results:
        assert len(result["top_k"]) == 3
        assert set(result["top_k"][0]) == {"index", "label", "score"}
        scores = [p["score"] for p in result["top_k"]]
        assert scores == sorted(scores, reverse=True)
    assert results[0]["top_k"][0]["label"] == "daisy"
    assert "CPUExecutionProvider" in err  # the one line saying which provider ran


def test_predict_json_contract_for_embeddings(capsys, bundles) -> None:
    code, out, _ = run(capsys, "predict", str(bundles["all-minilm-l6-v2"]), "hello world", "a second text", "--json")
    assert code == 0
    results = json.loads(out)
    assert [r["input"] for r in results] == ["hello world", "a second text"]
    assert all(len(r["embedding"]) == 384 for r in results)
    assert abs(sum(v * v for v in results[0]["embedding"]) - 1.0) < 1e-4  # normalised, as the card says


def test_predict_bad_image_files(capsys, bundles, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not an image")
    code, _, err = run(capsys, "predict", str(bundles["efficientnet_lite0"]), str(text_file))
    assert code == 2 and "is not a readable image" in err
    code, _, err = run(capsys, "predict", str(bundles["efficientnet_lite0"]), str(tmp_path / "missing.jpg"))
    assert code == 2 and "missing.jpg does not exist" in err


def test_validate_and_export_commands(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "validate", "all-minilm-l6-v2")
    assert code == 0 and "✓ texts" in out
    code, out, err = run(capsys, "export", "efficientnet_lite0", "--format", "onnx", "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert "✓ synthetic batch 5" in out and (tmp_path / "b" / "manifest.json").is_file()
    code, _, err = run(capsys, "export", "efficientnet_lite0", "--out", str(tmp_path / "b"))
    assert code == 2 and "--force" in err
    code, out, _ = run(capsys, "export", "efficientnet_lite0", "--out", str(tmp_path / "b"), "--atol", "1e-12", "--force")
    assert code == 1 and (tmp_path / "b" / "manifest.json").is_file()  # the old bundle survives a failed export


def test_fetch_command(capsys) -> None:
    code, out, _ = run(capsys, "fetch", "efficientnet_lite0")
    assert code == 0 and "sha256 579344248a93e230" in out


def test_console_script_exit_code_without_traceback() -> None:
    result = subprocess.run([sys.executable, "-m", "zoo_cli", "info", "vit_b_61"], capture_output=True, text=True)
    assert result.returncode == 2
    known = len(list_models())
    assert result.stderr.strip() == ("zoo: error: unknown model 'vit_b_61'; did you mean 'vit_b_16'? "
                                     f"run `zoo list` to see the {known} known models")


def test_finetune_options_are_the_configs_choices_and_defaults() -> None:
    """Every `zoo finetune` option that sets a FinetuneConfig field offers exactly the values the config
    accepts and defaults to the config's own default (zoo.config writes each once), and importing the
    command line does not import torch."""
    import dataclasses

    from zoo_cli import cli
    from zoo.config import FinetuneConfig

    fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    options = {p.name: p for p in cli.commands["finetune"].params}
    checked = 0
    for name, param in options.items():
        if name not in fields or name in ("probe_only",):
            continue
        checked += 1
        default = None if param.default is None or type(param.default).__name__ == "Sentinel" else param.default  # unset
        assert default == fields[name].default, name
        if isinstance(param.type, click.Choice):
            for value in param.type.choices:  # each choice passes the config's own check
                FinetuneConfig(**{name: value}).check()
    assert checked >= 25, checked
    assert set(options["metric"].type.choices) == {"auto", "macro_f1", "accuracy", "miou", "pixel_accuracy", "map50", "map",
                                                   "entity_f1", "entity_precision", "entity_recall", "squad_f1",
                                                   "exact_match", "mean_ap", "micro_f1", "loss"}
    code = "import sys, zoo_cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_serve_and_predict_options_are_the_servers_defaults() -> None:
    """zoo serve / zoo predict restate no number: each option's default is ServerConfig's, Limits', or
    SessionConfig's, and the --variant and --device choices are serve's own."""
    from serve.limits import DEFAULT_LIMITS
    from serve.providers import DEVICES, SessionConfig
    from serve.server_config import MIB, VARIANTS, ServerConfig
    from zoo_cli import cli

    options = {p.name: p for p in cli.commands["serve"].params}
    server = ServerConfig(Path("."))
    assert options["max_body_mb"].default * MIB == server.max_body_bytes
    assert (options["inference_timeout"].default, options["body_timeout"].default) == (server.inference_timeout_s,
                                                                                     server.body_timeout_s)
    for name in ("max_batch_size", "max_wait_ms", "variant", "preprocess_workers"):
        assert options[name].default == getattr(server, name), name
    for name in ("max_inputs", "max_image_pixels", "max_aspect_ratio", "max_text_chars"):
        assert options[name].default == getattr(DEFAULT_LIMITS, name), name
    predict = {p.name: p for p in cli.commands["predict"].params}
    for command in (options, predict):
        assert tuple(command["variant"].type.choices) == VARIANTS and tuple(command["device"].type.choices) == DEVICES
        assert command["device"].default == SessionConfig().device


def test_every_package_is_listed_for_the_wheel() -> None:
    """pyproject's explicit package list names every folder with an __init__.py (a new subpackage left
    out installs in editable mode and is missing from the wheel)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(root).parts) for top in ("zoo", "export", "serve", "zoo_cli")
             for init in (root / top).rglob("__init__.py")}
    assert found == listed
