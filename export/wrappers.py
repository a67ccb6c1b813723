"""The wrappers the export puts around a module: float16 compute, and noise drawn inside the graph.
(``edgepure.export.compose`` recognises them around an unrolled purifier.)"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

__all__ = ["GraphNoise", "HalfPrecision"]


class GraphNoise(nn.Module):
    """Draws the noise inside the graph (exported as RandomNormal): the model's only input is the image.
    ONNX Runtime draws fresh noise on every run and TensorRT ignores the seed, so results vary run to run."""

    def __init__(self, inner: nn.Module, noise_shape: Sequence[int]) -> None:
        super().__init__()
        self.inner = inner
        self.noise_shape = tuple(noise_shape)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.inner(image, torch.randn(self.noise_shape, dtype=image.dtype))


class HalfPrecision(nn.Module):
    """A copy of ``inner`` computing in float16, with float32 inputs and outputs (casts at the edges)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(inner).half()

    def forward(self, *args: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.inner(*(a.half() if a is not None else None for a in args)).float()
