"""Resubmission: a stochastic pipeline scored on several fresh noise draws of each image (``eval robust --resubmit``).

A purifier that draws noise reads an image differently on every call, and an attacker gets many calls: a car's
camera delivers the same sign on frame after frame. Scored on one draw, a defense is credited with every lucky draw.
With R draws an image counts as read right only if it is read right on **every** draw (the figure the tables report),
and the result also gives the **majority** over the R draws (the class read most often is the right one; a tie
counts as a misreading) — what a camera loop that votes over frames sees.

Draw 0 of a batch is the noise of the single-draw run (seed + the batch's offset), so one draw reproduces the scoring
of a run without resubmission and its cached readings.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from edgepure.evaluate.cache import AdvCache, shared_scores
from edgepure.runtime.errors import ConfigError

__all__ = ["STOCHASTIC_EOT", "STOCHASTIC_RESUBMIT", "default_eot", "default_resubmit", "draw_seed", "drawn_readings",
           "right_by_majority", "right_on_every_draw"]

STOCHASTIC_RESUBMIT = 5  # noise draws per image for a stochastic pipeline when none are asked
STOCHASTIC_EOT = 4  # gradient samples per step of an adaptive attack on a stochastic pipeline when none are asked
# draws r ≥ 1 take seeds far from every batch's draw 0 (seed + offset), inside the 32 bits a CPU generator's seed keeps
_DRAW_STRIDE = 0x9E3779B1


def is_stochastic(purifier: Any) -> bool:
    return purifier is not None and bool(getattr(purifier, "stochastic", False))


def default_resubmit(purifier: Any, resubmit: Optional[int]) -> int:
    """Noise draws per scored image: ``resubmit`` if given, else 5 for a stochastic pipeline and 1 for another (its
    draws would all read the same)."""
    if resubmit is None:
        return STOCHASTIC_RESUBMIT if is_stochastic(purifier) else 1
    if isinstance(resubmit, bool) or not isinstance(resubmit, int) or resubmit < 1:
        raise ConfigError(f"resubmit must be ≥ 1 noise draws per image, got {resubmit!r}")
    return resubmit


def default_eot(attacked: Any, eot: Optional[int]) -> tuple[int, int]:
    """Gradient samples per step for the blind and the adaptive threats: ``eot`` for both if given; else one for the
    blind threat (it differentiates the deterministic classifier) and, for the adaptive threats, 4 where the purifier
    they differentiate is stochastic (one draw's gradient is one sample of the noise), 1 where it is not."""
    if eot is not None:
        if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
            raise ConfigError(f"eot must be ≥ 1 gradient samples per step, got {eot!r}")
        return eot, eot
    return 1, STOCHASTIC_EOT if is_stochastic(attacked) else 1


def draw_seed(base: int, draw: int) -> int:
    """The seed of noise draw ``draw`` of a batch whose single-draw seed is ``base`` (draw 0: ``base`` itself)."""
    return base if draw == 0 else (base + draw * _DRAW_STRIDE) % 2**32


def right_on_every_draw(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image (``preds`` draws × N): read right on every draw."""
    return (np.asarray(preds) == np.asarray(labels)[None]).all(0)


def right_by_majority(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image (``preds`` draws × N): the right class got more of the draws than any other class."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    right = (preds == labels[None]).sum(0)
    rival = np.zeros_like(right)  # the most draws any wrong class got
    for row in preds:
        votes = (preds == row[None]).sum(0)
        rival = np.maximum(rival, np.where(row != labels, votes, 0))
    return right > rival


def drawn_readings(scores: AdvCache, batches: Iterable[tuple[int, torch.Tensor]], seed: int, draws: int,
                   key_of: Callable[[int, torch.Tensor], str], read: Callable[[int, torch.Tensor], np.ndarray],
                   on_wait: Optional[Callable[[int], None]] = None) -> Iterator[tuple[int, np.ndarray]]:
    """Per batch ``(offset, predictions draws × b)``, as soon as every draw of it is read: ``read(noise seed, images)``
    for each draw, each kept in ``scores`` under ``key_of(noise seed, images)`` (:func:`shared_scores`: read back, or
    shared with other processes)."""
    pending: dict[int, dict[int, np.ndarray]] = {}

    def items() -> Iterator[tuple[Any, torch.Tensor]]:
        for s, x in batches:
            for r in range(draws):
                yield (s, r), x

    def noise_seed(item: Any) -> int:
        return draw_seed(seed + item[0], item[1])

    waiting = None if on_wait is None else (lambda item: on_wait(item[0]))
    for (s, r), pred in shared_scores(scores, items(), lambda i, x: key_of(noise_seed(i), x),  # type: ignore[arg-type]
                                      lambda i, x: read(noise_seed(i), x), on_wait=waiting):  # type: ignore[arg-type]
        got = pending.setdefault(s, {})
        got[r] = np.asarray(pred)
        if len(got) == draws:
            del pending[s]
            yield s, np.stack([got[k] for k in range(draws)])
