"""A K-step purifier as three small modules — its start, ONE step and its finish — on flat tuples of tensors,
from which ``edgepure.export.compose`` builds the K-step ONNX graph: each piece is exported once and the step's
nodes are repeated K times in ONNX, its weights shared, instead of tracing and exporting all K steps.

The contract (:class:`Unrolled`):

- ``start(image, noise_1) -> (*context, *state)`` — ``noise_1 = noise[:, 0]``, step 1's noise
- ``step(*context, *state, noise_t, consts) -> state`` — ``noise_t = noise[:, t - 1]`` and ``consts`` =
  ``constants[t - 1]`` (1-D float32: the step's step sizes, bias corrections, …) for step t = 1 … K
- ``finish(*context, *state) -> purified image``

None of the three depends on K (the step's constants carry the schedule), so one export of each composes any K.
Composed, they compute exactly what the purifier's forward computes (the export's parity check holds them to it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Unrolled", "nappure_parts"]


@dataclass
class Unrolled:
    """See the module docstring. ``n_context`` and ``n_state`` count the tensors of each group."""

    start: nn.Module
    step: nn.Module
    finish: nn.Module
    n_context: int
    n_state: int
    constants: list[torch.Tensor]

    @property
    def steps(self) -> int:
        return len(self.constants)


# -- NAPPure ----------------------------------------------------------------------------------------------------

def _flat_state(state: Any, learn: list[str]) -> tuple[torch.Tensor, ...]:
    return (state.y, state.m_y, state.v_y, *(state.theta[k] for k in learn), *(state.m_t[k] for k in learn),
            *(state.v_t[k] for k in learn))


def _unflat_state(template: Any, flat: tuple[torch.Tensor, ...], learn: list[str]) -> Any:
    y, m_y, v_y, rest = flat[0], flat[1], flat[2], flat[3:]
    n = len(learn)
    return dataclasses.replace(template, y=y, m_y=m_y, v_y=v_y, theta=dict(zip(learn, rest[:n])),
                               m_t=dict(zip(learn, rest[n:2 * n])), v_t=dict(zip(learn, rest[2 * n:])))


class _NAPPurePiece(nn.Module):
    """Shared by the three pieces: the purifier and the layout of context and state."""

    def __init__(self, pur: nn.Module, ctx: Any, state: Any) -> None:
        super().__init__()
        self.pur = pur
        self.ctx, self.state = ctx, state  # templates: their tensors are replaced by the inputs
        self.fixed = [k for k in ctx.keys if k not in ctx.learn]

    def context(self, flat: tuple[torch.Tensor, ...]) -> Any:
        return dataclasses.replace(self.ctx, y_adv=flat[0], fixed=dict(zip(self.fixed, flat[1:])))


class _NAPPureStart(_NAPPurePiece):
    def forward(self, image: torch.Tensor, noise_1: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        ctx, state = self.pur.start(image, noise_1)  # type: ignore[operator]
        return (ctx.y_adv, *(ctx.fixed[k] for k in self.fixed), *_flat_state(state, ctx.learn))


class _NAPPureStep(_NAPPurePiece):
    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        learn = self.ctx.learn
        nc = 1 + len(self.fixed)
        ctx = self.context(args[:nc])
        state = _unflat_state(self.state, args[nc:-2], learn)
        noise_t, consts = args[-2], args[-1]
        lr_th = {k: consts[1 + i] for i, k in enumerate(learn)}
        with torch.enable_grad():
            new = self.pur.step(ctx, state, noise_t, consts[0], lr_th, consts[-2], consts[-1])  # type: ignore[operator]
        return _flat_state(new, learn)


class _NAPPureFinish(_NAPPurePiece):
    def forward(self, *args: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        nc = 1 + len(self.fixed)
        return self.pur.finish(self.context(args[:nc]), _unflat_state(self.state, args[nc:], self.ctx.learn))  # type: ignore[operator]


def nappure_parts(pur: Any, x: torch.Tensor) -> Unrolled:
    """NAPPure's start / step / finish for batches like ``x``; each step's constants are
    ``[lr_x, lr_θ of each learned θ entry, 1 − β₁ᵗ, 1 − β₂ᵗ]``."""
    with torch.no_grad():  # the layout of context and state (one dry start, on zero noise)
        ctx, state = pur.start(x, torch.zeros(pur.noise_shape(x)[0::2], dtype=x.dtype, device=x.device))
    learn = list(ctx.learn)
    lr_x = [float(v) for v in pur.step_sizes("x")]
    lr_th = [[float(v) for v in pur.step_sizes(pur.step_group(k))] for k in learn]
    consts = []
    for t in range(1, pur.cfg.steps + 1):
        bc1, bc2 = pur.bias_corrections(t)
        consts.append(torch.tensor([lr_x[t - 1], *(g[t - 1] for g in lr_th), bc1, bc2], dtype=torch.float32))
    pieces = [cls(pur, ctx, state) for cls in (_NAPPureStart, _NAPPureStep, _NAPPureFinish)]
    return Unrolled(*pieces, n_context=1 + len(pieces[0].fixed), n_state=3 + 3 * len(learn), constants=consts)
