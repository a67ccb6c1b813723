"""Temporal smoothing of class probabilities over consecutive frames (one sign seen by a moving camera).

``p̄_t = α p_t + (1 − α) p̄_{t−1}``: α = 1 is no smoothing; smaller α trades reaction time for stability
(a single frame flipped by a perturbation no longer flips the answer). The state resets when the input
changes scene, e.g. a new file in a folder source.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from edgepure.runtime.errors import ConfigError

__all__ = ["TemporalSmoother"]


class TemporalSmoother:
    def __init__(self, alpha: float = 1.0) -> None:
        if not 0 < alpha <= 1:
            raise ConfigError(f"smoothing α must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.state: Optional[np.ndarray] = None

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """Smooth one frame's ``C`` (or ``1×C``) probabilities."""
        if self.state is None or self.alpha == 1.0 or self.state.shape != probs.shape:
            self.state = probs.astype(np.float64, copy=True)
        else:
            self.state = self.alpha * probs + (1 - self.alpha) * self.state
        return self.state

    def reset(self) -> None:
        self.state = None
