"""PGD (Madry et al. 2018) over a perturbation family's parameters: signed-gradient steps, projected."""

from __future__ import annotations

from typing import Any, Optional

import torch

from edgepure.attacks.base import Attack, _bcast
from edgepure.perturb import Params

__all__ = ["PGD"]


class PGD(Attack):
    """``step_size`` is relative to each parameter's budget radius (default ``2.5 / steps``)."""

    def __init__(self, model: Any, perturbation: Any = "additive", steps: int = 40,
                 step_size: Optional[float] = None, **kw: Any) -> None:
        super().__init__(model, perturbation, steps=steps, **kw)
        self.step_size = step_size if step_size is not None else max(2.5 / steps, 0.01)

    def _run(self, x: torch.Tensor, y: torch.Tensor, params: Params) -> tuple[Params, torch.Tensor, torch.Tensor]:
        radius = self.perturbation.radius()
        best = {k: v.clone() for k, v in params.items()}
        best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for i in range(self.steps + 1):
            loss, grad, logits = self.loss_and_grad(x, y, params)
            wrong = logits.argmax(1) != y
            take = self._better(loss, wrong, best_loss, fooled)
            best = {k: torch.where(_bcast(take, v), params[k], v) for k, v in best.items()}
            best_loss = torch.where(take, loss, best_loss)
            fooled |= wrong
            if i == self.steps:
                break
            params = {k: v + self.step_size * radius[k] * grad[k].sign() for k, v in params.items()}
            params = self.perturbation.project(params, x)
        return best, best_loss, fooled
