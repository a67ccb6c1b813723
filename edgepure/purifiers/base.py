"""The purifier interface: an ``nn.Module`` mapping [0, 1] images to [0, 1] images of the same shape.

All randomness comes from an explicit ``noise`` input, so that a purification is reproducible and the
exported graph is static: ``forward(x, noise=None)`` draws fresh noise only when none is given, and
``sample_noise(x, generator)`` draws it from a seeded generator.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import nn

from edgepure.runtime.errors import ConfigError

__all__ = ["Purifier", "check_steps", "voted_calls"]


def check_steps(purifier: str, key: str, value: object) -> int:
    """A purifier's step count ``key``, which must be an integer ≥ 1: zero steps purify nothing (no defense is
    no purifier), and a stochastic purifier's graph would lose the noise input that the runtime feeds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{purifier}: {key} must be an integer ≥ 1, got {value!r}")
    return int(value)


def voted_calls(one_draw: dict[str, int], votes: int) -> dict[str, int]:
    """Network calls per crop of a pipeline that purifies R = ``votes`` times (``edgepure.export.voting``): every
    call of one draw × R, plus the R − 1 classifications beyond the one every pipeline makes."""
    calls = {k: v * votes for k, v in one_draw.items()}
    if votes > 1:
        calls["classifier"] = calls.get("classifier", 0) + votes - 1
    return calls


class Purifier(nn.Module):
    """Base class. Deterministic purifiers leave ``noise_shape`` returning None."""

    stochastic: bool = False
    # True where the gradient is zero almost everywhere (quantisation): a full-gradient attack sees nothing,
    # and the strongest white-box attack is BPDA (``--threat bpda``)
    masks_gradient: bool = False

    def noise_shape(self, x: torch.Tensor) -> Optional[tuple[int, ...]]:
        """The shape of the noise input for a batch like ``x`` (None: the purifier is deterministic)."""
        return None

    def sample_noise(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        shape = self.noise_shape(x)
        if shape is None:
            return None
        # drawn on the CPU (a CPU generator), then moved: the same seed gives the same noise on every device
        return torch.randn(shape, generator=generator, dtype=x.dtype).to(x.device)

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError

    def config(self) -> dict[str, object]:
        """The settings that define this purifier (recorded in results and manifests)."""
        return {}
