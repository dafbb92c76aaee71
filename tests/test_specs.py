"""Model specs beyond the registry (zoo.specs): `torchvision:WEIGHTS_ENUM` resolves from the enum's own
metadata to the entry the registry gives for the same weights (the shipped torchvision entries are
written by the same code: scripts/build_registry.py), and runs through build, export and serve."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

import serve
from zoo.errors import FetchError, InputError
from zoo.factory import build, resolve
from zoo.registry import get_model
from zoo_cli import main

SAME_AS_SHIPPED = [
    ("torchvision:ResNet18_Weights.IMAGENET1K_V1", "resnet18"),
    ("torchvision:ConvNeXt_Tiny_Weights.DEFAULT", "convnext_tiny"),
    ("torchvision:LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1", "lraspp_mobilenet_v3_large"),
    ("torchvision:DeepLabV3_MobileNet_V3_Large_Weights.DEFAULT", "deeplabv3_mobilenet_v3_large"),
    ("torchvision:SSDLite320_MobileNet_V3_Large_Weights.DEFAULT", "ssdlite320_mobilenet_v3_large"),
    ("torchvision:FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.DEFAULT", "fasterrcnn_mobilenet_v3_large_320_fpn"),
]


@pytest.mark.parametrize(("spec", "shipped"), SAME_AS_SHIPPED)
def test_a_torchvision_spec_is_the_registry_entry_of_the_same_weights(spec: str, shipped: str) -> None:
    entry, registry = resolve(spec), get_model(shipped)
    weights = spec.split(".")[-1]
    assert entry.id.startswith(f"{registry.architecture}.") and entry.id != registry.id
    if weights != "DEFAULT":
        assert entry.id == f"{registry.architecture}.{weights.lower()}"
    assert entry.extra == {"spec": spec}  # what a run fine-tuned from it names as its base
    different = {"id", "description", "provenance", "reference", "finetune", "extra"}
    for field in dataclasses.fields(entry):
        if field.name not in different:
            assert getattr(entry, field.name) == getattr(registry, field.name), (spec, field.name)
    assert entry.provenance.origin == registry.provenance.origin and entry.provenance.license == "BSD-3-Clause"


def test_other_weights_of_a_model_get_their_own_metadata() -> None:
    v2 = resolve("torchvision:ResNet50_Weights.IMAGENET1K_V2")
    assert v2.id == "resnet50.imagenet1k_v2" and v2.input.resize == 232 and v2.input.crop == 224
    assert v2.files[0].name == "resnet50-11ad3fa6.pth" and v2.files[0].sha256_prefix == "11ad3fa6"
    assert {m.name: m.value for m in v2.metrics}["imagenet-1k/acc@1"] == 80.858
    assert v2.output.label_set == "imagenet-1k" and len(v2.output.labels) == 1000


@pytest.mark.parametrize(("spec", "message"), [
    ("torchvision:ResNet50_Weights.IMAGENET9K", r"not a torchvision weights enum member .* e.g. torchvision:ResNet50"),
    ("torchvision:R3D_18_Weights.DEFAULT", r"video models are not supported; zoo builds classification, segmentation"),
    ("torchvision:FCN_ResNet50_Weights.DEFAULT", r"fcn_resnet50 is not supported yet; .* lraspp\*, deeplabv3\*"),
    ("torchvision:KeypointRCNN_ResNet50_FPN_Weights.DEFAULT", r"keypointrcnn_resnet50_fpn is not supported yet"),
    ("hf:distilbert/../etc", r"expected hf:ORG/NAME\[@REVISION\]"),
    ("hf:dslim/bert-base-NER@", r"expected hf:ORG/NAME\[@REVISION\]"),
    ("hub:dslim/bert-base-NER", r"hub: specs are not supported yet; supported: torchvision:.*timm:.*hf:ORG/NAME"),
])
def test_specs_that_cannot_be_resolved_say_why(spec: str, message: str, capsys) -> None:
    with pytest.raises(InputError, match=message):
        resolve(spec)
    assert main(["info", spec]) == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_spec_is_fetched_only_with_upstreams_hash(tmp_path: Path) -> None:
    """The weights file is pinned by the sha256 prefix in torchvision's own file name: other bytes under that
    name are refused, and nothing is left in the cache."""
    from zoo.cache import fetch, model_cache_dir
    from zoo.schema import SourceSpec

    entry = resolve("torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    (tmp_path / entry.files[0].name).write_bytes(b"not the weights")
    with pytest.raises(FetchError, match=r"sha256 prefix mismatch: expected 8b4bf6e7|could not fetch"):
        fetch(entry, [SourceSpec(kind="path", path=str(tmp_path))])
    assert not (model_cache_dir(entry) / entry.files[0].name).exists()


def test_a_spec_exports_and_serves_like_a_registry_entry(tmp_path: Path) -> None:
    """Random weights (the file is on download.pytorch.org, out of reach here): the spec's entry builds,
    exports with parity against torch, and the bundle predicts with the enum's 1000 categories."""
    import torch

    from export.bundle import export_bundle

    spec = "torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    result = export_bundle(spec, tmp_path / "bundle", pretrained=False)
    manifest = serve.load(result.directory).manifest
    assert manifest.model_id == "mobilenet_v3_small.imagenet1k_v1" and len(manifest.postprocessing.labels) == 1000
    top = serve.load(result.directory).predict([str(Path(__file__).resolve().parents[1] / "zoo" / "assets" / "flower.jpg")])
    assert top[0]["top_k"][0]["label"] in manifest.postprocessing.labels
    assert isinstance(build(spec, pretrained=False), torch.nn.Module)
    assert result.formats[0]["status"] == "ok" and result.formats[0]["max_abs_diff"] <= 1e-4


def test_zoo_pin_writes_the_spec_as_a_registry_entry(tmp_path: Path, monkeypatch, capsys) -> None:
    """`zoo pin SPEC`: the spec's record in a registry file that $ZOO_REGISTRY can list; after a fetch
    recorded the full digest in the lock, the written entry pins the file by it; pinning again replaces."""
    from zoo.lock import record

    monkeypatch.setenv("ZOO_LOCK", str(tmp_path / "zoo.lock"))
    registry = tmp_path / "mine.json"
    spec = "torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert main(["pin", spec, "--registry", str(registry)]) == 0
    first = json.loads(registry.read_text())["models"]
    assert [m["id"] for m in first] == ["mobilenet_v3_small.imagenet1k_v1"] and "sha256_prefix" in first[0]["files"][0]
    assert "reference" not in first[0]  # its weights were never fetched: nothing to compute references from
    entry = resolve(spec)
    digest = entry.files[0].sha256_prefix + "0" * 56  # as a fetch would have recorded it
    record(entry, {entry.files[0].name: digest}, spec)
    assert main(["pin", spec, "--registry", str(registry), "--name", "small-v1"]) == 0
    assert main(["pin", spec, "--registry", str(registry), "--name", "small-v1"]) == 0  # replaced, not doubled
    models = json.loads(registry.read_text())["models"]
    assert [m["id"] for m in models] == ["mobilenet_v3_small.imagenet1k_v1", "small-v1"]
    assert models[1]["files"] == [{"name": entry.files[0].name, "role": "weights", "sha256": digest}]
    monkeypatch.setenv("ZOO_REGISTRY", str(registry))
    capsys.readouterr()
    assert main(["info", "small-v1"]) == 0 and "pinned        by the entry" in capsys.readouterr().out
    assert main(["pin", "resnet18", "--registry", str(registry)]) == 2
    assert "not a model spec" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# timm:NAME[.TAG]

TIMM = "timm:mobilenetv3_small_050.lamb_in1k"


def test_a_timm_spec_takes_its_metadata_from_timms_pretrained_cfg() -> None:
    import timm

    entry = resolve(TIMM)
    assert (entry.id, entry.builder, entry.architecture) == ("mobilenetv3_small_050.lamb_in1k", "timm", "mobilenetv3_small_050")
    assert (entry.input.resize, entry.input.crop, entry.input.interpolation) == (256, 224, "bicubic")  # floor(224 / 0.875)
    assert entry.output.label_set == "imagenet-1k" and entry.output.labels == get_model("resnet18").output.labels
    assert entry.params == sum(p.numel() for p in timm.create_model("mobilenetv3_small_050").parameters())
    assert [(s.kind, s.repo_id, s.revision) for s in entry.sources] == [("hf", "timm/mobilenetv3_small_050.lamb_in1k", "main")]
    assert entry.files[0].sha256 is None and entry.files[0].sha256_prefix is None  # pinned by the lock
    assert entry.finetune is not None and entry.finetune.lr == 3e-4
    assert resolve("timm:mobilenetv3_small_050").id == "mobilenetv3_small_050.lamb_in1k"  # timm's default tag
    assert resolve("timm:deit_tiny_patch16_224").finetune.lr == 3e-5  # a transformer: the ViT family's rate
    from zoo.freeze import backbone_blocks  # --freeze N, gradual:K and --lr-decay see timm's blocks

    blocks = [b.name for b in backbone_blocks(build(TIMM, pretrained=False), "classifier.")]
    assert blocks == ["stem", *(f"blocks.{i}" for i in range(6)), "top"]
    with pytest.raises(InputError, match=r"timm:not_a_net: timm .* has no model 'not_a_net'"):
        resolve("timm:not_a_net")


def test_timm_weights_are_pinned_on_first_fetch_and_load_exactly(tmp_path: Path, monkeypatch, capsys) -> None:
    """Weights written here (the Hub is out of reach) as timm publishes them, one model.safetensors: the first
    fetch records their digest in the lock, the built model is timm's to the last bit, the export serves,
    and other bytes under that name are refused afterwards."""
    import timm
    import torch
    from safetensors.torch import save_file

    from export.bundle import export_bundle
    from zoo.lock import pin_state
    from zoo.schema import SourceSpec

    monkeypatch.setenv("ZOO_LOCK", str(tmp_path / "zoo.lock"))
    upstream = tmp_path / "hub"
    upstream.mkdir()
    torch.manual_seed(0)
    reference = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(upstream / "model.safetensors"))
    assert main(["fetch", TIMM, "--source-dir", str(upstream)]) == 0
    entry = resolve(TIMM)
    assert pin_state(entry) == "lock"
    model = build(TIMM, extra_sources=[SourceSpec(kind="path", path=str(upstream))])
    images = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(model(images), reference(images))
    bundle = export_bundle(TIMM, tmp_path / "bundle", extra_sources=[SourceSpec(kind="path", path=str(upstream))])
    assert bundle.formats[0]["status"] == "ok"
    photo = str(Path(__file__).resolve().parents[1] / "zoo" / "assets" / "flower.jpg")
    assert serve.load(bundle.directory).predict([photo])[0]["top_k"][0]["label"] in entry.output.labels
    # A run fine-tuned from the spec names it as its base, and loads, validates and exports through it
    data = tmp_path / "photos"
    for index in range(8):
        (data / "ab"[index % 2]).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (200, 30, 30) if index % 2 else (30, 30, 200)).save(data / "ab"[index % 2] / f"{index}.png")
    assert main(["finetune", TIMM, "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "card.json").read_text())["base_model"] == TIMM
    assert main(["validate", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "run-bundle")]) == 0
    save_file({k: v + 1 for k, v in reference.state_dict().items() if v.is_floating_point()}, str(upstream / "model.safetensors"))
    from zoo.cache import model_cache_dir

    (model_cache_dir(entry) / "model.safetensors").unlink()
    capsys.readouterr()
    assert main(["fetch", TIMM, "--source-dir", str(upstream)]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
