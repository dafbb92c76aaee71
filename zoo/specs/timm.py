"""`timm:NAME[.TAG]` (e.g. `timm:convnext_tiny.fb_in1k`; without a tag, timm's default weights): a registry
record built by timm (builder "timm") from its pretrained_cfg: input size, crop, interpolation, mean and
std, classes and licence; labels from timm's ImageNet info (the shipped imagenet-1k names for ImageNet-1k);
the weights file through the Hugging Face Hub as timm fetches it (its hf_hub_id). timm publishes no digests:
the file is pinned by the lock on its first fetch (zoo.lock)."""

from __future__ import annotations

import math
from typing import Any

from zoo.errors import InputError


def record(text: str, label_sets: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    name, tag = split_model_name_tag(text)
    if name not in timm.list_models():
        raise InputError(f"timm:{text}: timm {timm.__version__} has no model {name!r} (timm.list_models() lists them)")
    cfg = get_pretrained_cfg(f"{name}.{tag}" if tag else name)
    if cfg is None or not cfg.hf_hub_id:
        tags = [m.split(".", 1)[1] for m in timm.list_models(name, pretrained=True) if "." in m]
        raise InputError(f"timm:{text}: no weights on the Hugging Face Hub for this tag; {name}'s are "
                         f"{', '.join(tags) or 'none'}")
    if cfg.crop_mode != "center":
        raise InputError(f"timm:{text}: its eval transform crops in {cfg.crop_mode!r} mode; zoo's preprocessing "
                         "(and serve's) is a resize then a center crop")
    labels, label_set = _labels(cfg, label_sets)
    crop = cfg.input_size[-1]
    full = f"{cfg.architecture}.{cfg.tag}"
    entry = {
        "id": full.lower(),
        "description": f"timm {full}" + (f": {cfg.description}" if cfg.description else ""),
        "modality": "image",
        "task": "image-classification",
        "architecture": cfg.architecture,
        "builder": "timm",
        "builder_args": {"model": cfg.architecture, "num_classes": cfg.num_classes},
        "weights_format": "safetensors",
        "files": [{"name": "model.safetensors", "role": "weights"}],
        "sources": [{"kind": "hf", "repo_id": cfg.hf_hub_id, "revision": "main"}],
        "provenance": {"license": cfg.license or "unknown (see the model card)",
                       "origin": f"timm {full} (huggingface.co/{cfg.hf_hub_id})",
                       **({"paper": cfg.origin_url} if cfg.origin_url else {})},
        "params": _params(cfg.architecture, cfg.num_classes),
        "input": {"kind": "image", "size": [crop, crop], "resize": math.floor(crop / cfg.crop_pct), "crop": crop,
                  "interpolation": cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic") else "bicubic",
                  "mean": list(cfg.mean), "std": list(cfg.std)},
        "output": {"kind": "logits", "labels": label_set},
    }
    return entry, {label_set: labels}


def _labels(cfg, label_sets: dict[str, list[str]]) -> tuple[list[str], str]:
    """ImageNet-1k: the shipped names (same class order); other ImageNet subsets: timm's descriptions."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(cfg)
    if subset is None:
        raise InputError(f"timm:{cfg.architecture}.{cfg.tag}: {cfg.num_classes} classes of an unknown label set; zoo "
                         "takes timm weights with ImageNet labels")
    if subset in label_sets and len(label_sets[subset]) == cfg.num_classes:
        return label_sets[subset], subset
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(cfg.num_classes)], subset


def _params(architecture: str, num_classes: int) -> int:
    """The model's parameter count, without allocating its weights (meta device)."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())
