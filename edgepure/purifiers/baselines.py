"""The simple baselines every purifier has to beat: Gaussian smoothing, median filter, bit-depth reduction.

All are static (fixed shapes, no data-dependent control flow). Gaussian smoothing can add Gaussian noise
before blurring (``noise_std > 0``), which makes it a stochastic purifier with an explicit noise input.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from edgepure.perturb.families import gaussian_kernel1d
from edgepure.purifiers.base import Purifier
from edgepure.purifiers.registry import register_purifier
from edgepure.runtime.errors import ConfigError

__all__ = ["BitDepth", "GaussianSmoothing", "MedianFilter"]


class GaussianSmoothing(Purifier):
    def __init__(self, sigma: float = 1.0, kernel_size: int = 5, noise_std: float = 0.0) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or sigma <= 0 or noise_std < 0:
            raise ConfigError(f"gaussian: need an odd kernel_size, sigma > 0, noise_std ≥ 0; got {kernel_size}, {sigma}, {noise_std}")
        self.sigma, self.kernel_size, self.noise_std = sigma, kernel_size, noise_std
        self.stochastic = noise_std > 0
        self.register_buffer("k", gaussian_kernel1d(kernel_size, sigma), persistent=False)

    def noise_shape(self, x: torch.Tensor) -> Optional[tuple[int, ...]]:
        return tuple(x.shape) if self.stochastic else None

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        if self.stochastic:
            if noise is None:
                noise = torch.randn_like(x)
            x = x + self.noise_std * noise
        return self.blur(x).clamp(0.0, 1.0)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """The separable Gaussian blur alone (replicate padding, no noise, no clamping)."""
        n, c, h, w = x.shape
        r = self.kernel_size // 2
        y = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")
        y = F.conv2d(F.conv2d(y, self.k.view(1, 1, 1, -1)), self.k.view(1, 1, -1, 1))
        return y.view(n, c, h, w)

    def config(self) -> dict[str, object]:
        return {"sigma": self.sigma, "kernel_size": self.kernel_size, "noise_std": self.noise_std}


class MedianFilter(Purifier):
    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ConfigError(f"median: kernel_size must be odd and positive, got {kernel_size}")
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        n, c, h, w = x.shape
        r = self.kernel_size // 2
        xp = F.pad(x, (r, r, r, r), mode="replicate")
        patches = F.unfold(xp, self.kernel_size).view(n, c, self.kernel_size**2, h, w)
        # the (k²+1)/2-th largest value of each window; TopK exports to ONNX (and TensorRT), median does not
        return patches.topk(self.kernel_size**2 // 2 + 1, dim=2, sorted=True).values[:, :, -1]

    def config(self) -> dict[str, object]:
        return {"kernel_size": self.kernel_size}


class BitDepth(Purifier):
    """Quantise to ``bits`` bits per channel (its gradient is zero almost everywhere: attack it with BPDA)."""

    masks_gradient = True

    def __init__(self, bits: int = 4) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ConfigError(f"bitdepth: bits must be in 1..8, got {bits}")
        self.bits = bits

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        levels = 2**self.bits - 1
        return torch.round(x.clamp(0.0, 1.0) * levels) / levels

    def config(self) -> dict[str, object]:
        return {"bits": self.bits}


@register_purifier("gaussian")
def gaussian(sigma: float = 1.0, kernel_size: int = 5, noise_std: float = 0.0) -> GaussianSmoothing:
    """Gaussian smoothing (optionally noise first: randomised smoothing with an explicit noise input)."""
    return GaussianSmoothing(sigma, kernel_size, noise_std)


@register_purifier("median")
def median(kernel_size: int = 3) -> MedianFilter:
    """Median filter over k×k windows."""
    return MedianFilter(kernel_size)


@register_purifier("bitdepth")
def bitdepth(bits: int = 4) -> BitDepth:
    """Bit-depth reduction (feature squeezing)."""
    return BitDepth(bits)
