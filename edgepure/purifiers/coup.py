"""COUP: classifier-confidence guided purification (arXiv 2408.05900), K fixed reverse-SDE steps on
edgepure's EDM prior, with the classifier's input gradient inside the graph.

The reverse-time VP-SDE (β(t) = β_min + t(β_max − β_min), β_min 0.1, β_max 20) is integrated from
``t_star`` down to 1e-5 by Euler–Maruyama in ``steps`` equal steps, **starting from the input itself**
(no forward noising, as the paper's code runs it), with the score augmented by the classifier's
confidence in its own current prediction:

    x ← x + [½β x + β (s(x, t) + λ ∇ₓ log max_y p(y | x))]·h + √(βh)·z

The score comes from the EDM denoiser: ``ᾱ(t) = exp(−∫β)``, ``σ = √((1 − ᾱ)/ᾱ)``,
``x̂₀ = D(x/√ᾱ; σ)``, ``s = −(x − √ᾱ x̂₀)/(1 − ᾱ)``. The classifier sees ``(x + 1)/2`` (its [0, 1] input).
One change for a handful of steps: the last step adds no noise (with K = 8 its Brownian term would be
≈ 0.07 in [−1, 1] units; with the paper's ≈ 100 steps it is ≈ 0.01).

Gradients: the guidance is ``torch.autograd.grad`` inside ``forward`` (exported through make_fx, like
NAPPure's prior gradient). When an attacker differentiates through the purifier the guidance's own
Jacobian is kept (``create_graph``): a full-gradient adaptive attack, stronger than the paper's code,
which detaches it. The noise input is ``(N, steps, 3, H, W)``, one Brownian increment per step.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgepure.models.loading import prior_label
from edgepure.purifiers.base import Purifier, check_steps
from edgepure.purifiers.registry import register_purifier
from edgepure.purifiers.unroll import Unrolled
from edgepure.runtime.errors import ConfigError

__all__ = ["COUP"]

T_END = 1e-5


class COUP(Purifier):
    """Classifier-confidence guided reverse diffusion from the input (see the module docstring)."""

    stochastic = True
    needs_autograd = True

    def __init__(self, prior: nn.Module, classifier: nn.Module, steps: int = 8, t_star: float = 0.1, lam: float = 1.0,
                 beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        super().__init__()
        steps = check_steps("coup", "steps", steps)
        if not T_END < t_star <= 1.0 or lam < 0 or not 0 < beta_min <= beta_max:
            raise ConfigError(f"coup: need 1e-5 < t_star ≤ 1, lam ≥ 0, 0 < beta_min ≤ beta_max; got t_star={t_star}, "
                              f"lam={lam}, beta_min={beta_min}, beta_max={beta_max}")
        self.prior = prior.eval()
        self.classifier = classifier.eval()
        for p in [*self.prior.parameters(), *self.classifier.parameters()]:
            p.requires_grad_(False)
        self.steps, self.t_star, self.lam, self.beta_min, self.beta_max = steps, t_star, lam, beta_min, beta_max

    def noise_shape(self, x: torch.Tensor) -> Optional[tuple[int, ...]]:
        return (x.shape[0], self.steps, *x.shape[1:])

    def _beta(self, t: float) -> float:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _alpha_bar(self, t: float) -> float:
        return math.exp(-(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t))

    def score(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """∇ₓ log p_t(x) of the VP process at time ``t``, from the denoiser (``x`` in [−1, 1] units)."""
        a = self._alpha_bar(t)
        return self._score(x, math.sqrt(a), math.sqrt((1.0 - a) / a), 1.0 - a)

    def _score(self, x: torch.Tensor, sqrt_a: Any, sigma: Any, one_minus_a: Any) -> torch.Tensor:
        x0 = self.prior(x / sqrt_a, sigma)
        return -(x - sqrt_a * x0) / one_minus_a

    def guidance(self, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """∇ₓ log max_y softmax(classifier((x + 1)/2))."""
        with torch.enable_grad():
            xg = x if create_graph else x.detach().requires_grad_(True)
            logp = F.log_softmax(self.classifier((xg + 1.0) / 2.0), dim=1).max(dim=1).values
            (g,) = torch.autograd.grad(logp.sum(), xg, create_graph=create_graph)
        return g

    def step_constants(self, i: int) -> list[float]:
        """Step ``i``'s (from 0) [β, √ᾱ, σ, 1 − ᾱ, h, √(βh) (0 at the last step: no noise)]."""
        h = (self.t_star - T_END) / self.steps
        t = self.t_star - i * h
        beta, a = self._beta(t), self._alpha_bar(t)
        return [beta, math.sqrt(a), math.sqrt((1.0 - a) / a), 1.0 - a, h,
                math.sqrt(beta * h) if i < self.steps - 1 else 0.0]

    def step(self, y: torch.Tensor, noise_i: torch.Tensor, c: Any, create_graph: bool = False) -> torch.Tensor:
        """One Euler–Maruyama step of the guided reverse SDE; ``c``: its ``step_constants`` (floats or a tensor)."""
        beta, sqrt_a, sigma, one_minus_a, h, noise_scale = (c[j] for j in range(6))
        drift = 0.5 * beta * y + beta * (self._score(y, sqrt_a, sigma, one_minus_a) + self.lam * self.guidance(y, create_graph))
        return y + drift * h + noise_scale * noise_i

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        if noise is None:
            noise = self.sample_noise(x)
        assert noise is not None
        create_graph = torch.is_grad_enabled() and x.requires_grad  # an adaptive attack differentiates through us
        y = 2.0 * x - 1.0
        for i in range(self.steps):
            y = self.step(y, noise[:, i], self.step_constants(i), create_graph)
        out = ((y.clamp(-1.0, 1.0) + 1.0) / 2.0)
        return out if create_graph else out.detach()

    def unrolled(self, x: torch.Tensor) -> Unrolled:
        """Start (y = 2x − 1), one step and finish, for ``edgepure.export.compose`` (see :class:`Unrolled`)."""
        consts = [torch.tensor(self.step_constants(i), dtype=torch.float32) for i in range(self.steps)]
        return Unrolled(_COUPStart(), _COUPStep(self), _COUPFinish(), n_context=0, n_state=1, constants=consts)

    def config(self) -> dict[str, object]:
        return {"steps": self.steps, "t_star": self.t_star, "lam": self.lam, "beta_min": self.beta_min,
                "beta_max": self.beta_max, "prior": prior_label(self.prior)}

    def calls_per_image(self) -> dict[str, int]:
        """Network evaluations per purified image: denoiser forwards, classifier forward + input-gradient."""
        return {"denoiser": self.steps, "classifier_with_gradient": self.steps}


class _COUPStart(nn.Module):
    def forward(self, image: torch.Tensor, noise_1: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return 2.0 * image - 1.0


class _COUPStep(nn.Module):
    def __init__(self, pur: COUP) -> None:
        super().__init__()
        self.pur = pur

    def forward(self, y: torch.Tensor, noise_t: torch.Tensor, consts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.pur.step(y, noise_t, consts)


class _COUPFinish(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (y.clamp(-1.0, 1.0) + 1.0) / 2.0


@register_purifier("coup", has_weights=True)
def coup(pretrained: bool = True, prior: Optional[nn.Module | str] = None, classifier: Optional[nn.Module | str] = None,
         **settings: Any) -> COUP:
    """COUP: reverse diffusion from the input, guided by the classifier's confidence (its input gradient in the graph)."""
    from edgepure.models.loading import load_classifier, resolve_prior
    from edgepure.models.registry import DEFAULT_PRIOR

    d = prior if isinstance(prior, nn.Module) else resolve_prior(prior or DEFAULT_PRIOR, pretrained=pretrained)
    clf = classifier if isinstance(classifier, nn.Module) else load_classifier(classifier)
    return COUP(d, clf, **settings)
