"""Attacks over perturbation families (``Attack(model, **hp)(x, y) -> x_adv``), one module per attack."""

from edgepure.attacks.apgd import APGD
from edgepure.attacks.base import TRANSFERS, Attack
from edgepure.attacks.pgd import PGD
from edgepure.attacks.threat import DefendedModel, Threat, attack_target

__all__ = ["APGD", "PGD", "TRANSFERS", "Attack", "DefendedModel", "Threat", "attack_target"]
