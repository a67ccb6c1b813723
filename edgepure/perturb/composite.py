"""Any subset of families chained, each wrapped as ``w·f(x, θ) + (1 − w)·x`` (NAPPure-joint)."""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn

from edgepure.perturb.base import Params, Perturbation

__all__ = ["Composite"]


class Composite(Perturbation):
    """Families applied in order; parameters are namespaced ``"<family>.<param>"``.

    With ``learn_weights`` each family also has a mixing weight ``"<family>.w"`` in [0, 1] (initialised at
    ``init_weight``); without, the weights are 1 and the composite is the plain chain ``f_n ∘ … ∘ f_1``.
    At the identity of every family the composite is the identity whatever the weights.
    """

    name = "all"

    def __init__(self, families: Sequence[Perturbation], learn_weights: bool = False, init_weight: float = 0.5) -> None:
        super().__init__()
        names = [f.name for f in families]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"a composite needs distinct families, got {names}")
        self.families = nn.ModuleList(families)
        self.learn_weights = learn_weights
        self.init_weight = init_weight

    def _split(self, params: Params, fam: Perturbation) -> Params:
        prefix = fam.name + "."
        return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix) and k != prefix + "w"}

    def identity(self, x: torch.Tensor) -> Params:
        out: Params = {}
        for fam in self.families:
            out.update({f"{fam.name}.{k}": v for k, v in fam.identity(x).items()})
            if self.learn_weights:
                out[f"{fam.name}.w"] = torch.full((x.shape[0],), self.init_weight, dtype=x.dtype, device=x.device)
        return out

    def forward(self, x: torch.Tensor, params: Params) -> torch.Tensor:  # type: ignore[override]
        y = x
        for fam in self.families:
            z = fam(y, self._split(params, fam))
            if self.learn_weights:
                w = params[f"{fam.name}.w"].view(-1, 1, 1, 1)
                z = w * z + (1 - w) * y
            y = z
        return y

    @property
    def fixed(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(f"{fam.name}.{k}" for fam in self.families for k in fam.fixed)

    def penalties(self, params: Params) -> Dict[str, torch.Tensor]:
        """φ of each family (per sample), by family name."""
        return {fam.name: fam.penalty(self._split(params, fam)) for fam in self.families}

    def penalty(self, params: Params) -> torch.Tensor:
        return sum(self.penalties(params).values())  # type: ignore[return-value]

    def project(self, params: Params, x: torch.Tensor) -> Params:
        out: Params = {}
        for fam in self.families:
            out.update({f"{fam.name}.{k}": v for k, v in fam.project(self._split(params, fam), x).items()})
            if self.learn_weights:
                out[f"{fam.name}.w"] = params[f"{fam.name}.w"].clamp(0.0, 1.0)
        return out

    def radius(self) -> Dict[str, float]:
        r: Dict[str, float] = {}
        for fam in self.families:
            r.update({f"{fam.name}.{k}": v for k, v in fam.radius().items()})
            if self.learn_weights:
                r[f"{fam.name}.w"] = 0.5
        return r

    def random(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        out: Params = {}
        for fam in self.families:
            out.update({f"{fam.name}.{k}": v for k, v in fam.random(x, generator).items()})
            if self.learn_weights:
                out[f"{fam.name}.w"] = torch.rand(x.shape[0], generator=generator, dtype=x.dtype).to(x.device)
        return out
