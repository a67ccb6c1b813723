"""Purify → classify, and R-vote majority over R purifications batched on the batch axis.

A stochastic purifier's answer varies with its noise; "Divide and Conquer" (arXiv 2503.01407) purifies R
times and takes the majority class. :func:`pipeline_module` builds the deployed pipeline for a purifier:
``classifier(purifier(x, noise))`` when its ``votes`` setting is 1, else :class:`Voting`, which repeats the
batch R times (one static graph: batch R·N through purifier and classifier), counts each class's votes
and returns

    log((votes_c + p̄_c) / (R + 1))

as its logits: the argmax is the majority class, ties broken by the mean softmax p̄ (which cannot overturn
a majority: p̄_c < 1); softmax of the output is the vote share (with p̄ counted as one more vote), a
calibrated-looking confidence for the runtime's top-k; and the gradient (through p̄ only; counts are
piecewise constant) is the R-sample EOT gradient of the mean softmax, so an attacker differentiating the
deployed graph still gets a useful signal. Counting uses ``Equal`` against the row max (no ArgMax/OneHot in
the graph), which TensorRT and ONNX Runtime run natively.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from edgepure.runtime.errors import ConfigError

__all__ = ["FusedPipeline", "Voting", "pipeline_module", "repeat_draws", "vote_logits"]


class _Pipeline(nn.Module):
    """A purifier in front of a classifier; the noise input's shape comes from ``noise_shape``."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.purifier, self.classifier = purifier, classifier

    def noise_shape(self, x: torch.Tensor) -> Optional[tuple[int, ...]]:
        return self.purifier.noise_shape(x)  # type: ignore[operator,no-any-return]

    def sample_noise(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        shape = self.noise_shape(x)
        return None if shape is None else torch.randn(shape, generator=generator, dtype=x.dtype).to(x.device)


class FusedPipeline(_Pipeline):
    """``classifier(purifier(image, noise))`` as one module: image (and noise) in, logits out."""

    def forward(self, image: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        return self.classifier(self.purifier(image, noise))


def repeat_draws(image: torch.Tensor, noise: torch.Tensor, votes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The R·N images and noise draws (``noise``: ``(R, N, …)``) the purifier sees, draw-major."""
    r, n = votes, image.shape[0]
    xr = image.unsqueeze(0).expand(r, *image.shape).reshape(r * n, *image.shape[1:])
    return xr, noise.reshape(r * n, *noise.shape[2:])


def vote_logits(logits: torch.Tensor, votes: int) -> torch.Tensor:
    """``(R·N, C)`` logits of R draws (draw-major) → ``(N, C)`` log vote shares (see the module docstring)."""
    if logits.ndim != 2 or logits.shape[0] % votes:
        raise ValueError(f"expected (R·N, C) logits with R = {votes}, got shape {tuple(logits.shape)}")
    lg = logits.reshape(votes, logits.shape[0] // votes, logits.shape[1])
    counts = (lg == lg.amax(dim=-1, keepdim=True)).to(lg.dtype).sum(0)
    mean_p = torch.softmax(lg, dim=-1).mean(0)
    return torch.log((counts + mean_p) / (votes + 1.0))


class Voting(_Pipeline):
    """R purifications of each image on the batch axis, classified, majority vote (see the module docstring).

    ``noise`` has shape ``(R, *purifier.noise_shape(x))``: draw r of image i uses ``noise[r, i]``.
    """

    def __init__(self, purifier: nn.Module, classifier: nn.Module, votes: int) -> None:
        super().__init__(purifier, classifier)
        if votes < 1:
            raise ConfigError(f"votes must be ≥ 1, got {votes}")
        if votes > 1 and not getattr(purifier, "stochastic", False):
            raise ConfigError(f"votes = {votes} needs a stochastic purifier; {type(purifier).__name__} gives the same "
                              "image every draw")
        self.votes = int(votes)

    def noise_shape(self, x: torch.Tensor) -> Optional[tuple[int, ...]]:
        shape = super().noise_shape(x)
        return None if shape is None else (self.votes, *shape)

    def forward(self, image: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        if noise is None:
            noise = self.sample_noise(image)
        assert noise is not None
        xr, nr = repeat_draws(image, noise, self.votes)
        return vote_logits(self.classifier(self.purifier(xr, nr)), self.votes)


def pipeline_module(purifier: nn.Module, classifier: nn.Module) -> nn.Module:
    """The deployed pipeline of ``purifier`` (its ``votes`` setting, default 1) in front of ``classifier``."""
    votes = int(getattr(purifier, "votes", 1))
    return Voting(purifier, classifier, votes) if votes > 1 else FusedPipeline(purifier, classifier)
