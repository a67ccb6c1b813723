"""What the attacks share: the call shape, EOT gradients, restarts and keeping the best iterate.

``Attack(model, perturbation=..., **hp)(x, y) -> x_adv``: ``model`` maps [0, 1] images to logits (a bare
classifier, or a defended pipeline from :mod:`edgepure.attacks.threat`); the attack searches the
perturbation family's parameters inside its budget. ``attack.params`` holds the parameters found.

``transfer`` says which iterate an image returns:

- ``"loss"`` (the default): the highest-loss iterate over every step and restart. This is what an attacker who
  cannot see the deployed model sends it (the blind threat): an example that only just fools the classifier is
  the easiest thing for a purifier to undo, one deep in the wrong class is not.
- ``"first"``: the iterate that first fooled ``model`` (PGD: the highest-loss one among those that fooled it), the
  highest-loss one for an image never fooled; restarts stop once every image is fooled. Right where the attacked
  model is the one that scores the example (AutoAttack's convention): an iterate that fools it is a success, while
  the highest cross-entropy need not be a misreading.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from edgepure.perturb import Params, Perturbation, create_perturbation
from edgepure.runtime.errors import ConfigError

__all__ = ["TRANSFERS", "Attack", "check_transfer"]

TRANSFERS = ("loss", "first")


class Attack:
    """Base class. Subclasses implement ``_run(x, y, params0) -> (best params, adversarial mask)``."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        perturbation: Perturbation | str = "additive",
        steps: int = 100,
        restarts: int = 1,
        eot: int = 1,
        seed: int = 0,
        random_init: bool = True,
        dataset: str = "gtsrb",
        transfer: str = "loss",
    ) -> None:
        if steps < 1 or restarts < 1 or eot < 1:
            raise ConfigError(f"steps, restarts and eot must be ≥ 1, got {steps}, {restarts}, {eot}")
        check_transfer(transfer)
        self.model = model
        self.perturbation = (
            create_perturbation(perturbation, dataset) if isinstance(perturbation, str) else perturbation
        )
        self.steps, self.restarts, self.eot, self.seed = steps, restarts, eot, seed
        self.random_init = random_init
        self.transfer = transfer
        self.params: Optional[Params] = None

    # -- gradients ---------------------------------------------------------------------------------
    def loss_and_grad(
        self, x: torch.Tensor, y: torch.Tensor, params: Params
    ) -> tuple[torch.Tensor, Params, torch.Tensor]:
        """Per-sample CE loss and its gradient w.r.t. the parameters, averaged over ``eot`` model calls;
        also the logits of the last call."""
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        total = torch.zeros(x.shape[0], device=x.device)
        grads = {k: torch.zeros_like(v) for k, v in leaves.items()}
        logits = torch.empty(0)
        for _ in range(self.eot):
            with torch.enable_grad():
                logits = self.model(self.perturbation(x, leaves))
                loss = F.cross_entropy(logits, y, reduction="none")
                g = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True)
            total += loss.detach()
            for (k, _), gk in zip(leaves.items(), g):
                if gk is not None:
                    grads[k] += gk.detach()
        inv = 1.0 / self.eot
        return total * inv, {k: v * inv for k, v in grads.items()}, logits.detach()

    def init_params(self, x: torch.Tensor, generator: torch.Generator) -> Params:
        p = self.perturbation
        return p.random(x, generator) if self.random_init else p.project(p.identity(x), x)

    # -- the call --------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[0] != y.shape[0]:
            raise ConfigError(f"expected images N×C×H×W and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
        x = x.detach()
        self.perturbation.to(x.device)  # its constant buffers (a Dirac kernel, pixel grids) follow the images
        generator = torch.Generator().manual_seed(self.seed)  # random starts drawn on the CPU, on every device
        best: Optional[Params] = None
        best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            params, loss, fooled = self._run(x, y, self.init_params(x, generator))
            take = self._better(loss, fooled, best_loss, found)
            if best is None:
                best = params
            else:
                best = {k: torch.where(_bcast(take, v), params[k], v) for k, v in best.items()}
            best_loss = torch.where(take, loss, best_loss)
            found |= fooled
            if self.transfer == "first" and bool(found.all()):
                break
        assert best is not None
        self.params = best
        with torch.no_grad():
            return self.perturbation(x, best).clamp(0.0, 1.0)

    def _run(self, x: torch.Tensor, y: torch.Tensor, params: Params) -> tuple[Params, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _better(self, loss: torch.Tensor, wrong: torch.Tensor, best_loss: torch.Tensor,
                fooled: torch.Tensor) -> torch.Tensor:
        """Which images take a new point (``loss``, ``wrong``) over the one kept (``best_loss``, ``fooled``): the higher
        loss; under ``"first"`` a point that fools the model first, then among equals the higher loss."""
        if self.transfer == "loss":
            return loss > best_loss
        return (wrong & ~fooled) | ((wrong == fooled) & (loss > best_loss))


def check_transfer(transfer: str, option: str = "transfer") -> str:
    """``transfer`` if it is one of :data:`TRANSFERS`, else a user error naming the setting ``option``."""
    if transfer not in TRANSFERS:
        raise ConfigError(f"{option} must be one of {', '.join(TRANSFERS)}, got {transfer!r}")
    return transfer


def _bcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.ndim - 1)))
