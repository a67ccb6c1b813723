"""Image priors: small noise-conditional denoisers ``D(x; σ)`` with EDM preconditioning (Karras et al. 2022).

``D`` works on images in [−1, 1] (``σ_data = 0.5``) and a per-sample noise level ``σ`` (shape N):

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; ¼·ln σ)

with ``c_skip = σd²/(σ² + σd²)``, ``c_out = σ·σd/√(σ² + σd²)``, ``c_in = 1/√(σ² + σd²)``. The network ``F``
is a three-level U-Net (32 → 16 → 8 at 32×32) of residual blocks with GroupNorm, SiLU and a noise
embedding that scales and shifts the second normalisation. It is built for export and for gradients
inside the exported graph: no MaxPool, no attention, strided convolutions down and a nearest-neighbour
upsampling written as ``expand`` + ``reshape`` (its adjoint is a plain sum, so the vector-Jacobian
product through ``D`` decomposes into ops every ONNX back end runs).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgepure.models.registry import register_prior

__all__ = ["EDMDenoiser", "ddpm_alphas_bar", "edm_unet_s", "edm_unet_xs"]


def ddpm_alphas_bar(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t for t = 0..steps of the linear-β DDPM schedule (ᾱ_0 = 1), float64; with ``x_t = √ᾱ_t·x_0 +
    √(1 − ᾱ_t)·ε`` the EDM denoiser sees ``x_t/√ᾱ_t`` at ``σ = √((1 − ᾱ_t)/ᾱ_t)``."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels, eps=1e-5)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour ×2 upsampling as expand + reshape (no index ops, no scatter in the adjoint)."""
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """``F(x; c_noise)``: levels with ``channels[i]`` channels and ``blocks[i]`` residual blocks each way."""

    def __init__(self, channels: Sequence[int], blocks: Sequence[int], mid_blocks: int = 1,
                 emb_dim: int = 128, dropout: float = 0.0, in_channels: int = 3, out_channels: int | None = None) -> None:
        super().__init__()
        if len(channels) != len(blocks) or not channels:
            raise ValueError(f"channels and blocks need one entry per level, got {channels} and {blocks}")
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), emb_dim // 4)), persistent=False)
        self.emb = nn.Sequential(nn.Linear(emb_dim // 2, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        c = channels[0]
        for i, (ch, nb) in enumerate(zip(channels, blocks)):
            level = nn.ModuleList()
            for _ in range(nb):
                level.append(ResBlock(c, ch, emb_dim, dropout))
                c = ch
            self.enc.append(level)
            if i + 1 < len(channels):
                self.down.append(nn.Conv2d(c, channels[i + 1], 3, stride=2, padding=1))
                c = channels[i + 1]
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout) for _ in range(mid_blocks)])
        self.dec = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(len(channels))):
            ch = channels[i]
            level = nn.ModuleList()
            for _ in range(blocks[i]):
                level.append(ResBlock(c, ch, emb_dim, dropout))
                c = ch
            self.dec.append(level)
            if i > 0:
                self.up.append(nn.Conv2d(c, channels[i - 1], 3, padding=1))
                c = channels[i - 1]
        self.out_norm = _norm(c)
        self.out = nn.Conv2d(c, out_channels or in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise[:, None] * self.freqs[None, :]
        emb = self.emb(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1))
        h = self.inp(x)
        skips = []
        for i, level in enumerate(self.enc):
            for block in level:
                h = block(h, emb)
            skips.append(h)
            if i < len(self.down):
                h = self.down[i](h)
        for block in self.mid:
            h = block(h, emb)
        for j, level in enumerate(self.dec):
            h = h + skips[-1 - j]
            for block in level:
                h = block(h, emb)
            if j < len(self.up):
                h = self.up[j](upsample2x(h))
        return self.out(F.silu(self.out_norm(h)))


class EDMDenoiser(nn.Module):
    """``D(x; σ)`` on images in [−1, 1]; ``sigma`` is a tensor of shape (N,) or a float."""

    def __init__(self, channels: Sequence[int] = (32, 64, 96), blocks: Sequence[int] = (1, 2, 2), mid_blocks: int = 1,
                 emb_dim: int = 128, dropout: float = 0.0, sigma_data: float = 0.5, input_size: int = 32) -> None:
        super().__init__()
        self.sigma_data = float(sigma_data)
        self.input_size = input_size
        self.net = UNet(channels, blocks, mid_blocks, emb_dim, dropout)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
        s = sigma.to(x.dtype).reshape(-1)
        if s.shape[0] == 1 and x.shape[0] != 1:
            s = s.expand(x.shape[0])
        sd2 = self.sigma_data ** 2
        var = s * s + sd2
        c_skip = (sd2 / var).view(-1, 1, 1, 1)
        c_out = (s * self.sigma_data / var.sqrt()).view(-1, 1, 1, 1)
        c_in = var.rsqrt().view(-1, 1, 1, 1)
        return c_skip * x + c_out * self.net(c_in * x, s.log() / 4)


@register_prior(pretrained_tag="edm_unet_s_gtsrb")
def edm_unet_s(**kw: object) -> EDMDenoiser:
    """EDM denoiser U-Net, 32/64/96 channels, ≈1.5 M parameters: the GTSRB image prior."""
    return EDMDenoiser(**kw)  # type: ignore[arg-type]


@register_prior(pretrained_tag="edm_unet_s_restore_gtsrb")
def edm_unet_s_restore(**kw: object) -> EDMDenoiser:
    """edm_unet_s fine-tuned as a restoration prior: the clean sign from noised inputs with stickers or additive patterns."""
    return EDMDenoiser(**kw)  # type: ignore[arg-type]


@register_prior(pretrained_tag="edm_unet_s_guided_gtsrb")
def edm_unet_s_guided(**kw: object) -> EDMDenoiser:
    """edm_unet_s_restore fine-tuned on adversarial examples of the shipped classifier with a loss on its features."""
    return EDMDenoiser(**kw)  # type: ignore[arg-type]


@register_prior()
def edm_unet_xs(**kw: object) -> EDMDenoiser:
    """EDM denoiser U-Net, 16/32/32 channels: tiny, for tests and fixtures."""
    cfg: dict[str, object] = {"channels": (16, 32, 32), "blocks": (1, 1, 1), "mid_blocks": 1, "emb_dim": 32}
    cfg.update(kw)
    return EDMDenoiser(**cfg)  # type: ignore[arg-type]
