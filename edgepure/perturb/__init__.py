"""Perturbation models shared by the attacks and the purifiers (``edgepure.perturb``).

``create_perturbation(name, dataset)`` builds a family with the NAPPure protocol's budget for that data
set: conv 5×5 with ‖k − δ‖∞ ≤ 0.025; patch 7×7 at the centre, content free; flow ‖·‖∞ ≤ 1.2 px after a
9×9 Gaussian (σ 1.5); additive L∞ 24/255; ``all`` = the four at once. CIFAR-10: additive 8/255, flow 3 px
with 5×5 smoothing. Any budget can be overridden by keyword.
"""

from __future__ import annotations

from typing import Any

from edgepure.perturb.base import Params, Perturbation
from edgepure.perturb.composite import Composite
from edgepure.perturb.families import Additive, ConvBlur, Flow, Occlusion, SoftMask
from edgepure.runtime.errors import ConfigError

__all__ = [
    "Additive", "Composite", "ConvBlur", "Flow", "Occlusion", "PERTURBATIONS", "Params", "Perturbation", "SoftMask",
    "budget_dataset", "create_perturbation", "default_budgets",
]

PERTURBATIONS = ("conv", "patch", "flow", "additive", "all")

_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "gtsrb": {
        "conv": {"kernel_size": 5, "eps": 0.025},
        "patch": {"size": 7.0},
        "flow": {"eps": 1.2, "smooth_size": 9, "sigma": 1.5},
        "additive": {"eps": 24 / 255},
    },
    "cifar10": {
        "conv": {"kernel_size": 5, "eps": 0.025},
        "patch": {"size": 7.0},
        "flow": {"eps": 3.0, "smooth_size": 5, "sigma": 1.5},
        "additive": {"eps": 8 / 255},
    },
}
_CLASSES = {"conv": ConvBlur, "patch": Occlusion, "flow": Flow, "additive": Additive}


def budget_dataset(data: str) -> str:
    """The data set whose budgets apply to ``--data`` (a path or ``synth``): CIFAR-10's for a CIFAR-10 tree, else
    GTSRB's. Evaluation and adversarial training both use it, so that they mean the same threat."""
    from edgepure.data import dataset_kind

    return "cifar10" if dataset_kind(data) == "cifar10" else "gtsrb"


def default_budgets(dataset: str = "gtsrb") -> dict[str, dict[str, Any]]:
    if dataset not in _DEFAULTS:
        raise ConfigError(f"unknown data set {dataset!r} for perturbation budgets (expected {', '.join(_DEFAULTS)})")
    return {k: dict(v) for k, v in _DEFAULTS[dataset].items()}


def create_perturbation(name: str, dataset: str = "gtsrb", image_size: int = 32, **overrides: Any) -> Perturbation:
    """A perturbation family with the protocol budget of ``dataset``; ``overrides`` replace budget fields.

    For ``all``, overrides are given per family: ``create_perturbation("all", flow={"eps": 2.0})``.
    """
    budgets = default_budgets(dataset)
    if name == "all":
        fams = []
        for fam in ("patch", "flow", "conv", "additive"):  # sticker → viewing warp → optics → sensor
            kw = {**budgets[fam], **overrides.get(fam, {})}
            fams.append(_build(fam, kw, image_size))
        return Composite(fams, learn_weights=bool(overrides.get("learn_weights", False)))
    if name not in _CLASSES:
        raise ConfigError(f"unknown perturbation {name!r} (expected one of {', '.join(PERTURBATIONS)})")
    return _build(name, {**budgets[name], **overrides}, image_size)


def _build(name: str, kw: dict[str, Any], image_size: int) -> Perturbation:
    if name in ("patch", "flow"):
        kw = {**kw, "image_size": image_size}
    try:
        return _CLASSES[name](**kw)
    except TypeError as exc:
        raise ConfigError(f"bad budget for {name}: {exc}") from None
