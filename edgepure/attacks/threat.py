"""Threat models for a defended pipeline purifier → classifier.

- ``blind``: the attacker differentiates the classifier alone; the result is scored through the defense.
- ``adaptive``: full gradients through the purifier (edgepure's purifiers are differentiable by
  construction), with fresh noise at every call so that the attack's EOT averages over it.
- ``bpda``: the purifier's backward pass replaced by the identity (Athalye et al. 2018), also with EOT.
"""

from __future__ import annotations

from enum import Enum
from typing import Optional

import torch
from torch import nn

from edgepure.purifiers.base import Purifier

__all__ = ["DefendedModel", "Threat", "attack_target"]


class Threat(str, Enum):
    blind = "blind"
    adaptive = "adaptive"
    bpda = "bpda"


class DefendedModel(nn.Module):
    """``classifier(purifier(x, noise))`` with noise from a seeded generator; ``bpda`` makes the purifier's
    backward the identity."""

    def __init__(self, purifier: Optional[Purifier], classifier: nn.Module, bpda: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier
        self.bpda = bpda
        self.generator = torch.Generator().manual_seed(seed)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        if self.purifier is None:
            return x
        noise = self.purifier.sample_noise(x, self.generator)
        xp = self.purifier(x, noise)
        return x + (xp - x).detach() if self.bpda else xp

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.classifier(self.purify(x))


def attack_target(threat: Threat, purifier: Optional[Purifier], classifier: nn.Module, seed: int = 0) -> nn.Module:
    """The model an attacker differentiates under ``threat``."""
    if threat is Threat.blind or purifier is None:
        return classifier
    return DefendedModel(purifier, classifier, bpda=threat is Threat.bpda, seed=seed)
