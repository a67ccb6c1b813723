"""The four perturbation families of NAPPure: convolution (blur), occlusion (patch), flow (distortion),
additive. Each keeps its parameters in pixel units and its budget as an L∞ box around the identity."""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from edgepure.perturb.base import Params, Perturbation
from edgepure.perturb.warp import bilinear_sample

__all__ = ["Additive", "ConvBlur", "Flow", "Occlusion", "SoftMask", "gaussian_kernel1d"]


def gaussian_kernel1d(size: int, sigma: float) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


class ConvBlur(Perturbation):
    """``clamp(x ∗ k, 0, 1)``: one k×k kernel per image, applied to each channel (replicate padding).
    Identity: the Dirac kernel. Budget: ``‖k − δ‖∞ ≤ eps``. Prior: ``‖k − δ‖²``."""

    name = "conv"

    def __init__(self, kernel_size: int = 5, eps: Optional[float] = 0.025) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.kernel_size = kernel_size
        self.eps = eps
        dirac = torch.zeros(kernel_size, kernel_size)
        dirac[kernel_size // 2, kernel_size // 2] = 1.0
        self.register_buffer("dirac", dirac, persistent=False)

    def identity(self, x: torch.Tensor) -> Params:
        return {"kernel": self.dirac.to(x.dtype).expand(x.shape[0], -1, -1).clone()}

    def forward(self, x: torch.Tensor, params: Params) -> torch.Tensor:  # type: ignore[override]
        n, c, h, w = x.shape
        k = params["kernel"]
        r = self.kernel_size // 2
        weight = k.unsqueeze(1).repeat_interleave(c, dim=0)  # (N·C, 1, k, k)
        xp = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
        return F.conv2d(xp, weight, groups=n * c).view(n, c, h, w).clamp(0.0, 1.0)

    def penalty(self, params: Params) -> torch.Tensor:
        return ((params["kernel"] - self.dirac) ** 2).flatten(1).sum(1)

    def project(self, params: Params, x: torch.Tensor) -> Params:
        if self.eps is None:
            return params
        d = self.dirac
        return {"kernel": d + (params["kernel"] - d).clamp(-self.eps, self.eps)}

    def radius(self) -> Dict[str, float]:
        return {"kernel": self.eps if self.eps is not None else 0.1}


class Occlusion(Perturbation):
    """``x ⊙ (1 − m) + p ⊙ m`` with a square mask ``m`` of side ``size`` centred at ``center`` (pixels).

    The mask is the exact pixel coverage of the square, ``m = cov(u) · cov(v)`` with
    ``cov(u) = clamp(min(a + s/2, u + ½) − max(a − s/2, u − ½), 0, 1)``: a hard mask for integer-aligned
    squares, and piecewise-linear — hence differentiable almost everywhere — in the centre and the size.
    Identity: size 0 (or, with the geometry fixed, content equal to the image). Prior: ``|size|``. The attack's budget fixes the geometry (default 7×7 at the
    centre) and leaves the content free in [0, 1]; ``learn_geometry=True`` makes centre and size
    parameters too (NAPPure's purifier).
    """

    name = "patch"

    def __init__(self, size: float = 7.0, center: Optional[tuple[float, float]] = None, image_size: int = 32,
                 learn_geometry: bool = False) -> None:
        super().__init__()
        self.size = float(size)
        self.image_size = image_size
        top = (image_size - int(math.ceil(size))) // 2
        self.center = center if center is not None else (top + size / 2, top + size / 2)
        self.learn_geometry = learn_geometry
        coords = torch.arange(image_size, dtype=torch.float32) + 0.5
        self.register_buffer("coords", coords, persistent=False)

    @staticmethod
    def _coverage(coords: torch.Tensor, centre: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        lo = centre[:, None] - size[:, None] / 2
        hi = centre[:, None] + size[:, None] / 2
        return (torch.minimum(hi, coords + 0.5) - torch.maximum(lo, coords - 0.5)).clamp(0.0, 1.0)

    def mask(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.learn_geometry:
            centre, size = params["center"], params["size"]
        else:
            centre = torch.tensor(self.center, dtype=x.dtype, device=x.device).expand(n, 2)
            size = torch.full((n,), self.size, dtype=x.dtype, device=x.device)
        my = self._coverage(self.coords.to(x.dtype), centre[:, 0], size.abs())
        mx = self._coverage(self.coords.to(x.dtype), centre[:, 1], size.abs())
        return (my[:, :, None] * mx[:, None, :]).unsqueeze(1)

    def identity(self, x: torch.Tensor) -> Params:
        params: Params = {"content": x.detach().clone()}
        if self.learn_geometry:
            params["center"] = torch.tensor(self.center, dtype=x.dtype, device=x.device).expand(x.shape[0], 2).clone()
            params["size"] = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return params

    def forward(self, x: torch.Tensor, params: Params) -> torch.Tensor:  # type: ignore[override]
        m = self.mask(params, x)
        return x * (1 - m) + params["content"] * m

    def penalty(self, params: Params) -> torch.Tensor:
        if self.learn_geometry:
            return params["size"].abs()
        return torch.zeros(params["content"].shape[0], dtype=params["content"].dtype, device=params["content"].device)  # geometry fixed: no prior

    def project(self, params: Params, x: torch.Tensor) -> Params:
        out = dict(params)
        out["content"] = params["content"].clamp(0.0, 1.0)
        if self.learn_geometry:
            out["size"] = params["size"].clamp(0.0, float(self.image_size))
            out["center"] = params["center"].clamp(0.0, float(self.image_size))
        return out

    def radius(self) -> Dict[str, float]:
        r = {"content": 0.5}
        if self.learn_geometry:
            r.update(center=2.0, size=2.0)
        return r

    def random(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        params = self.identity(x)
        params["content"] = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return params


class SoftMask(Perturbation):
    """Free-form occlusion for purification: ``x ⊙ (1 − m) + c ⊙ m`` with a per-pixel mask
    ``m = sigmoid(logits)`` shared by the channels, and the content ``c`` held fixed (NAPPure sets it to
    the observed image: inside the mask the observation says nothing about ``x``, and ``c = x_adv`` is the
    maximum-likelihood content). Differentiable everywhere, and not tied to a square: stickers, graffiti
    and dirt are any shape. Prior ``φ = Σ m`` (the occluded area, the analogue of the square's size).
    ``identity`` starts every logit at ``init_logit`` (m ≈ 0.018 by default), so the mask starts almost empty.
    ``fixed`` names the parameters a purifier must not optimise.
    """

    name = "mask"
    fixed = ("content",)

    def __init__(self, init_logit: float = -4.0) -> None:
        super().__init__()
        self.init_logit = float(init_logit)

    def identity(self, x: torch.Tensor) -> Params:
        n, _, h, w = x.shape
        return {"logits": torch.full((n, 1, h, w), self.init_logit, dtype=x.dtype, device=x.device), "content": x.detach().clone()}

    def mask(self, params: Params) -> torch.Tensor:
        return torch.sigmoid(params["logits"])

    def forward(self, x: torch.Tensor, params: Params) -> torch.Tensor:  # type: ignore[override]
        m = self.mask(params)
        return x * (1 - m) + params["content"] * m

    def penalty(self, params: Params) -> torch.Tensor:
        return self.mask(params).flatten(1).sum(1)

    def radius(self) -> Dict[str, float]:
        return {"logits": 4.0}

    def random(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        params = self.identity(x)
        params["logits"] = params["logits"] + 4.0 * torch.rand(params["logits"].shape, generator=generator, dtype=x.dtype).to(x.device)
        return params


class Flow(Perturbation):
    """Bilinear warp by a per-pixel 2-D flow in pixels, smoothed by a Gaussian (``smooth_size``,
    ``sigma``) before use; border padding. Budget: ``‖flow‖∞ ≤ eps`` on the raw flow, which bounds the
    smoothed flow by the same ``eps`` (the Gaussian's weights are positive and sum to one).
    Prior: ``‖smoothed flow‖²``. Identity: zero."""

    name = "flow"

    def __init__(self, eps: Optional[float] = 1.2, smooth_size: int = 9, sigma: float = 1.5, image_size: int = 32) -> None:
        super().__init__()
        self.eps = eps
        self.smooth_size = smooth_size
        self.register_buffer("g1d", gaussian_kernel1d(smooth_size, sigma) if smooth_size > 1 else torch.ones(1),
                             persistent=False)
        ys = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size * 2 - 1
        gy, gx = torch.meshgrid(ys, ys, indexing="ij")
        self.register_buffer("base_grid", torch.stack([gx, gy], dim=-1)[None], persistent=False)
        self.image_size = image_size

    def smooth(self, flow: torch.Tensor) -> torch.Tensor:
        if self.smooth_size <= 1:
            return flow
        n = flow.shape[0]
        r = self.smooth_size // 2
        k = self.g1d.to(flow.dtype)
        y = F.pad(flow.reshape(n * 2, 1, *flow.shape[2:]), (r, r, r, r), mode="replicate")
        y = F.conv2d(y, k.view(1, 1, 1, -1))
        y = F.conv2d(y, k.view(1, 1, -1, 1))
        return y.view_as(flow)

    def identity(self, x: torch.Tensor) -> Params:
        n, _, h, w = x.shape
        return {"flow": torch.zeros(n, 2, h, w, dtype=x.dtype, device=x.device)}

    def forward(self, x: torch.Tensor, params: Params) -> torch.Tensor:  # type: ignore[override]
        f = self.smooth(params["flow"])  # (N, 2, H, W): (dx, dy) in pixels
        h, w = x.shape[2:]
        scale = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)
        grid = self.base_grid.to(x.dtype) + f.permute(0, 2, 3, 1) * scale
        return bilinear_sample(x, grid)  # = F.grid_sample(bilinear, border); differentiable to any order

    def penalty(self, params: Params) -> torch.Tensor:
        return (self.smooth(params["flow"]) ** 2).flatten(1).sum(1)

    def project(self, params: Params, x: torch.Tensor) -> Params:
        if self.eps is None:
            return params
        return {"flow": params["flow"].clamp(-self.eps, self.eps)}

    def radius(self) -> Dict[str, float]:
        return {"flow": self.eps if self.eps is not None else 1.0}


class Additive(Perturbation):
    """``clamp(x + δ, 0, 1)``. Budget: ``‖δ‖∞ ≤ eps`` (and ``x + δ`` in [0, 1]). Prior ``‖δ‖²``."""

    name = "additive"

    def __init__(self, eps: Optional[float] = 24 / 255) -> None:
        super().__init__()
        self.eps = eps

    def identity(self, x: torch.Tensor) -> Params:
        return {"delta": torch.zeros_like(x)}

    def forward(self, x: torch.Tensor, params: Params) -> torch.Tensor:  # type: ignore[override]
        return (x + params["delta"]).clamp(0.0, 1.0)

    def penalty(self, params: Params) -> torch.Tensor:
        return (params["delta"] ** 2).flatten(1).sum(1)

    def project(self, params: Params, x: torch.Tensor) -> Params:
        d = params["delta"]
        if self.eps is not None:
            d = d.clamp(-self.eps, self.eps)
        return {"delta": torch.maximum(torch.minimum(d, 1 - x), -x)}

    def radius(self) -> Dict[str, float]:
        return {"delta": self.eps if self.eps is not None else 0.1}
