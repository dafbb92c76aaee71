"""Random weights that still exercise an export: for exports with `pretrained=False` (conversion checks
and benchmarks where the real weights are not reachable, and the tests that stand in for them). With an
architecture's own initialisation some outputs are constant, which makes every parity check vacuous."""

from __future__ import annotations

import numpy as np
import torch

from export.parity import ParityCase
from zoo.schema import ModelEntry


def informative_random_weights(model: torch.nn.Module, entry: ModelEntry, cases: list[ParityCase]) -> None:
    """Random-weight exports only (conversion checks and benchmarks): with an architecture's own
    initialisation some outputs are constant (torchvision's ViT starts its head at zero; EfficientNet-B0's
    logits differ by ~1e-13), which makes every parity check vacuous. Zero linear layers get N(0, 0.02)
    weights and batch-norm statistics are set from every image the export is checked or calibrated on
    (parity inputs and export.calibration's photo views), so activations keep their scale on all of them."""
    if entry.output.kind == "detection":
        _informative_random_detector(model, cases)
        return
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                torch.nn.init.normal_(module.weight, std=0.02)
        if norms:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average: the statistics of exactly these inputs
            model.train()
            batches = [case.inputs for case in cases]
            if entry.modality == "image":
                from export.calibration import calibration_images, held_out_images

                batches += [{"pixel_values": calibration_images(entry.input)},
                            {"pixel_values": held_out_images(entry.input)[0]}]
            by_shape: dict[tuple, list[dict[str, torch.Tensor]]] = {}
            for batch in batches:
                by_shape.setdefault(tuple(t.shape[1:] for t in batch.values()), []).append(batch)
            for group in by_shape.values():  # one call per input shape (segmentation takes several)
                inputs = [torch.cat([batch[name] for batch in group]) for name in group[0]]
                if entry.modality == "image" and len(inputs[0]) == 1:  # pooled features need two images
                    inputs = [torch.cat([inputs[0], inputs[0].flip(-1)])]
                model(*inputs)
            model.eval()


def _informative_random_detector(model: torch.nn.Module, cases: list[ParityCase]) -> None:
    """Detectors from random weights collapse: Faster R-CNN's frozen batch norms start as identities, so
    activations fade through the backbone; SSDlite's class convolutions start at N(0, 0.03) and Faster
    R-CNN's class layer spreads ~1/91 over 91 classes, below its 0.05 score threshold. Either way every
    box scores alike (to 1e-7, so which ties survive NMS is arbitrary) or none is kept. Every batch norm,
    frozen or not, gets the statistics of its own input on the parity images (set layer by layer in one
    pass), then the class layers are redrawn so their logits have a standard deviation of 3 there."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    def set_statistics(norm, inputs):
        norm.running_mean.copy_(inputs[0].mean(dim=(0, 2, 3)))
        norm.running_var.copy_(inputs[0].var(dim=(0, 2, 3)))

    net = model.net
    classes = ([block[-1] for block in net.head.classification_head.module_list] if hasattr(net, "head")
               else [net.roi_heads.box_predictor.cls_score])
    squares: dict[torch.nn.Module, list[float]] = {layer: [] for layer in classes}

    def record(layer, inputs):
        squares[layer].append(float(inputs[0].pow(2).mean()))

    with torch.no_grad():
        model.eval()
        norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))]
        hooks = [norm.register_forward_pre_hook(set_statistics) for norm in norms]
        try:
            model.feature_pass([image[0] for case in cases for image in case.inputs.values()])
        finally:
            for hook in hooks:
                hook.remove()
        hooks = [layer.register_forward_pre_hook(record) for layer in classes]
        try:
            for case in cases:
                model(*case.inputs.values())
        finally:
            for hook in hooks:
                hook.remove()
        for layer, values in squares.items():
            fan_in = layer.weight[0].numel()
            rms = max(float(np.sqrt(np.mean(values))), 1e-6) if values else 1.0
            torch.nn.init.normal_(layer.weight, std=3.0 / (rms * fan_in**0.5))
            torch.nn.init.zeros_(layer.bias)
