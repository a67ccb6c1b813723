"""Small, fast CNN classifiers for 32×32 crops. No MaxPool: strided convolutions and average pooling only
(MaxPool's backward exports badly into ONNX/TensorRT when gradients through the classifier are unrolled).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from edgepure.models.registry import register_classifier

__all__ = ["SignNet"]

# Per-channel statistics of the GTSRB training images (RGB, [0, 1]); CIFAR-10's for the CIFAR models.
GTSRB_MEAN = (0.3403, 0.3121, 0.3214)
GTSRB_STD = (0.2724, 0.2608, 0.2669)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(x + y)


class SignNet(nn.Module):
    """A residual CNN for small crops: stem, then per stage a strided conv (except the first) and blocks,
    global average pooling and a linear head. Input: float RGB NCHW in [0, 1]; normalisation is a buffer."""

    def __init__(
        self,
        num_classes: int = 43,
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1),
        dropout: float = 0.2,
        mean: Sequence[float] = GTSRB_MEAN,
        std: Sequence[float] = GTSRB_STD,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths and blocks need the same length, got {len(widths)} and {len(blocks)}")
        self.input_size = input_size
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        layers: list[nn.Module] = [_conv_bn(3, widths[0])]
        cin = widths[0]
        self.stage_ends: list[int] = []  # index in ``features`` of each stage's last layer
        for i, (w, n) in enumerate(zip(widths, blocks)):
            if i > 0:
                layers.append(_conv_bn(cin, w, stride=2))
            layers.extend(ResidualBlock(w) for _ in range(n))
            self.stage_ends.append(len(layers) - 1)
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage's last block (finest first) for ``x`` in [0, 1]: what an attention
        mask made from the classifier's own activations reads."""
        h = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.stage_ends:
                out.append(h)
        return out


@register_classifier("signnet_s", pretrained_tag="signnet_s_gtsrb")
def signnet_s(num_classes: int = 43, **kw: object) -> SignNet:
    """SignNet-S: 3 stages (32/64/128 channels), one residual block each, ~0.5 M parameters; GTSRB 32×32."""
    return SignNet(num_classes=num_classes, widths=(32, 64, 128), blocks=(1, 1, 1), **kw)  # type: ignore[arg-type]


@register_classifier("signnet_s_cutmix", pretrained_tag="signnet_s_cutmix_gtsrb")
def signnet_s_cutmix(num_classes: int = 43, **kw: object) -> SignNet:
    """SignNet-S with the shipped weights fine-tuned with CutMix: reads partly covered signs; GTSRB 32×32."""
    return signnet_s(num_classes, **kw)  # the architecture of signnet_s; only the weights differ


@register_classifier("signnet_s_at", pretrained_tag="signnet_s_at_gtsrb")
def signnet_s_at(num_classes: int = 43, **kw: object) -> SignNet:
    """SignNet-S with the shipped CutMix weights adversarially fine-tuned against the four perturbation families of
    the NAPPure protocol (blur kernel, patch, flow, additive noise); GTSRB 32×32."""
    return signnet_s(num_classes, **kw)  # the architecture of signnet_s; only the weights differ


@register_classifier("signnet_xs")
def signnet_xs(num_classes: int = 43, **kw: object) -> SignNet:
    """SignNet-XS: 16/32/64 channels, ~0.13 M parameters; for the slowest devices and for tests."""
    return SignNet(num_classes=num_classes, widths=(16, 32, 64), blocks=(1, 1, 1), **kw)  # type: ignore[arg-type]


@register_classifier("signnet_cifar")
def signnet_cifar(num_classes: int = 10, **kw: object) -> SignNet:
    """SignNet for CIFAR-10: 64/128/256 channels, two residual blocks per stage, CIFAR normalisation."""
    kw.setdefault("mean", CIFAR_MEAN)
    kw.setdefault("std", CIFAR_STD)
    return SignNet(num_classes=num_classes, widths=(64, 128, 256), blocks=(2, 2, 2), **kw)  # type: ignore[arg-type]
