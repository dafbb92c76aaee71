"""registry.json: schema, exact error locations, lookups, and metadata checked against the real
models and against torchvision's own weight enums."""

from __future__ import annotations

import copy
import json
from importlib import metadata

import pytest

from zoo.errors import RegistryError, UnknownModelError
from zoo.registry import get_model, list_models, load_registry, registry_origins, shipped_registry_path, validate_document

REGISTRY = load_registry()
DOCUMENT = json.loads(shipped_registry_path().read_text())
TORCHVISION_IDS = [name for name, e in REGISTRY.items() if e.builder == "torchvision"]
SEGMENTATION_IDS = [name for name, e in REGISTRY.items() if e.builder == "torchvision_segmentation"]
DETECTION_IDS = [name for name, e in REGISTRY.items() if e.builder == "torchvision_detection"]
TIMM_IDS = [name for name, e in REGISTRY.items() if e.builder == "timm"]


def test_registry_has_the_required_entries() -> None:
    required = {"efficientnet_lite0", "all-minilm-l6-v2", "resnet18", "resnet50", "mobilenet_v3_large",
                "efficientnet_b0", "vgg16", "convnext_tiny", "vit_b_16", "bert-base-uncased",
                "distilbert-base-uncased", "roberta-base"}
    assert required <= set(REGISTRY)


def _broken(mutate) -> dict:
    document = copy.deepcopy(DOCUMENT)
    mutate(document)
    return document


def _index(name: str) -> int:
    return [m["id"] for m in DOCUMENT["models"]].index(name)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["models"][_index("resnet18")]["input"]["mean"].__setitem__(2, "x"),
     "models[{i}] ('resnet18').input"),
    (lambda d: d["models"][_index("resnet18")].pop("params"), "models[{i}] ('resnet18'): 'params' is a required property"),
    (lambda d: d["models"][_index("resnet18")]["files"][0].update(sha256_prefix="XYZ"),
     "models[{i}] ('resnet18').files[0]"),
    (lambda d: d["models"][_index("resnet18")].update(task="segmentation"), "models[{i}] ('resnet18').task"),
    (lambda d: d["models"][_index("resnet18")]["files"][0].update(name=".."), "models[{i}] ('resnet18').files[0].name"),
    (lambda d: d["models"][_index("resnet18")]["files"][0].update(name="../../x.pth"),
     "models[{i}] ('resnet18').files[0].name"),
])
def test_schema_errors_name_the_entry_and_field(mutate, expected: str) -> None:
    with pytest.raises(RegistryError) as info:
        validate_document(_broken(mutate))
    assert expected.format(i=_index("resnet18")) in str(info.value)


def test_unknown_format_version_is_refused() -> None:
    with pytest.raises(RegistryError, match="format_version 2 is not supported"):
        validate_document(_broken(lambda d: d.update(format_version=2)))


def test_duplicate_id_is_an_error() -> None:
    with pytest.raises(RegistryError, match="duplicate id"):
        validate_document(_broken(lambda d: d["models"].append(copy.deepcopy(d["models"][0]))))


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda m: m["input"].update(size=[480, 480]), r"input.size: \[480, 480\] must equal \[resize, resize\] = \[520, 520\]"),
    (lambda m: m.update(task="image-classification"), "output.kind: 'segmentation', but image-classification models output 'logits'"),
])
def test_segmentation_entry_rules(mutate, expected: str) -> None:
    def broken(d):
        mutate(d["models"][[m["id"] for m in d["models"]].index("lraspp_mobilenet_v3_large")])
    with pytest.raises(RegistryError, match=expected):
        validate_document(_broken(broken))


def test_unknown_label_set_is_an_error() -> None:
    def mutate(d):
        d["models"][_index("resnet18")]["output"]["labels"] = "imagenet-22k"
    with pytest.raises(RegistryError, match=r"output.labels: unknown label set 'imagenet-22k'"):
        validate_document(_broken(mutate))


def test_registry_file_from_env_is_validated(tmp_path, monkeypatch) -> None:
    path = tmp_path / "registry.json"
    path.write_text("{not json")
    monkeypatch.setenv("ZOO_REGISTRY", str(path))
    with pytest.raises(RegistryError, match="not valid JSON: line 1"):
        load_registry()


def test_list_models_filters_and_sorts() -> None:
    assert list_models("resnet*") == ["resnet101", "resnet18", "resnet34", "resnet50"]
    assert list_models(modality="text") == ["all-minilm-l6-v2", "bert-base-ner", "bert-base-uncased",
                                            "distilbert-base-cased-distilled-squad", "distilbert-base-uncased",
                                            "distilbert-base-uncased-finetuned-sst-2-english", "roberta-base"]
    assert list_models(task="token-classification") == ["bert-base-ner"]
    assert list_models(task="sentence-embedding") == ["all-minilm-l6-v2"]
    assert "vgg16" not in list_models(exclude="vgg*")
    assert list_models() == sorted(REGISTRY)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match="did you mean 'resnet50'"):
        get_model("resnet5")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_entry_metadata_matches_the_built_model(name: str) -> None:
    """Parameter count and output size of the real architecture (random init) match the card."""
    import torch

    import zoo

    entry = REGISTRY[name]
    torch.manual_seed(0)
    model = zoo.build(name, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == entry.params
    if entry.output.kind == "logits" and entry.modality == "image":
        assert model(torch.zeros(2, 3, *entry.input.size)).shape == (2, len(entry.output.labels))
    elif entry.output.kind == "segmentation":  # any height and width, logits at the input's resolution
        assert model(torch.zeros(2, 3, 97, 130)).shape == (2, len(entry.output.labels), 97, 130)
    elif entry.output.kind == "detection":  # one image of any size -> boxes, scores, labels
        with torch.inference_mode():
            boxes, scores, labels = model(torch.rand(1, 3, 97, 130))
        assert boxes.shape == (len(scores), 4) and labels.dtype == torch.int64
        assert entry.builder_args["num_classes"] == len(entry.output.labels)
    else:  # text: (batch, labels) logits, per-token logits, start and end per token, or an embedding
        ids = torch.ones(2, 5, dtype=torch.int64)
        expected = {"logits": (2, len(entry.output.labels)), "token-logits": (2, 5, len(entry.output.labels)),
                    "span-logits": (2, 5, 2)}.get(entry.output.kind, (2, entry.output.dim))
        assert model(ids, torch.ones_like(ids)).shape == expected


@pytest.mark.parametrize("name", TIMM_IDS)
def test_timm_entries_are_the_records_of_their_timm_specs(name: str) -> None:
    """The shipped timm entries are what `timm:NAME.TAG` resolves to with the installed timm (the paper aside)."""
    import dataclasses

    from zoo.factory import resolve

    entry, spec = REGISTRY[name], resolve(f"timm:{name}")
    assert len(TIMM_IDS) >= 7 and spec.id == name
    for field in dataclasses.fields(entry):
        if field.name not in ("provenance", "extra"):
            assert getattr(spec, field.name) == getattr(entry, field.name), field.name
    assert (spec.provenance.license, spec.provenance.origin) == (entry.provenance.license, entry.provenance.origin)


@pytest.mark.parametrize("name", TORCHVISION_IDS + SEGMENTATION_IDS + DETECTION_IDS)
def test_torchvision_entries_match_torchvision_weight_enums(name: str) -> None:
    from torchvision.models import get_model_weights

    entry = REGISTRY[name]
    weights = get_model_weights(name).DEFAULT
    transform = weights.transforms()
    weights_file = entry.file("weights")
    assert entry.sources[0].base_url + weights_file.name == weights.url
    assert weights_file.name.endswith(f"-{weights_file.sha256_prefix}.pth")
    assert (entry.params, entry.gflops) == (weights.meta["num_params"], weights.meta["_ops"])
    metrics = {m.name: m.value for m in entry.metrics}
    if name in DETECTION_IDS:  # the model resizes and normalises inside: the entry records its settings
        from torchvision.models import get_model

        inner = get_model(name, weights=None, weights_backbone=None).transform
        assert metrics["coco-val2017/box_map"] == weights.meta["_metrics"]["COCO-val2017"]["box_map"]
        assert (entry.input.resize, entry.input.crop) == (inner.min_size[-1], None)
        assert list(entry.input.mean) == inner.image_mean and list(entry.input.std) == inner.image_std
        assert list(entry.output.labels) == weights.meta["categories"]
        return
    if name in SEGMENTATION_IDS:  # COCO with the VOC categories; no crop: any aspect ratio
        upstream = weights.meta["_metrics"]["COCO-val2017-VOC-labels"]
        assert metrics["coco-val2017-voc-labels/miou"] == upstream["miou"]
        assert metrics["coco-val2017-voc-labels/pixel_acc"] == upstream["pixel_acc"]
        assert (entry.input.resize, entry.input.crop) == (transform.resize_size[0], None)
    else:
        assert metrics["imagenet-1k/acc@1"] == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        assert (entry.input.resize, entry.input.crop) == (transform.resize_size[0], transform.crop_size[0])
    assert list(entry.output.labels) == weights.meta["categories"]
    assert entry.input.interpolation == transform.interpolation.value
    assert list(entry.input.mean) == list(transform.mean) and list(entry.input.std) == list(transform.std)


def test_segmentation_forward_is_torchvisions_without_the_auxiliary_head() -> None:
    import torch
    import torchvision

    from zoo.builders.segmentation import SegmentationNet

    torch.manual_seed(0)
    for arch, extra in (("lraspp_mobilenet_v3_large", {}), ("deeplabv3_mobilenet_v3_large", {"aux_loss": True})):
        net = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=21, **extra).eval()
        image = torch.randn(1, 3, 75, 101)
        with torch.inference_mode():
            assert torch.equal(SegmentationNet(net)(image), net(image)["out"])


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


REACHABLE = sorted(name for name, entry in REGISTRY.items()
                   if any(s.kind == "package" and _installed(s.distribution) for s in entry.sources))


def test_the_entries_reachable_here_are_the_two_real_backbones() -> None:
    """Fails when weights become reachable (an installed package source): each such entry needs stored
    reference outputs, checked below."""
    assert REACHABLE == ["all-minilm-l6-v2", "efficientnet_lite0"]


@pytest.mark.parametrize("name", REACHABLE)
def test_every_entry_reachable_here_has_reference_outputs(name: str) -> None:
    entry = REGISTRY[name]
    assert entry.reference is not None and entry.reference.cases
    if entry.output.kind == "logits":
        assert all(len(row) == len(entry.output.labels) for c in entry.reference.cases for row in c.output)


def test_text_entry_config_matches_the_shipped_config() -> None:
    """The registry's architecture config (used for random init) agrees with the real config.json."""
    import zoo

    entry = REGISTRY["all-minilm-l6-v2"]
    fetched = zoo.fetch(entry)
    shipped = json.loads(fetched.files["config.json"].read_text())
    for key, value in entry.builder_args["config"].items():
        assert shipped[key] == value, key


@pytest.mark.parametrize("name", DETECTION_IDS)
def test_detection_state_dict_has_upstream_keys_and_forward(name: str) -> None:
    """The built detector has exactly the parameter and buffer names of torchvision's model as torchvision
    builds it to load trained weights (Faster R-CNN: frozen batch norms), so the upstream file loads
    strictly; with the same weights its detections equal torchvision's wherever the resize is exact."""
    import torch
    import torchvision
    from torchvision.models.detection import faster_rcnn
    from torchvision.ops.misc import FrozenBatchNorm2d

    import zoo

    torch.manual_seed(0)
    model = zoo.build(name, pretrained=False)
    if name.startswith("fasterrcnn"):  # what torchvision builds when weights are given (is_trained)
        backbone = torchvision.models.mobilenet_v3_large(norm_layer=FrozenBatchNorm2d)
        backbone = faster_rcnn._mobilenet_extractor(backbone, True, 6)
        anchors = faster_rcnn.AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
        kwargs = {"min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150,
                  "rpn_score_thresh": 0.05} if "320" in name else {}
        upstream = faster_rcnn.FasterRCNN(backbone, 91, rpn_anchor_generator=anchors, **kwargs)
    else:
        upstream = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    assert sorted(model.net.state_dict()) == sorted(upstream.state_dict())
    upstream.load_state_dict(model.net.state_dict())
    upstream.eval()
    image = torch.rand(1, 3, 240, 320)  # 320 / 240 scales exactly: torchvision's resize and ours agree
    with torch.inference_mode():
        ours, theirs = model(image), upstream([image[0]])[0]
    for got, key in zip(ours, ("boxes", "scores", "labels")):
        assert torch.equal(got, theirs[key])


def _user_registry(path, *models, label_sets=None) -> str:
    path.write_text(json.dumps({"format_version": 1, "label_sets": label_sets or {}, "models": list(models)}))
    return str(path)


def _model(name: str, base: str = "resnet18", **changes) -> dict:
    model = copy.deepcopy(DOCUMENT["models"][_index(base)])
    return {**model, "id": name, **changes}


def test_user_registries_extend_the_shipped_one_and_later_files_win(tmp_path, monkeypatch, capsys) -> None:
    """$ZOO_REGISTRY files add to the shipped registry, in order; an id defined again is replaced by the later
    file, and `zoo list` / `zoo info` say which file won. A user file may name the shipped label sets."""
    from zoo_cli import main

    first = _user_registry(tmp_path / "a.json", _model("my-resnet"), _model("resnet18", description="first"))
    second = _user_registry(tmp_path / "b.json", _model("resnet18", description="second"),
                            _model("tiny-labels", output={**DOCUMENT["models"][_index("resnet18")]["output"],
                                                          "labels": "mine"}), label_sets={"mine": ["a", "b"]})
    monkeypatch.setenv("ZOO_REGISTRY", f"{first}:{second}")
    entries = load_registry()
    assert set(REGISTRY) < set(entries) and {"my-resnet", "tiny-labels"} <= set(entries)
    assert entries["resnet18"].description == "second" and entries["my-resnet"].output.labels == REGISTRY["resnet18"].output.labels
    assert entries["tiny-labels"].output.labels == ("a", "b")
    assert registry_origins()["resnet18"] == (str(shipped_registry_path()), first, second)
    assert registry_origins()["my-resnet"] == (first,)
    assert main(["list", "resnet*", "my-*"]) == 0
    captured = capsys.readouterr()
    assert "my-resnet" in captured.out and "resnet50" in captured.out
    assert captured.err.strip() == f"note: resnet18: the entry of {second} replaces that of {shipped_registry_path()}, {first}"
    assert main(["info", "my-resnet"]) == 0 and capsys.readouterr().err == ""


def test_a_broken_user_registry_is_named(tmp_path, monkeypatch) -> None:
    broken = _user_registry(tmp_path / "c.json", _model("x", output={**DOCUMENT["models"][_index("resnet18")]["output"],
                                                                     "labels": "nowhere"}))
    monkeypatch.setenv("ZOO_REGISTRY", broken)
    with pytest.raises(RegistryError, match=r"c.json: models\[0\] \('x'\).output.labels: unknown label set 'nowhere'"):
        load_registry()
    monkeypatch.setenv("ZOO_REGISTRY", str(tmp_path / "missing.json"))
    with pytest.raises(RegistryError, match=r"missing.json does not exist; fix \$ZOO_REGISTRY"):
        load_registry()
