"""Adversarial frames for the camera loop's ``synth://?attack=…`` source (the torch side).

The attack is *blind*: APGD against the bare classifier (the attacker does not know the purifier), on
the rendered frames at the model's input size, each frame its highest-loss iterate (the attacks' default transfer,
what an attacker sends), then rounded to 8 bits as a camera would deliver them.
``edgepure run`` plugs :func:`frame_attack` into the source when torch is installed.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from edgepure.attacks.apgd import APGD
from edgepure.perturb import PERTURBATIONS, create_perturbation
from edgepure.runtime.errors import ConfigError

__all__ = ["frame_attack"]


def frame_attack(name: str, classifier: Optional[torch.nn.Module] = None, steps: int = 20, seed: int = 0,
                 size: int = 32) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``transform(images N×size×size×3 uint8, labels) -> adversarial images`` for attack family ``name``.

    ``size`` must be the classifier's input size: the perturbation is computed where the model sees it."""
    if name not in PERTURBATIONS:
        raise ConfigError(f"unknown attack {name!r} (expected one of {', '.join(PERTURBATIONS)})")
    if steps < 1:
        raise ConfigError(f"attack steps must be ≥ 1, got {steps}")
    if classifier is None:
        from edgepure.models.registry import load_classifier

        classifier = load_classifier()
    model = classifier.eval()
    want = int(getattr(model, "input_size", size))
    if size != want:
        raise ConfigError(f"attacked frames must be the classifier's input size {want}×{want}, got {size}×{size} "
                          f"(use synth://?size={want}&attack={name})")
    perturbation = create_perturbation(name, "gtsrb", image_size=size)
    for p in model.parameters():
        p.requires_grad_(False)

    def transform(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        if x.shape[-2:] != (size, size):
            raise ConfigError(f"attacked frames must be {size}×{size}, got {list(x.shape[-2:])}")
        attack = APGD(model, perturbation, steps=steps, seed=seed)
        x_adv = attack(x, y)
        out = (x_adv.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
        return np.ascontiguousarray(out.numpy())

    return transform
