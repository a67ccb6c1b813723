"""Evaluation: clean accuracy, and robust accuracy per attack and threat model (``benchmark``).

The torch side only: importing this package imports torch.
"""

from edgepure.evaluate.clean import evaluate_clean, predict
from edgepure.evaluate.robust import benchmark, surrogate_of

__all__ = ["benchmark", "evaluate_clean", "predict", "surrogate_of"]
