"""torchvision semantic-segmentation models (LR-ASPP, DeepLabV3) behind one interface:
`pixel_values` (NCHW, any height and width) -> per-pixel class logits at the input's resolution."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoo.builders.state_dict import load_state_dict_strict, read_state_dict
from zoo.schema import ModelEntry


class SegmentationNet(nn.Module):
    """torchvision's forward without the auxiliary head: backbone -> classifier -> bilinear upsampling.

    The auxiliary classifier (DeepLabV3) stays in the module so the upstream weights load strictly,
    but it is never run: it only serves torchvision's training loss, and an export would carry it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        from torchvision.models.segmentation.lraspp import LRASPP

        features = self.net.backbone(pixel_values)
        logits = self.net.classifier(features if isinstance(self.net, LRASPP) else features["out"])
        return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


def build_torchvision_segmentation(entry: ModelEntry, weights: Path | None) -> nn.Module:
    import torchvision

    args = entry.builder_args
    kwargs = {"aux_loss": args["aux_loss"]} if "aux_loss" in args else {}
    net = torchvision.models.get_model(args["arch"], weights=None, weights_backbone=None,
                                       num_classes=args["num_classes"], **kwargs)
    if weights is not None:
        load_state_dict_strict(net, read_state_dict(weights, entry.weights_format), entry.id)
    return SegmentationNet(net)
