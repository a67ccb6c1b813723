"""NCIS: neural contextual iterative smoothing (arXiv 2106.11644), as edgepure designs it.

The paper's abstract gives the ingredients and not the update rule: iterative Gaussian smoothing (GS),
which removes the zero-mean, symmetric adversarial residual together with the image's fine detail, and a
blind-spot network (BSN) trained self-supervised on clean images, which restores the detail. Our rule,
for ``iterations`` K steps from ``x_0 = x``:

    s_k     = G_σ * x_k                       (GS: the low frequencies of the current image)
    r_k     = B(x_k)                          (each pixel predicted from its neighbourhood only)
    x_{k+1} = clip(s_k + α·(r_k − G_σ * r_k), 0, 1)

i.e. the low frequencies come from the smoothed image and the high frequencies from the blind-spot
prediction, never from the pixel itself, where a pixel-wise adversarial residual lives. ``α`` = 0 is
plain iterative GS (the paper's GS baseline). The defaults K = 3, σ = 1, α = 0.5 are the setting that kept the most
accuracy under the additive attack without losing clean accuracy to plain GS (the sweep is in docs/purifiers.md).
No randomness, no gradients: a static graph of K depthwise convolution pairs and K BSN forwards.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from edgepure.purifiers.base import Purifier, check_steps
from edgepure.purifiers.baselines import GaussianSmoothing
from edgepure.purifiers.registry import register_purifier
from edgepure.runtime.errors import ConfigError

__all__ = ["NCIS"]


class NCIS(Purifier):
    def __init__(self, bsn: nn.Module, iterations: int = 3, sigma: float = 1.0, kernel_size: int = 5,
                 alpha: float = 0.5) -> None:
        super().__init__()
        iterations = check_steps("ncis", "iterations", iterations)
        if sigma <= 0 or kernel_size % 2 != 1 or kernel_size < 1 or alpha < 0:
            raise ConfigError(f"ncis: need iterations ≥ 1, sigma > 0, an odd kernel_size and alpha ≥ 0; got "
                              f"{iterations}, {sigma}, {kernel_size}, {alpha}")
        self.bsn = bsn.eval()
        for p in self.bsn.parameters():
            p.requires_grad_(False)
        self.iterations, self.sigma, self.kernel_size, self.alpha = iterations, sigma, kernel_size, alpha
        self.gs = GaussianSmoothing(sigma, kernel_size)

    def smooth(self, x: torch.Tensor) -> torch.Tensor:
        return self.gs.blur(x)

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        for _ in range(self.iterations):
            s = self.smooth(x)
            if self.alpha > 0:
                r = self.bsn(x)
                s = s + self.alpha * (r - self.smooth(r))
            x = s.clamp(0.0, 1.0)
        return x

    def config(self) -> dict[str, object]:
        return {"iterations": self.iterations, "sigma": self.sigma, "kernel_size": self.kernel_size, "alpha": self.alpha}

    def calls_per_image(self) -> dict[str, int]:
        """Network evaluations per purified image."""
        return {"blind_spot_net": self.iterations if self.alpha > 0 else 0}


@register_purifier("ncis", has_weights=True)
def ncis(pretrained: bool = True, bsn: Optional[nn.Module | str] = None, **settings: Any) -> NCIS:
    """NCIS: iterative Gaussian smoothing with a self-supervised blind-spot network restoring the detail."""
    from edgepure.models.registry import create_prior

    net = bsn if isinstance(bsn, nn.Module) else create_prior(bsn or "bsn_s", pretrained=pretrained)
    return NCIS(net, **settings)
