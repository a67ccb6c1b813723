"""Bilinear sampling written with separable one-hot interpolation matrices (Equal + MatMul, no gather, no
scatter), the same construction as the exported adjoint in ``edgepure.export.decompositions``.

Why not ``F.grid_sample``: NAPPure's adaptive attack differentiates *through* gradient steps that contain the
warp (a gradient of a gradient of ``grid_sample``), and PyTorch's vectorised CPU kernel for that path
(``at::native::ApplyGridSample<float, 2>``, torch 2.13) produced non-finite gradients and then a segfault
(docs/nappure.md). Built from matrix products, every derivative order is plain autograd, and the graph
exports to ops every backend has.
"""

from __future__ import annotations

import torch

__all__ = ["bilinear_sample", "onehot"]


def onehot(idx: torch.Tensor, size: int) -> torch.Tensor:
    """(…, P) integer-valued float positions → (…, P, size) one-hot rows (all zero outside [0, size))."""
    return (idx.unsqueeze(-1) == torch.arange(size, dtype=idx.dtype, device=idx.device)).to(idx.dtype)


def bilinear_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)`` for x of shape
    (N, C, H, W) and grid (N, Ho, Wo, 2) with (x, y) in [−1, 1]; differentiable in x and grid to any order
    (no gradient through a clipped coordinate, as in PyTorch's kernel)."""
    if x.dim() != 4 or grid.dim() != 4 or grid.shape[-1] != 2 or grid.shape[0] != x.shape[0]:
        raise ValueError(f"bilinear_sample: expected x (N, C, H, W) and grid (N, Ho, Wo, 2), got "
                         f"{tuple(x.shape)} and {tuple(grid.shape)}")
    n, c, h, w = x.shape
    ho, wo = grid.shape[1:3]
    p = ho * wo
    ix = (((grid[..., 0] + 1) * w - 1) / 2).reshape(n, p).clamp(0, w - 1)
    iy = (((grid[..., 1] + 1) * h - 1) / 2).reshape(n, p).clamp(0, h - 1)
    x0, y0 = ix.detach().floor(), iy.detach().floor()
    wx1, wy1 = ix - x0, iy - y0
    ax = (1 - wx1).unsqueeze(-1) * onehot(x0, w) + wx1.unsqueeze(-1) * onehot(x0 + 1, w)  # (N, P, W)
    ay = (1 - wy1).unsqueeze(-1) * onehot(y0, h) + wy1.unsqueeze(-1) * onehot(y0 + 1, h)  # (N, P, H)
    t = torch.matmul(x, ax.transpose(1, 2).unsqueeze(1))  # (N, C, H, P): rows interpolated at each x position
    return (t * ay.transpose(1, 2).unsqueeze(1)).sum(2).reshape(n, c, ho, wo)
