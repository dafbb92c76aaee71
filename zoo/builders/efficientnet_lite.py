"""EfficientNet-Lite with EfficientNet-PyTorch parameter names (`_conv_stem`, `_blocks.N._expand_conv`,
...), TensorFlow "same" padding precomputed for the input size (static: no shape-dependent ops in an
exported graph), BatchNorm eps 1e-3, ReLU6, no squeeze-excitation."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import stochastic_depth

# (repeats, kernel, stride, expand ratio, in channels, out channels) — EfficientNet-B0 stages.
_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
# variant: (width multiplier, depth multiplier, dropout). Lite keeps stem and head widths fixed.
VARIANTS = {"lite0": (1.0, 1.0, 0.2), "lite1": (1.0, 1.1, 0.2), "lite2": (1.1, 1.2, 0.3),
            "lite3": (1.2, 1.4, 0.3), "lite4": (1.4, 1.8, 0.3)}
_BN = {"eps": 1e-3, "momentum": 0.01}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return channels
    channels *= width
    new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * channels else new)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding for a fixed input size (asymmetric when needed)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, image_size: int, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)
        out = math.ceil(image_size / stride)
        total = max((out - 1) * stride + kernel - image_size, 0)
        self.static_padding = nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))
        self.output_size = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


class MBConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, image_size: int,
                 drop_rate: float):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1, 1, image_size)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, image_size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = Conv2dSame(mid, out_ch, 1, 1, self._depthwise_conv.output_size)
        self._bn2 = nn.BatchNorm2d(out_ch, **_BN)
        self.act = nn.ReLU6(inplace=True)
        self.use_skip = stride == 1 and in_ch == out_ch
        self.drop_rate = drop_rate
        self.output_size = self._depthwise_conv.output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.use_skip:
            out = stochastic_depth(out, self.drop_rate, "row", self.training) + x
        return out


class EfficientNetLite(nn.Module):
    def __init__(self, variant: str = "lite0", num_classes: int = 1000, image_size: int = 224,
                 drop_connect_rate: float = 0.2):
        super().__init__()
        width, depth, dropout = VARIANTS[variant]
        self._conv_stem = Conv2dSame(3, 32, 3, 2, image_size)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        size = self._conv_stem.output_size
        specs = []
        for index, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES):
            cin, cout = _round_filters(cin, width), _round_filters(cout, width)
            # Lite keeps the first and last stage depth fixed.
            repeats = repeats if index in (0, len(_STAGES) - 1) else int(math.ceil(repeats * depth))
            specs += [(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand) for r in range(repeats)]
        blocks = []
        for number, (cin, cout, kernel, stride, expand) in enumerate(specs):
            block = MBConvBlock(cin, cout, kernel, stride, expand, size, drop_connect_rate * number / len(specs))
            size = block.output_size
            blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(specs[-1][1], 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6(inplace=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._avg_pooling(self.forward_features(x)).flatten(1)
        return self._fc(self._dropout(x))
