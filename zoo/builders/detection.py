"""torchvision object detectors (SSDlite, Faster R-CNN) behind one interface:
`image` (1x3xHxW floats in [0, 1], any size) -> boxes (Nx4, x1 y1 x2 y2 in the input's pixels),
scores (N) and labels (N, int64; 0 is the background and never returned). Resizing, normalisation,
box decoding and non-maximum suppression all happen inside the model, so inside the exported graph.

torchvision computes the resized size in float64 on the host; a traced graph computes it in float32
and can land one pixel short (300 x 1.6 = 479.99997), which shifts every box. `ConsistentResize`
computes the size the same way in eager torch and in the graph (float32, a 1e-3 margin at exact
integers), so the exported model and the torch model agree."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.builders.state_dict import load_state_dict_strict, read_state_dict
from zoo.schema import ModelEntry

OUTPUT_NAMES = ("boxes", "scores", "labels")


def _transform_class():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

    class ConsistentResize(GeneralizedRCNNTransform):
        """GeneralizedRCNNTransform whose shorter-side resize computes its size in float32 tensor ops."""

        def resize(self, image, target=None):
            if self.fixed_size is not None or (self.training and self._skip_resize):
                return super().resize(image, target)  # SSD: a fixed square, nothing to round
            shape = torch._shape_as_tensor(image)[-2:]
            short_side = float(self.torch_choice(self.min_size) if self.training else self.min_size[-1])
            dims = shape.to(torch.float32)
            scale = torch.minimum(short_side / dims.min(), float(self.max_size) / dims.max())
            size = (dims * scale + 1e-3).floor().to(torch.int64)
            # Traced: the size stays a graph value; eager: interpolate wants Python ints.
            out = (size[0], size[1]) if torch.jit.is_tracing() else (int(size[0]), int(size[1]))
            resized = F.interpolate(image[None], size=out, mode="bilinear", align_corners=False)[0]
            if target is not None and "boxes" in target:
                target["boxes"] = resize_boxes(target["boxes"], image.shape[-2:], resized.shape[-2:])
            return resized, target

    return ConsistentResize


class DetectionNet(nn.Module):
    """A torchvision detector with export-consistent resizing. `forward(image)` runs one image
    (1x3xHxW) for inference and export; `forward(images, targets)` returns torchvision's losses."""

    def __init__(self, net: nn.Module):
        super().__init__()
        old = net.transform
        net.transform = _transform_class()(old.min_size, old.max_size, old.image_mean, old.image_std,
                                           size_divisible=old.size_divisible, fixed_size=old.fixed_size,
                                           _skip_resize=getattr(old, "_skip_resize", False))
        self.net = net
        self._backbone_amp: tuple[str, torch.dtype] | None = None
        plain = net.backbone.forward

        def backbone_forward(images: torch.Tensor):
            """The backbone under `mixed_precision`, its feature maps handed on in float32."""
            if self._backbone_amp is None:
                return plain(images)
            with torch.autocast(self._backbone_amp[0], dtype=self._backbone_amp[1]):
                features = plain(images)
            if isinstance(features, dict):
                return type(features)((name, value.float()) for name, value in features.items())
            return features.float()

        net.backbone.forward = backbone_forward  # an instance attribute: the state dict keys stay as they are

    @contextlib.contextmanager
    def mixed_precision(self, device_type: str, dtype: torch.dtype):
        """Autocast for the backbone only. Under a whole-model autocast torchvision makes the anchors in the
        feature maps' dtype and decodes boxes in the heads' output dtype: in bfloat16 (8 significant bits)
        box centres at 800-1333 px are off by several pixels, in training targets, in the per-epoch mAP and
        in predictions. The heads, anchors, box decoding and NMS run in float32 here."""
        saved, self._backbone_amp = self._backbone_amp, (device_type, dtype)
        try:
            yield
        finally:
            self._backbone_amp = saved

    def forward(self, image, targets: list[dict[str, torch.Tensor]] | None = None):
        if targets is not None:
            return self.net(list(image), targets)
        detections = self.net([image[0]])[0]
        return detections["boxes"], detections["scores"], detections["labels"]

    def feature_pass(self, images: list[torch.Tensor]) -> None:
        """Resize, normalise, backbone and (SSDlite) heads on CHW images, batched as the model batches
        them: every layer that holds batch-norm statistics, without needing targets."""
        batch, _ = self.net.transform(images)
        features = self.net.backbone(batch.tensors)
        if hasattr(self.net, "head"):  # SSDlite's heads hold batch norms; Faster R-CNN's hold none
            self.net.head(list(features.values()) if isinstance(features, dict) else [features])

    def detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections for several CHW images at once (evaluation)."""
        return self.net(images)


def detection_rows(boxes, scores, labels) -> np.ndarray:
    """(boxes, scores, labels) as one Nx6 float array: x1 y1 x2 y2 score label (stored references)."""
    as_np = [t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)
             for t in (boxes, scores, labels)]
    return np.concatenate([as_np[0].reshape(-1, 4), as_np[1].reshape(-1, 1), as_np[2].reshape(-1, 1)], axis=1)


def _freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm2d -> torchvision's FrozenBatchNorm2d (default eps 1e-5), as torchvision builds
    Faster R-CNN whenever it loads trained weights: the upstream checkpoint has exactly these buffers,
    and fine-tuning keeps the statistics fixed (detection batches are too small to estimate them)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
        else:
            _freeze_batchnorm(child)


def build_torchvision_detection(entry: ModelEntry, weights: Path | None) -> nn.Module:
    import torchvision

    args = entry.builder_args
    net = torchvision.models.get_model(args["arch"], weights=None, weights_backbone=None,
                                       num_classes=args["num_classes"])
    if args.get("frozen_batchnorm"):
        _freeze_batchnorm(net.backbone)
    if weights is not None:
        load_state_dict_strict(net, read_state_dict(weights, entry.weights_format), entry.id)
    return DetectionNet(net)
