"""The pieces every trainer shares: the learning-rate schedule, the exponential moving average (EMA) of the weights,
uint8 image arrays as tensors, and the random shift that augments the image networks' inputs."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

__all__ = ["ema_copy", "ema_update", "lr_at", "random_shift", "to_tensor"]


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps to ``base``, then cosine decay to 0 at step ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def ema_copy(model: torch.nn.Module, decay: float) -> torch.nn.Module | None:
    """A frozen copy of ``model`` that :func:`ema_update` averages into (None when ``decay`` is 0: no EMA)."""
    if decay <= 0:
        return None
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """Average ``model``'s weights into ``ema`` after optimiser step ``step``; buffers (BatchNorm statistics) are
    copied. The decay ramps up to ``decay`` over the first steps so that the random initialisation fades fast."""
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.mul_(d).add_(p.detach(), alpha=1.0 - d)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N×H×W×C images (uint8) as an N×C×H×W tensor of the same dtype."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def random_shift(x: torch.Tensor, px: int, g: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N×C×H×W) translated by up to ``px`` pixels per axis (reflect padding), draws from ``g``;
    ``px`` ≤ 0 returns ``x`` and draws nothing."""
    if px <= 0:
        return x
    n, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (px, px, px, px), mode="reflect")
    dy = torch.randint(0, 2 * px + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * px + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * px)
    x = xp.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return x.gather(3, cols)
