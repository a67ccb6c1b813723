"""IMPure: purification by information masking (arXiv 2311.15339): one feed-forward pass that rebuilds
every pixel from views in which it is hidden (see :mod:`edgepure.models.impure` for the network).

No iterations and no gradients: a static graph of one batched U-Net call over the 4 views. The only
randomness is the noised copy of the input, from the explicit ``noise`` input (shape of the image).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from edgepure.purifiers.base import Purifier
from edgepure.purifiers.registry import register_purifier

__all__ = ["IMPure"]


class IMPure(Purifier):
    stochastic = True

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def noise_shape(self, x: torch.Tensor) -> Optional[tuple[int, ...]]:
        return tuple(x.shape)

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        if noise is None:
            noise = torch.randn_like(x)
        return self.net(x, noise)

    def config(self) -> dict[str, object]:
        return {}

    def calls_per_image(self) -> dict[str, int]:
        """Network evaluations per purified image: the 4 masked views, batched into one call."""
        return {"reconstruction_views": 4}


@register_purifier("impure", has_weights=True)
def impure(pretrained: bool = True, net: Optional[nn.Module | str] = None, **settings: Any) -> IMPure:
    """IMPure: each of 4 interleaved patch groups rebuilt from the other three by a small U-Net, one pass."""
    from edgepure.models.registry import create_prior

    model = net if isinstance(net, nn.Module) else create_prior(net or "impure_s", pretrained=pretrained, **settings)
    return IMPure(model)
