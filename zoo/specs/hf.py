"""`hf:ORG/NAME[@REVISION]` (e.g. `hf:dslim/bert-base-NER`): a registry record from the Hub repository's own
files at one commit. The task comes from config.json's `architectures` (*ForSequenceClassification: text
classification, *ForTokenClassification: NER, *ForQuestionAnswering: extractive QA, a bare encoder:
feature extraction from [CLS], a sentence-transformers folder: sentence embeddings with its pooling and
normalisation), labels from `id2label`, the tokenizer from tokenizer.json (or a WordPiece vocab.txt with
its tokenizer_config.json). The revision (default `main`) resolves to a full commit, recorded in the lock
with every file's sha256 on the first fetch (zoo.lock): later resolutions use that commit and need no
Hub API, so a pinned spec works offline from the Hugging Face cache."""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from zoo.errors import FetchError, InputError
from zoo.tasks import TASKS

REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
TASK_ARCHITECTURES = {  # config.json architectures[0] suffix -> zoo task
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForImageClassification": "image-classification",
}
PIL_RESAMPLING = {2: "bilinear", 3: "bicubic"}  # a processor's `resample` (PIL's enum) -> zoo's interpolation
ENCODER_TYPES = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "mpnet", "electra", "albert", "mobilebert")
SUPPORTED = ("*ForSequenceClassification, *ForTokenClassification, *ForQuestionAnswering, *ForImageClassification "
             f"(with a preprocessor_config.json), a bare text encoder (*Model of {', '.join(ENCODER_TYPES)}) or a "
             "sentence-transformers folder of one (modules.json)")
# Heads of pretraining checkpoints that a bare encoder leaves unused (BERT MLM/NSP, DistilBERT MLM, RoBERTa LM).
UNUSED_IN_ENCODERS = ["cls.*", "*pooler.*", "*embeddings.position_ids", "vocab_*", "lm_head.*"]
SPAN_LABELS = ["start", "end"]  # question answering's two outputs per token (zoo.data.squad.ANSWER_LABELS)
SPAN_LABEL_SET = "answer-span"


def parse(text: str) -> tuple[str, str]:
    """(repository id, revision) of `ORG/NAME[@REVISION]`; InputError for anything else."""
    repo, _, revision = text.partition("@")
    if not REPO.match(repo) or ".." in repo or (_ and not revision):
        raise InputError(f"hf:{text}: expected hf:ORG/NAME[@REVISION], e.g. hf:dslim/bert-base-NER")
    return repo, revision or "main"


def entry_id(repo: str, revision: str) -> str:
    """The entry's id: `org--name`, with the revision when one was asked for."""
    name = repo.lower().replace("/", "--")
    return name if revision == "main" else f"{name}.{re.sub(r'[^a-z0-9._-]', '-', revision.lower())}"


def record(text: str, label_sets: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    repo, revision = parse(text)
    spec, identifier = f"hf:{text}", entry_id(repo, revision)
    commit, names = _resolve(repo, revision, spec, identifier)
    config = _json(repo, "config.json", commit)
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise InputError(f"{spec}: its config.json has no model_type: not a transformers model")
    if "model.safetensors" not in names:
        raise InputError(f"{spec}: no model.safetensors at {commit[:12]} ("
                         + ("sharded weights are not supported" if "model.safetensors.index.json" in names
                            else "zoo loads safetensors, never pickled weights") + ")")
    architecture = (config.get("architectures") or [""])[0]
    task = next((task for suffix, task in TASK_ARCHITECTURES.items() if architecture.endswith(suffix)), None)
    sentence = "modules.json" in names
    encoder = config["model_type"] in ENCODER_TYPES and (sentence or re.fullmatch(r"[A-Za-z0-9]+Model", architecture or "x")
                                                       and "LMHead" not in architecture)
    if task is None and not encoder:
        raise InputError(f"{spec}: {architecture or 'no architecture in config.json'} is not supported; "
                         f"supported: {SUPPORTED}")
    builder_config = {k: v for k, v in config.items() if not k.startswith("_") and k != "transformers_version"}
    model: dict[str, Any] = {  # what every kind of repository shares; the kind adds the rest
        "id": identifier,
        "description": f"{repo} ({architecture or config['model_type']}) from the Hugging Face Hub",
        "architecture": config["model_type"],
        "weights_format": "safetensors",
        "sources": [{"kind": "hf", "repo_id": repo, "revision": commit}],
        "provenance": {"license": _license(repo, commit, names), "origin": f"huggingface.co/{repo}@{commit}"},
    }
    if task == "image-classification":
        return _image_classifier(spec, repo, commit, names, config, builder_config, model)
    tokenizer_files = _tokenizer_files(spec, names, config["model_type"])
    settings = _json(repo, "tokenizer_config.json", commit) if "tokenizer_config.json" in names else {}
    model.update(
        modality="text",
        files=[{"name": "model.safetensors", "role": "weights"}, {"name": "config.json", "role": "config"},
               *({"name": name, "role": "tokenizer"} for name in tokenizer_files)],
        input={"kind": "text", "tokenizer": tokenizer_files[0],
               "max_length": _max_length(config, settings, _sentence_settings(repo, commit, names))},
    )
    if task is not None:
        labels = SPAN_LABELS if task == "question-answering" else _labels(spec, config)
        label_set = SPAN_LABEL_SET if task == "question-answering" else identifier
        model.update(task=task, builder="hf_task", builder_args={"config": builder_config},
                     output={"kind": TASKS[task].output_kind, "labels": label_set}, params=model_params(task, builder_config))
        return model, {label_set: labels}
    pooling, normalize = _pooling(spec, repo, commit) if sentence else ("cls", False)
    dim = config.get("hidden_size", config.get("dim"))
    if not isinstance(dim, int):
        raise InputError(f"{spec}: config.json gives no hidden size (hidden_size or dim)")
    model.update(task="sentence-embedding" if sentence else "feature-extraction", builder="hf_encoder",
                 builder_args={"config": builder_config, "ignore_unexpected": UNUSED_IN_ENCODERS},
                 output={"kind": "embedding", "dim": dim, "pooling": pooling, "normalize": normalize},
                 params=model_params(None, builder_config))
    return model, {}


def _image_classifier(spec: str, repo: str, commit: str, names: list[str], config: dict[str, Any],
                      builder_config: dict[str, Any], model: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """`model` completed as a *ForImageClassification repository's record, its input spec from
    preprocessor_config.json."""
    if "preprocessor_config.json" not in names:
        raise InputError(f"{spec}: no preprocessor_config.json: its image preprocessing is unknown")
    labels = _labels(spec, config)
    model.update(
        modality="image", task="image-classification", builder="hf_task", builder_args={"config": builder_config},
        files=[{"name": "model.safetensors", "role": "weights"}, {"name": "config.json", "role": "config"},
               {"name": "preprocessor_config.json", "role": "config"}],
        input=image_input(spec, _json(repo, "preprocessor_config.json", commit)),
        output={"kind": "logits", "labels": model["id"]},
        params=model_params("image-classification", builder_config),
    )
    return model, {model["id"]: labels}


def image_input(spec: str, processor: Any) -> dict[str, Any]:
    """zoo's image input spec of a Hugging Face image processor's settings (preprocessor_config.json): a
    `shortest_edge` resize then a center crop (BiT, DINOv2, ResNet; ConvNeXt's crop_pct below 384 px), or
    a warp to a square (ViT, DeiT, BEiT, Swin; ConvNeXt from 384 px) with an optional center crop. Other
    settings (no resize, non-square sizes, rescaling other than 1/255, resampling other than bilinear or
    bicubic) are refused: zoo's and serve's preprocessing could not reproduce them. One difference remains:
    where a crop margin is odd, transformers rounds its offset down and torchvision (and serve) half to even,
    one pixel apart when half the margin is an odd number and a half."""
    def square(value: Any, what: str) -> int:
        if isinstance(value, int):
            return value
        if isinstance(value, dict) and set(value) == {"height", "width"} and value["height"] == value["width"]:
            return int(value["height"])
        raise InputError(f"{spec}: preprocessor_config.json's {what} {value!r} is not a square; zoo's preprocessing "
                         "gives square inputs")

    if not isinstance(processor, dict) or not processor.get("do_resize", True):
        raise InputError(f"{spec}: its image processor does not resize; zoo's preprocessing always does")
    interpolation = PIL_RESAMPLING.get(processor.get("resample", 2))
    if interpolation is None:
        raise InputError(f"{spec}: resampling {processor.get('resample')!r} (PIL); zoo resizes bilinear (2) or bicubic (3)")
    if processor.get("do_rescale", True) and not math.isclose(processor.get("rescale_factor", 1 / 255), 1 / 255):
        raise InputError(f"{spec}: rescale_factor {processor['rescale_factor']}; zoo scales pixels by 1/255")
    size = processor.get("size", 224)
    crop = square(processor["crop_size"], "crop_size") if processor.get("do_center_crop") and "crop_size" in processor else None
    if isinstance(size, dict) and set(size) == {"shortest_edge"}:
        edge = int(size["shortest_edge"])
        if "ConvNext" in str(processor.get("image_processor_type", "")):  # transformers' ConvNextImageProcessor
            if edge >= 384:  # warped to edge x edge, no crop
                resize, crop, warp = edge, edge, True
            else:  # the shortest edge to edge / crop_pct, then a center crop of edge
                resize, crop, warp = int(edge / (processor.get("crop_pct") or 224 / 256)), edge, False
        elif crop is None:
            raise InputError(f"{spec}: a shortest-edge resize without a center crop gives inputs of any aspect "
                             "ratio; zoo's image classifiers take one square size")
        else:
            resize, warp = edge, False
    else:
        resize = square(size, "size")
        crop, warp = crop or resize, True
    if crop > resize:
        raise InputError(f"{spec}: crop_size {crop} is larger than the resized image ({resize})")
    normalize = processor.get("do_normalize", True)
    mean = processor.get("image_mean", [0.5] * 3) if normalize else [0.0] * 3
    std = processor.get("image_std", [0.5] * 3) if normalize else [1.0] * 3
    if processor.get("do_rescale", True) is False:  # pixels stay 0..255: fold the scale into mean and std
        mean, std = [m / 255 for m in mean], [s / 255 for s in std]
    return {"kind": "image", "size": [crop, crop], "resize": resize, "crop": crop, "interpolation": interpolation,
            "mean": [float(m) for m in mean], "std": [float(s) for s in std], "warp": warp}


def _resolve(repo: str, revision: str, spec: str, identifier: str) -> tuple[str, list[str]]:
    """(commit, file names): the lock's when it pinned this spec, else the Hub's for `revision` now."""
    from zoo.lock import locked_pin

    pinned = locked_pin(identifier, spec)
    if pinned is not None and (not COMMIT.match(revision) or pinned[0] == revision):
        return pinned
    return _repository(repo, revision)


@lru_cache(maxsize=64)
def _repository(repo: str, revision: str) -> tuple[str, list[str]]:
    """The commit `revision` names now and the repository's files there, from the Hub API (once a process)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

    from zoo.cache import is_offline

    fix = "fetch it once with the Hub reachable (the lock then pins it), or give a pinned entry"
    if is_offline():
        raise FetchError(f"hf:{repo}@{revision} is not pinned by the lock yet and ZOO_OFFLINE is set; {fix}")
    try:
        info = HfApi().model_info(repo, revision=revision)
    except RepositoryNotFoundError:
        raise InputError(f"hf:{repo}: no such repository on the Hub (or it is private or gated: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise InputError(f"hf:{repo}@{revision}: the repository has no revision {revision!r}") from None
    except OfflineModeIsEnabled:
        raise FetchError(f"hf:{repo}@{revision} is not pinned by the lock yet and HF_HUB_OFFLINE is set; {fix}") from None
    except _client_errors() as exc:
        raise FetchError(f"hf:{repo}@{revision}: the Hub API cannot be reached ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); {fix}") from None
    if not info.sha or not COMMIT.match(info.sha):
        raise FetchError(f"hf:{repo}@{revision}: the Hub answered without a commit hash")
    return info.sha, sorted(sibling.rfilename for sibling in info.siblings or ())


def _client_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub's HTTP client raises when a server cannot be reached or answers badly: the bases of
    HfHubHTTPError (httpx2.HTTPError and OSError in huggingface_hub 2; requests' errors are OSErrors in 0.x)."""
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, *HfHubHTTPError.__bases__, OSError, ValueError)


def _download(repo: str, name: str, commit: str) -> Path:
    """One file of the repository at `commit`, through the Hugging Face cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from zoo.cache import is_offline

    try:
        return Path(hf_hub_download(repo, name, revision=commit, local_files_only=is_offline()))
    except LocalEntryNotFoundError:
        raise FetchError(f"hf:{repo}: {name} at {commit[:12]} is not in the Hugging Face cache and the Hub cannot "
                         "be reached") from None
    except _client_errors() as exc:
        raise FetchError(f"hf:{repo}: {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _json(repo: str, name: str, commit: str) -> Any:
    try:
        return json.loads(_download(repo, name, commit).read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"hf:{repo}: {name} at {commit[:12]} is not JSON ({exc})") from None


def _tokenizer_files(spec: str, names: list[str], model_type: str) -> list[str]:
    """tokenizer.json (first: what the entry's input names), or a WordPiece vocab.txt with its settings."""
    from zoo.preprocess import WORDPIECE_VOCAB

    settings = ["tokenizer_config.json"] if "tokenizer_config.json" in names else []
    if "tokenizer.json" in names:
        return ["tokenizer.json", *settings]
    if WORDPIECE_VOCAB in names and model_type in ("bert", "distilbert", "electra", "mobilebert", "convbert"):
        return [WORDPIECE_VOCAB, *settings]
    raise InputError(f"{spec}: no tokenizer.json (nor a WordPiece vocab.txt of a BERT-family model) in the "
                     "repository; zoo tokenizes with the `tokenizers` library")


def _labels(spec: str, config: dict[str, Any]) -> list[str]:
    if config.get("problem_type") == "multi_label_classification":
        raise InputError(f"{spec}: a multi-label text classifier; zoo's text classification is single-label")
    try:
        indexed = {int(key): str(label) for key, label in (config.get("id2label") or {}).items()}
    except (TypeError, ValueError, AttributeError):
        indexed = {}
    if not indexed or sorted(indexed) != list(range(len(indexed))):
        raise InputError(f"{spec}: config.json's id2label does not name classes 0..N-1")
    return [indexed[i] for i in range(len(indexed))]


def _sentence_settings(repo: str, commit: str, names: list[str]) -> dict[str, Any]:
    return _json(repo, "sentence_bert_config.json", commit) if "sentence_bert_config.json" in names else {}


def _max_length(config: dict[str, Any], settings: dict[str, Any], sentence: dict[str, Any]) -> int:
    """sentence-transformers' max_seq_length, else the tokenizer's model_max_length, within the positions."""
    positions = config.get("max_position_embeddings", 512)
    for value in (sentence.get("max_seq_length"), settings.get("model_max_length")):
        if isinstance(value, (int, float)) and 0 < value < math.inf:
            return int(min(value, positions))
    return int(positions)


def _pooling(spec: str, repo: str, commit: str) -> tuple[str, bool]:
    """(pooling, normalize) of a sentence-transformers folder, from modules.json and its Pooling config."""
    modules = _json(repo, "modules.json", commit)
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m.get("path", "") for m in modules if isinstance(m, dict)}
    if "Pooling" not in kinds:
        raise InputError(f"{spec}: modules.json has no Pooling module")
    pooling = _json(repo, f"{kinds['Pooling']}/config.json", commit)
    modes = [mode for mode, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"))
             if pooling.get(key)]
    others = [key for key, value in pooling.items() if key.startswith("pooling_mode_") and value and key not in
              ("pooling_mode_mean_tokens", "pooling_mode_cls_token")]
    if len(modes) != 1 or others:
        raise InputError(f"{spec}: pooling {', '.join(modes + others) or 'none'}; zoo pools by mean or [CLS], one of them")
    return modes[0], "Normalize" in kinds


def _license(repo: str, commit: str, names: list[str]) -> str:
    """The `license:` of the model card's front matter, or where to read it."""
    if "README.md" in names:
        try:
            card = _download(repo, "README.md", commit).read_text("utf-8", errors="replace")
        except FetchError:
            card = ""
        front = card.split("---", 2)[1] if card.startswith("---") and card.count("---") >= 2 else ""
        found = re.search(r"^license:\s*['\"]?([^'\"\n]+)", front, flags=re.MULTILINE)
        if found:
            return found.group(1).strip()
    return f"unknown (see huggingface.co/{repo})"


def model_params(task: str | None, config: dict[str, Any]) -> int:
    """The model's parameter count without allocating its weights (meta device)."""
    import torch
    import transformers
    from transformers import AutoConfig

    from zoo.builders.hf_encoder import model_kwargs
    from zoo.builders.hf_task import AUTO_CLASSES

    values = dict(config)
    built = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.device("meta"):
        if task is None:
            model = transformers.AutoModel.from_config(built, **model_kwargs(config))
        else:
            model = getattr(transformers, AUTO_CLASSES[task]).from_config(built)
    return sum(p.numel() for p in model.parameters())
