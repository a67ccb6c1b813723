"""Blind-spot networks: each output pixel is predicted from its neighbourhood only, never from itself.

Trained self-supervised to reproduce noisy images (``‖B(x + n) − (x + n)‖²``), a blind-spot network
learns ``E[x_p | context]``: with zero-mean noise independent per pixel, its own noise cannot be copied,
so the prediction is a denoised image (Noise2Void / D-BSN). NCIS uses one to restore what Gaussian
smoothing removes.

The blind spot is built in (Wu et al. 2020, D-BSN): a 3×3 convolution with its centre tap masked, then
only 1×1 and dilation-2 3×3 convolutions. Every path from input pixel p to output pixel q then moves by
an offset ``d + 2e`` with ``d`` a non-zero 3×3 offset and ``e`` any integer offset, never zero: the
output at p does not depend on the input at p. No normalisation layer (it would mix in p through its
statistics); zero padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgepure.models.registry import register_prior

__all__ = ["BlindSpotNet", "bsn_s", "bsn_xs"]


class CentreMaskedConv2d(nn.Conv2d):
    """A 3×3 convolution whose centre tap is zero (for every input channel)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)
        mask = torch.ones(1, 1, 3, 3)
        mask[..., 1, 1] = 0.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=1)


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dilated = nn.Conv2d(channels, channels, 3, padding=2, dilation=2)
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.relu(self.dilated(F.relu(x))))


class BlindSpotNet(nn.Module):
    """``B(x)``: float RGB NCHW in [0, 1] → the per-pixel prediction from context, same shape."""

    def __init__(self, channels: int = 32, blocks: int = 6, input_size: int = 32) -> None:
        super().__init__()
        self.input_size = input_size
        self.edgepure_config = {"channels": channels, "blocks": blocks, "input_size": input_size}
        self.head = CentreMaskedConv2d(3, channels)
        self.body = nn.Sequential(*[_Block(channels) for _ in range(blocks)])
        self.tail = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 + self.tail(self.body(self.head(x - 0.5)))


@register_prior(pretrained_tag="bsn_s_gtsrb")
def bsn_s(**kw: object) -> BlindSpotNet:
    """Blind-spot network, 32 channels, 6 dilated blocks (receptive field 27×27 minus the centre): NCIS's restorer."""
    return BlindSpotNet(**kw)  # type: ignore[arg-type]


@register_prior()
def bsn_xs(**kw: object) -> BlindSpotNet:
    """Blind-spot network, 8 channels, 2 blocks: tiny, for tests."""
    cfg: dict[str, object] = {"channels": 8, "blocks": 2}
    cfg.update(kw)
    return BlindSpotNet(**cfg)  # type: ignore[arg-type]
