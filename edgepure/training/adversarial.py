"""Adversarial training of classifiers (``edgepure train classifier --adversarial conv,patch,flow,additive``).

Per batch the model being trained is attacked with the library's own attacks (PGD, or APGD-CE as ``edgepure eval
robust`` runs it) over each chosen perturbation family's parameters, at the budgets ``eval robust`` uses for the
data set (:func:`edgepure.perturb.budget_dataset`), so training and evaluation mean the same threat. While the
examples are crafted the model is in eval mode (BatchNorm normalises with, and does not update, its running
statistics, as at test time) and its weights are frozen (the attack needs input gradients only). Then it trains on the clean and the adversarial
images in one forward pass.

Several families (Tramèr & Boneh, NeurIPS 2019, "Adversarial training and robustness for multiple perturbations"):

- ``random``: every image is attacked with one family drawn at random, uniformly; in expectation the loss of their
  AVG strategy (the mean over families) at the cost of one attack per image;
- ``max``: every image is attacked with every family and trained on the one of highest loss (their MAX strategy);
  one attack per family and image.

Loss: ``(1 − w)·CE(clean) + w·CE(adversarial)`` (``adv_weight`` w), or with ``trades`` β > 0 TRADES (Zhang et al.,
ICML 2019): ``CE(clean) + β·KL(p(clean) ‖ p(adversarial))``, the attack maximising that KL instead of the CE.

Every random draw (the families per image, the attacks' random starts) comes from the epoch's seeded generator, so
a run is reproducible and ``--resume`` continues it exactly.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from edgepure.attacks import APGD, PGD
from edgepure.perturb import PERTURBATIONS, Params, create_perturbation
from edgepure.runtime.errors import ConfigError

__all__ = ["ADV_RESUME_KEYS", "ATTACKS", "Crafter", "STRATEGIES", "adversarial_loss",
           "check_adversarial", "draw_families", "parse_families", "pick_worst"]

STRATEGIES = ("random", "max")
ATTACKS = ("pgd", "apgd")
# settings that make a run a different run: --resume refuses to change them
ADV_RESUME_KEYS = ("adversarial", "adv_steps", "adv_strategy", "adv_weight", "trades", "adv_attack")


def parse_families(spec: str) -> tuple[str, ...]:
    """``"conv,flow"`` → ``("conv", "flow")``; ``""`` → ``()`` (no adversarial training). Unknown or repeated
    names are a :class:`ConfigError` naming the known ones."""
    if not spec.strip():
        return ()
    names = tuple(s.strip() for s in spec.split(","))
    bad = [s for s in names if s not in PERTURBATIONS]
    if bad:
        raise ConfigError(f"--adversarial: unknown perturbation famil{'ies' if len(bad) > 1 else 'y'} "
                          f"{', '.join(repr(b) for b in bad)} (expected a comma list of {', '.join(PERTURBATIONS)})")
    if len(set(names)) != len(names):
        raise ConfigError(f"--adversarial: each family once, got {spec!r}")
    return names


def check_adversarial(cfg: Any) -> tuple[str, ...]:
    """The families of ``cfg.adversarial`` after checking the other adversarial settings of a ``TrainConfig``."""
    families = parse_families(cfg.adversarial)
    if not families:
        return families
    if cfg.adv_steps < 1:
        raise ConfigError(f"--adv-steps must be ≥ 1, got {cfg.adv_steps}")
    if cfg.adv_strategy not in STRATEGIES:
        raise ConfigError(f"--adv-strategy must be one of {', '.join(STRATEGIES)}, got {cfg.adv_strategy!r}")
    if cfg.adv_attack not in ATTACKS:
        raise ConfigError(f"--adv-attack must be one of {', '.join(ATTACKS)}, got {cfg.adv_attack!r}")
    if cfg.trades < 0:
        raise ConfigError(f"--trades β must be ≥ 0, got {cfg.trades}")
    if cfg.trades > 0 and cfg.adv_weight is not None:
        raise ConfigError(f"--trades {cfg.trades:g} sets the loss CE(clean) + β·KL; --adv-weight {cfg.adv_weight:g} "
                          "belongs to the other loss, (1 − w)·CE(clean) + w·CE(adversarial): give one of the two")
    if cfg.trades > 0 and cfg.cutmix > 0:
        raise ConfigError("--trades compares each image with its own adversarial version, and --cutmix replaces the "
                          f"clean images with mixed ones: use one of the two (got --trades {cfg.trades:g} and "
                          f"--cutmix {cfg.cutmix:g})")
    if cfg.adv_weight is not None and not 0.0 <= cfg.adv_weight <= 1.0:
        raise ConfigError(f"--adv-weight must be in [0, 1], got {cfg.adv_weight}")
    return families


def draw_families(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """For each of ``n`` images the index of one of ``k`` families, uniformly, drawn from ``g``."""
    return torch.randint(0, k, (n,), generator=g)


def pick_worst(losses: torch.Tensor) -> torch.Tensor:
    """``losses`` (families × images) → per image the index of the family of highest loss (the first on ties)."""
    return losses.argmax(0)


@contextlib.contextmanager
def _crafting(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and frozen weights for the attack; the model's mode and flags are restored afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


class _KLObjective:
    """Replaces an attack's per-sample CE by ``KL(p(clean) ‖ p(x'))`` (TRADES); ``target`` holds the clean
    log-probabilities, set before each call."""

    target: torch.Tensor

    def loss_and_grad(self, x: torch.Tensor, y: torch.Tensor, params: Params
                      ) -> tuple[torch.Tensor, Params, torch.Tensor]:
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            logits = self.model(self.perturbation(x, leaves))  # type: ignore[attr-defined]
            loss = _kl(self.target, logits)
            g = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True)
        grads = {k: (gk.detach() if gk is not None else torch.zeros_like(v)) for (k, v), gk in zip(leaves.items(), g)}
        return loss.detach(), grads, logits.detach()


class _KLPGD(_KLObjective, PGD):
    pass


class _KLAPGD(_KLObjective, APGD):
    pass


def _kl(target_log_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per sample ``KL(p ‖ softmax(logits))`` with ``log p`` given."""
    return F.kl_div(F.log_softmax(logits, 1), target_log_probs, reduction="none", log_target=True).sum(1)


class Crafter:
    """Adversarial versions of training batches against ``model`` (the module itself, already on ``device``).

    ``crafter(x, y, g) -> (x_adv, family)``: ``x`` [0, 1] images on the CPU, ``x_adv`` their adversarial
    versions on the CPU and ``family`` the index into ``families`` each image was attacked with."""

    def __init__(self, model: torch.nn.Module, families: tuple[str, ...], dataset: str, image_size: int,
                 steps: int, strategy: str = "random", attack: str = "pgd", trades: bool = False,
                 device: str | torch.device = "cpu") -> None:
        self.model, self.families, self.steps = model, families, steps
        self.strategy, self.trades, self.device = strategy, trades, torch.device(device)
        self.perturbations = [create_perturbation(f, dataset, image_size=image_size).to(self.device) for f in families]
        plain, kl = (PGD, _KLPGD) if attack == "pgd" else (APGD, _KLAPGD)
        self.attack_cls = kl if trades else plain

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k, n = len(self.families), x.shape[0]
        # draws first, all of them whatever the batch holds: the generator's state never depends on the data
        family = draw_families(n, k, g) if self.strategy == "random" else torch.zeros(n, dtype=torch.long)
        # a family's attack seed depends on the family, not on its place in the list
        base = int(torch.randint(0, 2**31 - 1 - len(PERTURBATIONS), (1,), generator=g))
        seeds = [base + PERTURBATIONS.index(f) for f in self.families]
        xd, yd = x.to(self.device), y.to(self.device)
        with _crafting(self.model):
            target = F.log_softmax(self.model(xd), 1) if self.trades else None
            if self.strategy == "random":
                out = xd.clone()
                for i, seed in enumerate(seeds):
                    idx = (family == i).nonzero().flatten().to(self.device)
                    if len(idx):
                        out[idx] = self._attack(i, seed, xd[idx], yd[idx], target[idx] if target is not None else None)
                return out.cpu(), family
            cands = torch.stack([self._attack(i, seed, xd, yd, target) for i, seed in enumerate(seeds)])
            with torch.no_grad():
                losses = torch.stack([self._loss(c, yd, target) for c in cands])
            family = pick_worst(losses).cpu()
            return cands[family.to(self.device), torch.arange(n, device=self.device)].cpu(), family

    def _attack(self, i: int, seed: int, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        attack = self.attack_cls(self.model, self.perturbations[i], steps=self.steps, seed=seed)
        if target is not None:
            attack.target = target
        return attack(x, y).detach()

    def _loss(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The attack's objective per image: what ``max`` ranks the families by."""
        logits = self.model(x)
        return _kl(target, logits) if target is not None else F.cross_entropy(logits, y, reduction="none")


def adversarial_loss(clean_loss: torch.Tensor, logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor,
                     weight: float | None, trades: float, label_smoothing: float) -> torch.Tensor:
    """The training loss from the clean loss (CE, CutMix's split included) and the adversarial logits:
    TRADES with ``trades`` β > 0, else ``(1 − w)·clean + w·CE(adversarial)`` (w = ``weight``, 0.5 when None)."""
    if trades > 0:
        kl = F.kl_div(F.log_softmax(adv_logits, 1), F.log_softmax(logits, 1), reduction="batchmean", log_target=True)
        return clean_loss + trades * kl
    w = 0.5 if weight is None else weight
    return (1.0 - w) * clean_loss + w * F.cross_entropy(adv_logits, y, label_smoothing=label_smoothing)
