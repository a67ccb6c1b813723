"""Batched, seeded image augmentation in torch for [0, 1] NCHW batches.

Geometry (rotation, scale, shear, translation, mild perspective-like anisotropy), photometry (brightness,
contrast, saturation, gamma), and the natural perturbations purification deals with: Gaussian blur,
occluding patches, stickers and additive noise. Every draw comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment_batch", "gaussian_blur"]


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 12.0
    scale: tuple[float, float] = (0.85, 1.15)
    shear: float = 0.12
    aspect: float = 0.08
    translate_px: float = 2.5
    brightness: float = 0.35
    contrast: float = 0.35
    saturation: float = 0.35
    p_blur: float = 0.25
    blur_sigma: tuple[float, float] = (0.3, 1.3)
    p_occlude: float = 0.25
    occlude_px: tuple[int, int] = (4, 11)
    p_stickers: float = 0.0
    stickers: tuple[int, int] = (2, 6)  # how many stickers per image
    sticker_px: tuple[int, int] = (2, 5)  # side of one sticker in pixels
    p_noise: float = 0.25
    noise_std: float = 0.05

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(rotate_deg=0.0, scale=(1.0, 1.0), shear=0.0, aspect=0.0, translate_px=0.0, brightness=0.0,
                   contrast=0.0, saturation=0.0, p_blur=0.0, p_occlude=0.0, p_stickers=0.0, p_noise=0.0)


def _u(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, ksize: int = 7) -> torch.Tensor:
    """Blur each image of ``x`` (N×C×H×W) with its own Gaussian ``sigma`` (N,), reflect padding."""
    n, c, h, w = x.shape
    r = ksize // 2
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].clamp_min(1e-3)) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # N×k
    kx = k.repeat_interleave(c, dim=0).view(n * c, 1, 1, ksize)
    ky = k.repeat_interleave(c, dim=0).view(n * c, 1, ksize, 1)
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(F.conv2d(y, kx, groups=n * c), ky, groups=n * c)
    return y.view(n, c, h, w)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Augment a float batch in [0, 1]; returns a new tensor in [0, 1]."""
    n, _, h, w = x.shape
    # --- geometry: one affine per image, border-replicated sampling
    ang = _u(n, -cfg.rotate_deg, cfg.rotate_deg, g) * (math.pi / 180)
    sx = _u(n, *cfg.scale, g)
    sy = sx * _u(n, 1.0 - cfg.aspect, 1.0 + cfg.aspect, g)
    sh = _u(n, -cfg.shear, cfg.shear, g)
    tx = _u(n, -cfg.translate_px, cfg.translate_px, g) * (2.0 / w)
    ty = _u(n, -cfg.translate_px, cfg.translate_px, g) * (2.0 / h)
    cos, sin = torch.cos(ang), torch.sin(ang)
    # output→input mapping: inverse zoom (1/s) so s > 1 magnifies
    a11, a12 = cos / sx, (-sin + sh * cos) / sx
    a21, a22 = sin / sy, (cos + sh * sin) / sy
    theta = torch.stack([torch.stack([a11, a12, tx], 1), torch.stack([a21, a22, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # --- photometry
    b = 1.0 + _u(n, -cfg.brightness, cfg.brightness, g).view(n, 1, 1, 1)
    c = 1.0 + _u(n, -cfg.contrast, cfg.contrast, g).view(n, 1, 1, 1)
    s = 1.0 + _u(n, -cfg.saturation, cfg.saturation, g).view(n, 1, 1, 1)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * c + mean
    grey = y.mean(dim=1, keepdim=True)
    y = ((y - grey) * s + grey) * b
    y = y.clamp(0.0, 1.0)
    # --- blur
    if cfg.p_blur > 0:
        m = torch.rand(n, generator=g) < cfg.p_blur
        if m.any():
            sig = _u(int(m.sum()), *cfg.blur_sigma, g)
            y[m] = gaussian_blur(y[m], sig)
    # --- occluding patches with random colour
    if cfg.p_occlude > 0:
        m = (torch.rand(n, generator=g) < cfg.p_occlude).nonzero().flatten()
        lo, hi = cfg.occlude_px
        for i in m.tolist():
            ph = int(torch.randint(lo, hi + 1, (1,), generator=g))
            pw = int(torch.randint(lo, hi + 1, (1,), generator=g))
            r0 = int(torch.randint(0, h - ph + 1, (1,), generator=g))
            c0 = int(torch.randint(0, w - pw + 1, (1,), generator=g))
            y[i, :, r0 : r0 + ph, c0 : c0 + pw] = torch.rand(3, 1, 1, generator=g)
    # --- stickers: several small patches, mostly white/grey (the stickers people put on real signs)
    if cfg.p_stickers > 0:
        m = (torch.rand(n, generator=g) < cfg.p_stickers).nonzero().flatten()
        lo, hi = cfg.sticker_px
        for i in m.tolist():
            for _ in range(int(torch.randint(cfg.stickers[0], cfg.stickers[1] + 1, (1,), generator=g))):
                ph = int(torch.randint(lo, hi + 1, (1,), generator=g))
                pw = int(torch.randint(lo, hi + 1, (1,), generator=g))
                r0 = int(torch.randint(0, h - ph + 1, (1,), generator=g))
                c0 = int(torch.randint(0, w - pw + 1, (1,), generator=g))
                if float(torch.rand(1, generator=g)) < 0.7:
                    colour = (0.75 + 0.25 * torch.rand(1, generator=g)).expand(3).reshape(3, 1, 1)
                else:
                    colour = torch.rand(3, 1, 1, generator=g)
                y[i, :, r0 : r0 + ph, c0 : c0 + pw] = colour
    # --- additive noise
    if cfg.p_noise > 0:
        m = (torch.rand(n, generator=g) < cfg.p_noise).float().view(n, 1, 1, 1)
        std = _u(n, 0.0, cfg.noise_std, g).view(n, 1, 1, 1)
        y = y + m * std * torch.randn(y.shape, generator=g)
    return y.clamp(0.0, 1.0)
