"""Forward-only decompositions of the backward ops that make_fx records, so that gradient steps unrolled
inside a purifier become plain ONNX (the ONNX function library has no ``*_backward`` ops).

See ``shared/notes/export-recipe.md``. Each entry is unit-tested against the native kernel in float64.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from edgepure.perturb.warp import onehot as _onehot

__all__ = ["decomposition_table"]

aten = torch.ops.aten


def _conv_backward(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias_sizes: Any, stride: list[int],
                   padding: list[int], dilation: list[int], transposed: bool, output_padding: list[int], groups: int,
                   mask: list[bool]) -> tuple[Any, Any, Any]:
    if transposed or w.dim() != 4:
        raise NotImplementedError("only 2-D, non-transposed convolution backward is decomposed")
    gx = gw = gb = None
    if mask[0]:
        out_pad = [
            x.shape[2 + i] - ((grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (w.shape[2 + i] - 1) + 1)
            for i in range(2)
        ]
        gx = F.conv_transpose2d(grad_out, w, None, stride, padding, out_pad, groups, dilation)
    if mask[1]:
        # weight gradient: correlate the input with the output gradient, one group at a time
        n, cin, h, wd = x.shape
        cout, (ph, pw) = grad_out.shape[1], grad_out.shape[2:]
        g = groups
        # batch and channels swap roles: the input's channels become the batch, the output gradient the weight
        xg = x.reshape(n, g, cin // g, h, wd).permute(2, 1, 0, 3, 4).reshape(cin // g, g * n, h, wd)
        wg = grad_out.reshape(n, g, cout // g, ph, pw).permute(1, 2, 0, 3, 4).reshape(cout, n, ph, pw)
        gw_full = F.conv2d(xg, wg, None, stride=dilation, padding=padding, dilation=stride, groups=g)
        kh, kw = w.shape[2:]
        gw = gw_full[..., :kh, :kw].transpose(0, 1).contiguous()
    if mask[2]:
        gb = grad_out.sum(dim=(0, 2, 3))
    return gx, gw, gb


def _replication_pad2d_backward(grad_out: torch.Tensor, x: torch.Tensor, padding: list[int]) -> torch.Tensor:
    """Fold the gradient of the replicated border back onto the edge rows and columns."""
    left, right, top, bottom = padding
    h, w = x.shape[-2:]

    def fold(g: torch.Tensor, lo: int, n: int, dim: int) -> torch.Tensor:
        if n == 1:
            return g.sum(dim, keepdim=True)
        first = g.narrow(dim, 0, lo + 1).sum(dim, keepdim=True)
        last = g.narrow(dim, lo + n - 1, g.shape[dim] - (lo + n - 1)).sum(dim, keepdim=True)
        return torch.cat([first, g.narrow(dim, lo + 1, n - 2), last], dim=dim)

    return fold(fold(grad_out, left, w, -1), top, h, -2)


def _grid_sampler_2d_backward(grad_out: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, interpolation_mode: int,
                              padding_mode: int, align_corners: bool, mask: list[bool]) -> tuple[Any, Any]:
    """Bilinear grid-sample adjoint with separable one-hot interpolation matrices (Equal + MatMul, no scatter)."""
    if interpolation_mode != 0 or padding_mode not in (0, 1):
        raise NotImplementedError("only bilinear grid_sample with zeros or border padding is decomposed")
    n, c, h, w = x.shape
    ho, wo = grid.shape[1:3]
    p = ho * wo
    gx, gy = grid[..., 0].reshape(n, p), grid[..., 1].reshape(n, p)

    def unnormalise(g: torch.Tensor, size: int) -> tuple[torch.Tensor, Any]:
        if align_corners:
            pos, scale = (g + 1) * (size - 1) / 2, (size - 1) / 2
        else:
            pos, scale = ((g + 1) * size - 1) / 2, size / 2
        if padding_mode == 1:  # border: clip, and no gradient where clipped (as PyTorch's kernel)
            inside = ((pos > 0) & (pos < size - 1)).to(g.dtype)
            return pos.clamp(0, size - 1), scale * inside
        return pos, scale

    ix, sx = unnormalise(gx, w)
    iy, sy = unnormalise(gy, h)
    x0, y0 = ix.floor(), iy.floor()
    wx1, wy1 = ix - x0, iy - y0
    wx0, wy0 = 1 - wx1, 1 - wy1
    ax0, ax1 = _onehot(x0, w), _onehot(x0 + 1, w)  # (N, P, W)
    ay0, ay1 = _onehot(y0, h), _onehot(y0 + 1, h)  # (N, P, H)
    g = grad_out.reshape(n, c, p)
    gi = gg = None
    if mask[0]:
        ax = wx0.unsqueeze(-1) * ax0 + wx1.unsqueeze(-1) * ax1
        ay = wy0.unsqueeze(-1) * ay0 + wy1.unsqueeze(-1) * ay1
        b = g.unsqueeze(2) * ay.transpose(1, 2).unsqueeze(1)  # (N, C, H, P)
        gi = torch.matmul(b, ax.unsqueeze(1))  # (N, C, H, W)
    if mask[1]:
        def corner(ay_: torch.Tensor, ax_: torch.Tensor) -> torch.Tensor:  # values at one corner: (N, C, P)
            t = torch.matmul(x, ax_.transpose(1, 2).unsqueeze(1))  # (N, C, H, P)
            return (t * ay_.transpose(1, 2).unsqueeze(1)).sum(2)

        v00, v01, v10, v11 = corner(ay0, ax0), corner(ay0, ax1), corner(ay1, ax0), corner(ay1, ax1)
        dx = (wy0.unsqueeze(1) * (v01 - v00) + wy1.unsqueeze(1) * (v11 - v10))
        dy = (wx0.unsqueeze(1) * (v10 - v00) + wx1.unsqueeze(1) * (v11 - v01))
        ggx = (g * dx).sum(1) * sx
        ggy = (g * dy).sum(1) * sy
        gg = torch.stack([ggx, ggy], dim=-1).reshape(n, ho, wo, 2)
    return gi, gg


def decomposition_table() -> dict[Any, Callable[..., Any]]:
    """Core ATen decompositions plus edgepure's forward-only backward decompositions."""
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = _conv_backward
    table[aten.replication_pad2d_backward.default] = _replication_pad2d_backward
    table[aten.grid_sampler_2d_backward.default] = _grid_sampler_2d_backward
    return table
