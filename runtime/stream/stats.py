"""Latency statistics in constant memory: log-spaced histograms (1 % wide bins) per stage.

A camera loop can run for days; keeping every latency would grow without bound. Each stage keeps a
fixed histogram from 1 µs to 100 s, so p50/p95/p99 come out within 1 % whatever the run's length.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = ["LatencyHistogram", "StageStats"]

_LO_MS, _HI_MS, _GROWTH = 1e-3, 1e5, 1.01
_BINS = int(math.ceil(math.log(_HI_MS / _LO_MS) / math.log(_GROWTH))) + 1


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = np.zeros(_BINS, dtype=np.int64)
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        b = 0 if ms <= _LO_MS else min(_BINS - 1, int(math.log(ms / _LO_MS) / math.log(_GROWTH)) + 1)
        self.counts[b] += 1
        self.n += 1
        self.total += ms
        self.max = max(self.max, ms)

    def percentile(self, q: float) -> Optional[float]:
        """The ``q``-th percentile (0–100) in ms: the geometric centre of the bin that holds it."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q / 100 * self.n))
        b = int(np.searchsorted(np.cumsum(self.counts), rank))
        if b == 0:
            return _LO_MS
        return min(self.max, _LO_MS * _GROWTH ** (b - 0.5))

    def summary(self) -> dict[str, Optional[float]]:
        def r(v: Optional[float]) -> Optional[float]:
            return None if v is None else round(v, 3)

        return {"n": self.n, "mean_ms": r(self.total / self.n if self.n else None), "p50_ms": r(self.percentile(50)),
                "p95_ms": r(self.percentile(95)), "p99_ms": r(self.percentile(99)), "max_ms": r(self.max if self.n else None)}


class StageStats:
    """One histogram per named stage (``preprocess``, ``pipeline``, ``purifier``, ``classifier``, ``total`` …)."""

    def __init__(self) -> None:
        self.stages: dict[str, LatencyHistogram] = {}

    def add(self, timings: dict[str, float]) -> None:
        for name, ms in timings.items():
            self.stages.setdefault(name, LatencyHistogram()).add(ms)

    def summary(self) -> dict[str, dict[str, Optional[float]]]:
        return {name: h.summary() for name, h in self.stages.items()}
