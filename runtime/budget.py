"""The latency budget: use the strongest purifier variant that fits ``T`` ms per frame, on this device, now.

At start-up every variant is timed on the device (:func:`measure`). :class:`BudgetController` picks the
strongest whose median fits the budget, then watches the latency of the frames as they run: when the
median over a window rises above the budget (thermal throttling, another process on the GPU) it steps
down to the strongest variant predicted to fit; when the measured load would let the next stronger
variant fit with headroom to spare, it steps back up. Predictions scale the start-up costs by the load
the current variant shows (``observed / start-up``). The choice and every switch are logged.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from edgepure.runtime.bench import time_calls
from edgepure.runtime.errors import ConfigError

__all__ = ["BudgetController", "Switch", "measure"]

log = logging.getLogger("edgepure.runtime.budget")


@dataclass(frozen=True)
class Switch:
    frame: int
    old: str
    new: str
    reason: str


def measure(run: Callable[[], object], warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of ``run()`` in milliseconds, after ``warmup`` untimed calls."""
    return float(statistics.median(time_calls([run], warmup, repeats)[0]))


class BudgetController:
    """Chooses among variants (weakest first) with start-up costs ``costs`` (ms) for a budget of ``budget_ms``."""

    def __init__(self, names: Sequence[str], costs: Sequence[float], budget_ms: float, window: int = 20,
                 headroom: float = 0.9, logger: Optional[logging.Logger] = None) -> None:
        if len(names) != len(costs) or not names:
            raise ConfigError(f"need one start-up cost per variant, got {len(names)} names and {len(costs)} costs")
        if not (math.isfinite(budget_ms) and budget_ms > 0):
            raise ConfigError(f"the latency budget must be a positive number, got {budget_ms} ms")
        if window < 1 or not 0 < headroom <= 1:
            raise ConfigError(f"window must be ≥ 1 and headroom in (0, 1], got {window} and {headroom}")
        self.names, self.costs = list(names), [float(c) for c in costs]
        self.budget, self.window, self.headroom = float(budget_ms), window, headroom
        self.log = logger or log
        self.recent: deque[float] = deque(maxlen=window)
        self.switches: list[Switch] = []
        self.frame = 0
        fits = [i for i, c in enumerate(self.costs) if c <= self.budget]
        self.current = fits[-1] if fits else 0
        table = ", ".join(f"{n} {c:.2f} ms" for n, c in zip(self.names, self.costs))
        if fits:
            self.log.info("budget %.2f ms: measured %s; using %s", self.budget, table, self.names[self.current])
        else:
            self.log.warning("budget %.2f ms: no variant fits (measured %s); using the cheapest, %s",
                             self.budget, table, self.names[0])

    @property
    def name(self) -> str:
        return self.names[self.current]

    def observe(self, latency_ms: float) -> Optional[Switch]:
        """Record one frame's latency; return the switch it caused, if any."""
        self.frame += 1
        self.recent.append(float(latency_ms))
        if len(self.recent) < self.window:
            return None
        observed = statistics.median(self.recent)
        load = observed / self.costs[self.current] if self.costs[self.current] > 0 else 1.0
        target = self.current
        if observed > self.budget and self.current > 0:
            fitting = [i for i in range(self.current) if self.costs[i] * load <= self.budget]
            target = fitting[-1] if fitting else 0
            reason = f"median {observed:.2f} ms over the {self.budget:.2f} ms budget"
        elif self.current + 1 < len(self.costs) and self.costs[self.current + 1] * load <= self.headroom * self.budget:
            target = self.current + 1
            reason = (f"median {observed:.2f} ms; {self.names[target]} predicted "
                      f"{self.costs[target] * load:.2f} ms ≤ {self.headroom:.0%} of the budget")
        if target == self.current:
            return None
        switch = Switch(self.frame, self.names[self.current], self.names[target], reason)
        self.log.info("frame %d: %s → %s (%s)", switch.frame, switch.old, switch.new, reason)
        self.switches.append(switch)
        self.current = target
        self.recent.clear()
        return switch
