"""Forward-only decompositions of the backward ops that make_fx records, so that gradient steps unrolled
inside a purifier become plain ONNX (the ONNX function library has no ``*_backward`` ops).

See ``shared/notes/export-recipe.md``. Each entry is unit-tested against the native kernel in float64.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

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


def decomposition_table() -> dict[Any, Callable[..., Any]]:
    """Core ATen decompositions plus edgepure's forward-only backward decompositions."""
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = _conv_backward
    return table
