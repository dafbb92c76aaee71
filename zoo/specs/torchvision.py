"""`torchvision:WEIGHTS_ENUM` (e.g. `torchvision:ResNet50_Weights.IMAGENET1K_V2`, or `.DEFAULT`): a registry
record from the enum's own metadata: the weights URL and the sha256 prefix torchvision puts in its file
name, parameter count, GFLOPS, metrics, categories and transforms. Classification, semantic segmentation
and object detection weights; scripts/build_registry.py writes the shipped torchvision entries with it."""

from __future__ import annotations

import re
from typing import Any

from zoo.errors import InputError

FAMILIES = ("classification", "segmentation", "detection")  # what zoo builds (zoo.builders)
# Within segmentation and detection, the architectures whose outputs zoo's heads, export and serve handle
# (and its tests export): per-pixel logits with an optional auxiliary head, boxes + scores + labels.
TESTED = {"segmentation": ("lraspp_", "deeplabv3_"), "detection": ("ssdlite", "fasterrcnn_")}
_BUILDERS = {"classification": "torchvision", "segmentation": "torchvision_segmentation",
             "detection": "torchvision_detection"}
_TASKS = {"classification": "image-classification", "segmentation": "semantic-segmentation",
          "detection": "object-detection"}
_OUTPUTS = {"classification": "logits", "segmentation": "segmentation", "detection": "detection"}


def weights_member(text: str):
    """The enum member `text` names (ResNet50_Weights.IMAGENET1K_V2; .DEFAULT is resolved)."""
    from torchvision.models import get_weight

    try:
        return get_weight(text)
    except (ValueError, KeyError, AttributeError) as exc:
        raise InputError(f"torchvision:{text}: not a torchvision weights enum member ({exc}); expected e.g. "
                         "torchvision:ResNet50_Weights.IMAGENET1K_V2 (torchvision.models.get_model_weights lists them)") from None


def architecture(weights) -> tuple[str, str]:
    """(model name, family) of the builder that takes `weights`; InputError for families zoo does not build."""
    import torchvision.models as models
    from torchvision.models import get_model_weights, list_models

    modules = {"segmentation": models.segmentation, "detection": models.detection, "video": models.video,
               "optical_flow": models.optical_flow, "quantization": models.quantization}
    for name in list_models():
        if get_model_weights(name) is type(weights):
            family = next((f for f, module in modules.items() if name in list_models(module=module)), "classification")
            spec = f"torchvision:{type(weights).__name__}.{weights.name}"
            if family not in FAMILIES:
                raise InputError(f"{spec}: {family} models are not supported; zoo builds {', '.join(FAMILIES)} weights")
            if family in TESTED and not name.startswith(TESTED[family]):
                raise InputError(f"{spec}: {name} is not supported yet; of torchvision's {family} models zoo builds "
                                 + ", ".join(f"{prefix.rstrip('_')}*" for prefix in TESTED[family]))
            return name, family
    raise InputError(f"torchvision:{type(weights).__name__}: no torchvision model builder takes these weights")


def record(text: str, label_sets: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The registry record of spec `torchvision:text`, with its id the model name and the weights' tag
    (resnet50.imagenet1k_v2), and the label sets it names: one of `label_sets` when the categories are
    equal, else its own."""
    weights = weights_member(text)
    arch, family = architecture(weights)
    categories = list(weights.meta["categories"])
    label_set = next((name for name, labels in label_sets.items() if labels == categories),
                     f"{type(weights).__name__}.{weights.name}".lower())
    entry = weights_record(weights, arch, family, f"{arch}.{weights.name.lower()}", label_set)
    return entry, {label_set: categories}


def weights_record(weights, arch: str, family: str, entry_id: str, label_set: str, paper: str | None = None,
                   description: str | None = None) -> dict[str, Any]:
    """The registry record of torchvision weights `weights` for model `arch`."""
    from torchvision.models import get_model

    file_name = weights.url.rsplit("/", 1)[1]
    prefix = re.search(r"-([0-9a-f]{8,})\.pth$", file_name)
    if prefix is None:
        raise InputError(f"{weights.url}: no sha256 prefix in the file name; zoo fetches only hash-pinned files")
    origin = f"torchvision {type(weights).__name__}.{weights.name}"
    args: dict[str, Any] = {"arch": arch, "num_classes": len(weights.meta["categories"])}
    if family == "classification":
        transform = weights.transforms()
        image = _image_input(transform.resize_size[0], transform.crop_size[0], transform)
    elif family == "segmentation":  # any input size: the shorter side resized, no crop
        transform = weights.transforms()
        image = _image_input(transform.resize_size[0], None, transform)
        if arch.startswith("deeplabv3"):  # its weights carry the auxiliary head
            args["aux_loss"] = True
    else:  # the detector resizes and normalises inside (GeneralizedRCNNTransform); the spec records its settings
        inner = get_model(arch, weights=None, weights_backbone=None).transform
        side = inner.min_size[-1]
        image = {"kind": "image", "size": [side, side], "resize": side, "crop": None, "interpolation": "bilinear",
                 "mean": list(inner.image_mean), "std": list(inner.image_std)}
        if arch.startswith("fasterrcnn"):  # frozen batch norms, as torchvision builds it for trained weights
            args["frozen_batchnorm"] = True
    return {
        "id": entry_id,
        "description": description or f"torchvision {arch}, weights {type(weights).__name__}.{weights.name}",
        "modality": "image",
        "task": _TASKS[family],
        "architecture": arch,
        "builder": _BUILDERS[family],
        "builder_args": args,
        "weights_format": "torch-state-dict",
        "files": [{"name": file_name, "role": "weights", "sha256_prefix": prefix.group(1)}],
        "sources": [{"kind": "url", "base_url": weights.url.rsplit("/", 1)[0] + "/"}],
        "provenance": {"license": "BSD-3-Clause", "origin": origin, **({"paper": paper} if paper else {})},
        "params": weights.meta["num_params"],
        "gflops": weights.meta["_ops"],
        "metrics": [{"name": f"{dataset.lower()}/{name}", "value": value, "source": origin}
                    for dataset, values in weights.meta["_metrics"].items() for name, value in values.items()],
        "input": image,
        "output": {"kind": _OUTPUTS[family], "labels": label_set},
    }


def _image_input(resize: int, crop: int | None, transform) -> dict[str, Any]:
    side = crop if crop is not None else resize
    return {"kind": "image", "size": [side, side], "resize": resize, "crop": crop,
            "interpolation": transform.interpolation.value, "mean": list(transform.mean), "std": list(transform.std)}
