"""The interface every perturbation family implements.

A family is a differentiable, batched generation model ``f(x, θ)`` with parameters ``θ`` (a dict of
tensors whose first axis is the batch), an identity element ``θ₀`` (``f(x, θ₀) = x``), a prior penalty
``φ(θ)`` that is zero at the identity, and — when it has a budget — a projection onto that budget.
Attacks maximise a loss over ``θ`` inside the budget; NAPPure's purifiers minimise a posterior over
``(x, θ)`` with ``φ`` as the prior. Images are float NCHW in [0, 1].
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

__all__ = ["Params", "Perturbation"]

Params = Dict[str, torch.Tensor]


class Perturbation(nn.Module):
    """Base class: subclasses define ``identity``, ``forward``, ``penalty``, ``project`` and ``radius``."""

    name: str = "perturbation"
    fixed: tuple[str, ...] = ()  # parameters that are data, not variables (a purifier does not optimise them)

    def identity(self, x: torch.Tensor) -> Params:
        """Parameters at which ``forward(x, θ) == x``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, params: Params) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError

    def penalty(self, params: Params) -> torch.Tensor:
        """Prior energy φ(θ) per sample (shape N), zero at the identity."""
        raise NotImplementedError

    def project(self, params: Params, x: torch.Tensor) -> Params:
        """The nearest parameters inside the budget (identity for an unconstrained family)."""
        return params

    def radius(self) -> Dict[str, float]:
        """Per parameter, the L∞ radius of the budget box (attack step sizes scale with it)."""
        raise NotImplementedError

    def random(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        """Uniformly random parameters inside the budget box around the identity (attack initialisation)."""
        params = self.identity(x)
        out: Params = {}
        for k, v in params.items():
            r = self.radius().get(k, 0.0)
            noise = ((torch.rand(v.shape, generator=generator, dtype=v.dtype) * 2 - 1) * r).to(v.device)  # CPU draws
            out[k] = v + noise
        return self.project(out, x)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.radius().items())
