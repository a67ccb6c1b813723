"""IMPure's reconstruction network, sized for 32×32 crops: each of 4 interleaved patch groups is rebuilt from
the other three, all four views in one batch.

The image is cut into ``patch``×``patch`` patches; patch (r, c) belongs to group ``(c mod 2) + 2·(r mod 2)``
(IMPure's fixed evaluation pattern), so each group is a quarter of the image spread over all of it. View i
shows the network the image with group i hidden, plus, at group i's positions, a heavily noised copy of
the input (DDPM level ``noise_t`` of the linear-β schedule; IMPure's "noised copy" at its evaluation
setting t = 400 is ≈ 0.44·x + 0.90·ε in [−1, 1] units), plus the mask. A small U-Net reconstructs the image from each view; the output takes
group i's pixels from view i, and a residual 3×3 convolution (IMPure's ``use_conv``) smooths the seams.

Where IMPure uses an MAE ViT (patch tokens, a second feature-space noising at t = 600, CLS-token heads),
this is a convolutional equivalent: at 32×32 a CNN of ~0.6 M parameters reconstructs masked patches at a
fraction of a ViT's cost, and the interleaved grouping, the noised copy and the stitching are IMPure's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from edgepure.models.priors import UNet, ddpm_alphas_bar
from edgepure.models.registry import register_prior

__all__ = ["ImpureNet", "group_masks", "impure_s", "impure_xs"]

NOISE_T = 400  # DDPM step of the noised copy (IMPure's evaluation setting; the default)


def group_masks(size: int, patch: int) -> torch.Tensor:
    """``(4, 1, size, size)`` 0/1 masks of the 4 interleaved patch groups (they add up to one)."""
    if size % patch:
        raise ValueError(f"image size {size} is not a multiple of the patch size {patch}")
    r = torch.arange(size) // patch
    group = (r[None, :] % 2) + 2 * (r[:, None] % 2)  # (row, col) → (col mod 2) + 2·(row mod 2)
    return torch.stack([(group == g).float() for g in range(4)])[:, None]


class ImpureNet(nn.Module):
    """``R(x, ε)``: float RGB NCHW in [0, 1] and noise of the same shape → the reconstruction in [0, 1]."""

    def __init__(self, channels: Sequence[int] = (16, 32, 48), blocks: Sequence[int] = (1, 1, 1), patch: int = 4,
                 input_size: int = 32, noise_t: int = NOISE_T) -> None:
        super().__init__()
        if not 0 <= noise_t < 1000:
            raise ValueError(f"noise_t is a DDPM step in [0, 1000), got {noise_t}")
        self.input_size, self.patch, self.noise_t = input_size, patch, int(noise_t)
        self.edgepure_config = {"channels": list(channels), "blocks": list(blocks), "patch": patch, "input_size": input_size,
                                "noise_t": int(noise_t)}
        self.register_buffer("masks", group_masks(input_size, patch), persistent=False)
        a = float(ddpm_alphas_bar()[noise_t])
        self.keep, self.noise_scale = a**0.5, (1 - a) ** 0.5
        self.unet = UNet(channels, blocks, mid_blocks=1, emb_dim=16, in_channels=7, out_channels=3)
        self.seam = nn.Conv2d(3, 3, 3, padding=1)
        nn.init.zeros_(self.seam.weight)
        nn.init.zeros_(self.seam.bias)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = 2.0 * x - 1.0
        noised = self.keep * y + self.noise_scale * noise
        m = self.masks[:, None]  # (4, 1, 1, H, W): group i of view i
        views = torch.cat([(y[None] * (1 - m)), noised[None] * m, m.expand(4, n, 1, h, w)], dim=2)
        views = views.reshape(4 * n, 7, h, w)
        rec = self.unet(views, torch.zeros(4 * n, dtype=x.dtype, device=x.device)).reshape(4, n, 3, h, w)
        out = (rec * m).sum(0)
        out = out + self.seam(out)
        return ((out + 1.0) / 2.0).clamp(0.0, 1.0)


@register_prior(pretrained_tag="impure_s_gtsrb")
def impure_s(**kw: object) -> ImpureNet:
    """IMPure reconstruction U-Net for 32×32 (16/32/48 channels, 4×4 patches in 4 interleaved groups)."""
    return ImpureNet(**kw)  # type: ignore[arg-type]


@register_prior()
def impure_xs(**kw: object) -> ImpureNet:
    """IMPure reconstruction U-Net, 8/16 channels: tiny, for tests."""
    cfg: dict[str, object] = {"channels": (8, 16), "blocks": (1, 1)}
    cfg.update(kw)
    return ImpureNet(**cfg)  # type: ignore[arg-type]
