"""APGD-CE (Croce & Hein, ICML 2020) over a perturbation family's parameters.

Step-size-free PGD: momentum 0.75, per-sample step sizes that start at twice the budget radius and halve
at checkpoints when the loss stopped improving (fewer than 75 % of the steps since the last checkpoint
increased it, or the step size and the best loss are both unchanged), restarting from the best point.
Checkpoint spacing follows the paper (first at 22 % of the iterations, shrinking by 3 % down to 6 %).
"""

from __future__ import annotations

from typing import Any

import torch

from edgepure.attacks.base import Attack, _bcast
from edgepure.perturb import Params

__all__ = ["APGD"]


class APGD(Attack):
    def __init__(self, model: Any, perturbation: Any = "additive", steps: int = 100, rho: float = 0.75,
                 momentum: float = 0.75, **kw: Any) -> None:
        super().__init__(model, perturbation, steps=steps, **kw)
        self.rho, self.momentum = rho, momentum

    def _run(self, x: torch.Tensor, y: torch.Tensor, params: Params) -> tuple[Params, torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        p = self.perturbation
        radius = p.radius()
        n_iter = self.steps
        k = max(int(0.22 * n_iter), 1)
        k_min, k_decr = max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
        step = torch.full((n,), 2.0, device=x.device)  # relative to each parameter's radius

        loss, grad, logits = self.loss_and_grad(x, y, params)
        fooled = logits.argmax(1) != y
        best = {kk: v.clone() for kk, v in params.items()}
        best_adv = {kk: v.clone() for kk, v in params.items()}
        best_loss = loss.clone()
        best_grad = {kk: v.clone() for kk, v in grad.items()}
        loss_hist = torch.zeros(n_iter + 1, n, device=x.device)
        loss_hist[0] = loss
        prev = {kk: v.clone() for kk, v in params.items()}
        best_loss_ckpt = best_loss.clone()
        reduced_ckpt = torch.ones(n, dtype=torch.bool, device=x.device)
        since_ckpt, last_ckpt = 0, 0

        for i in range(n_iter):
            a = self.momentum if i > 0 else 1.0
            z = p.project({kk: v + _bcast(step, v) * radius[kk] * grad[kk].sign() for kk, v in params.items()}, x)
            new = p.project({kk: v + a * (z[kk] - v) + (1 - a) * (v - prev[kk]) for kk, v in params.items()}, x)
            prev, params = params, new
            loss, grad, logits = self.loss_and_grad(x, y, params)
            wrong = logits.argmax(1) != y
            newly = wrong & ~fooled
            best_adv = {kk: torch.where(_bcast(newly, v), params[kk], v) for kk, v in best_adv.items()}
            fooled |= wrong
            loss_hist[i + 1] = loss
            better = loss > best_loss
            best = {kk: torch.where(_bcast(better, v), params[kk], v) for kk, v in best.items()}
            best_grad = {kk: torch.where(_bcast(better, v), grad[kk], v) for kk, v in best_grad.items()}
            best_loss = torch.where(better, loss, best_loss)
            since_ckpt += 1
            if since_ckpt == k:
                window = loss_hist[last_ckpt : i + 2]
                increases = (window[1:] > window[:-1]).float().sum(0)
                oscillating = increases <= k * self.rho
                stalled = ~reduced_ckpt & (best_loss_ckpt >= best_loss)
                halve = oscillating | stalled
                reduced_ckpt = halve
                best_loss_ckpt = best_loss.clone()
                if bool(halve.any()):
                    step = torch.where(halve, step / 2, step)
                    params = {kk: torch.where(_bcast(halve, v), best[kk], v) for kk, v in params.items()}
                    grad = {kk: torch.where(_bcast(halve, v), best_grad[kk], v) for kk, v in grad.items()}
                last_ckpt = i + 1
                since_ckpt = 0
                k = max(k - k_decr, k_min)
        if self.transfer == "loss":
            return best, best_loss, fooled
        # "first": samples that were fooled at some iterate return that iterate, the others their best-loss point
        out = {kk: torch.where(_bcast(fooled, v), best_adv[kk], best[kk]) for kk, v in best.items()}
        return out, best_loss, fooled
