"""Diffusion purification with heterogeneous noise and single-step resampling ("Divide and Conquer",
arXiv 2503.01407), on edgepure's EDM prior, as a static graph with a small fixed number of denoiser calls.

1. **Attention mask, gradient-free.** One classifier forward; for each stage's last block
   ``A = Σ_c F_c²``, bilinearly upsampled to the image, min–max normalised per image; stages combined by
   pixel-wise max; ``M = 1[A ≥ τ]`` marks the pixels the classifier attends to. The mask is a constant for
   gradients (it is computed on ``x.detach()``).
2. **Heterogeneous forward process.** Diffuse the input to ``t_l`` (DDPM linear-β schedule, T = 1000).
3. **Denoising on a grid** ``t_l = g_0 > g_1 > … > g_K = 0`` (K = ``calls``, one denoiser call each):
   while the current point ``t ≥ t_s`` the pixels outside the mask are replaced by the input freshly
   noised to ``t`` (so they only ever carry the weak noise of level ≈ ``t_s``), then **single-step
   resampling** moves the whole image ``resample`` forward steps up, ``t → t + U`` (one jump
   ``√(ᾱ_{t+U}/ᾱ_t)·x + √(1 − ᾱ_{t+U}/ᾱ_t)·ε``, the same distribution as ``U`` one-step transitions), to
   harmonise the two regions, and one DDIM step (η = 0) goes to the next grid point. Below ``t_s`` the
   steps are plain DDIM.
4. The result, mapped back to [0, 1].

Two departures from the paper's code, both for a 2-call graph: the replacement happens at every grid point
``t ≥ t_s`` (the code tests the *next* point, which with 2 calls leaves the unattended pixels at ``t_l``),
and the U forward transitions are one jump. The DDPM ε-prediction comes from the EDM denoiser:
``y = x_t/√ᾱ_t = x_0 + σ_t ε`` with ``σ_t = √((1 − ᾱ_t)/ᾱ_t)``, ``x̂_0 = D(y; σ_t)``.

Votes (``votes = R``): the deployed pipeline purifies each crop R times on the batch axis and takes the
classifier's majority (:mod:`edgepure.export.voting`); the purifier itself is one draw.

All noise comes from one explicit input of shape ``(N, 1 + 2K, 3, H, W)``: the initial diffusion, then per
step the replacement's noise and the resampling jump's noise.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgepure.models.loading import prior_label
from edgepure.models.priors import ddpm_alphas_bar
from edgepure.purifiers.base import Purifier, check_steps, voted_calls
from edgepure.purifiers.registry import register_purifier
from edgepure.runtime.errors import ConfigError

__all__ = ["HeteroDiffusion", "attention_mask", "ddpm_alphas_bar"]


def attention_mask(classifier: nn.Module, x: torch.Tensor, tau: float) -> torch.Tensor:
    """``M`` (N×1×H×W, 0/1 float) from the classifier's stage activations of ``x`` in [0, 1]."""
    feats = classifier.stage_features(x)  # type: ignore[operator]
    h, w = x.shape[-2:]
    a = None
    for f in feats:
        s = F.interpolate(f.pow(2).sum(1, keepdim=True), size=(h, w), mode="bilinear", align_corners=False)
        lo = s.amin(dim=(2, 3), keepdim=True)
        hi = s.amax(dim=(2, 3), keepdim=True)
        s = (s - lo) / (hi - lo + 1e-12)
        a = s if a is None else torch.maximum(a, s)
    assert a is not None
    return (a >= tau).to(x.dtype)


class HeteroDiffusion(Purifier):
    """Heterogeneous-noise diffusion purification with single-step resampling (see the module docstring)."""

    stochastic = True

    def __init__(self, prior: nn.Module, classifier: nn.Module, t_l: float = 0.2, t_s: float = 0.1, tau: float = 0.9,
                 resample: int = 3, calls: int = 2, timesteps: int = 1000, votes: int = 1) -> None:
        super().__init__()
        if not callable(getattr(classifier, "stage_features", None)):
            raise ConfigError(f"hetero_diffusion: the mask classifier ({type(classifier).__name__}) needs a "
                              "stage_features(x) method returning its stage activations (SignNet has one)")
        if not 0 < t_s <= t_l < 1:
            raise ConfigError(f"hetero_diffusion: need 0 < t_s ≤ t_l < 1, got t_s={t_s}, t_l={t_l}")
        calls = check_steps("hetero_diffusion", "calls", calls)
        if resample < 0 or not 0 <= tau <= 1 or votes < 1:
            raise ConfigError(f"hetero_diffusion: need resample ≥ 0, 0 ≤ tau ≤ 1, votes ≥ 1; got {resample}, {tau}, "
                              f"{votes}")
        self.prior = prior.eval()
        self.classifier = classifier.eval()
        for p in [*self.prior.parameters(), *self.classifier.parameters()]:
            p.requires_grad_(False)
        self.t_l, self.t_s, self.tau, self.resample, self.calls, self.timesteps = t_l, t_s, tau, resample, calls, timesteps
        self.votes = int(votes)  # R: the pipeline purifies R times and takes the majority (export/voting.py)
        self.abar = [float(v) for v in ddpm_alphas_bar(timesteps)]
        lo_t, hi_t = round(t_s * timesteps), round(t_l * timesteps)
        self.grid = [round(hi_t - i * hi_t / calls) for i in range(calls + 1)]
        self.low_t = lo_t

    def noise_shape(self, x: torch.Tensor) -> Optional[tuple[int, ...]]:
        return (x.shape[0], 1 + 2 * self.calls, *x.shape[1:])

    def _denoise(self, xt: torch.Tensor, t: int) -> torch.Tensor:
        """x̂_0 in [−1, 1] from x_t at integer time ``t`` (one prior call)."""
        a = self.abar[t]
        sigma = ((1.0 - a) / a) ** 0.5
        return self.prior(xt / a**0.5, sigma).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        if noise is None:
            noise = self.sample_noise(x)
        assert noise is not None
        mask = attention_mask(self.classifier, x.detach(), self.tau)
        x0 = 2.0 * x - 1.0
        a = self.abar
        t0 = self.grid[0]
        xt = a[t0] ** 0.5 * x0 + (1.0 - a[t0]) ** 0.5 * noise[:, 0]
        for i in range(self.calls):
            t, nxt = self.grid[i], self.grid[i + 1]
            if t >= self.low_t:
                known = a[t] ** 0.5 * x0 + (1.0 - a[t]) ** 0.5 * noise[:, 1 + i]
                xt = mask * xt + (1.0 - mask) * known
                if self.resample:
                    up = min(t + self.resample, self.timesteps)
                    r = a[up] / a[t]
                    xt = r**0.5 * xt + (1.0 - r) ** 0.5 * noise[:, 1 + self.calls + i]
                    t = up
            x0_hat = self._denoise(xt, t)
            eps = (xt - a[t] ** 0.5 * x0_hat) / (1.0 - a[t]) ** 0.5
            xt = a[nxt] ** 0.5 * x0_hat + (1.0 - a[nxt]) ** 0.5 * eps
        return ((xt + 1.0) / 2.0).clamp(0.0, 1.0)

    def config(self) -> dict[str, object]:
        return {"t_l": self.t_l, "t_s": self.t_s, "tau": self.tau, "resample": self.resample, "calls": self.calls,
                "timesteps": self.timesteps, "votes": self.votes, "prior": prior_label(self.prior)}

    def calls_per_image(self) -> dict[str, int]:
        """Network evaluations per crop beyond the one classification every pipeline makes: the mask's classifier
        forward and the denoiser calls, each × R with votes (every draw recomputes the mask on its copy of the
        crop), plus the R − 1 extra classifications of the votes."""
        return voted_calls({"denoiser": self.calls, "classifier": 1}, self.votes)


@register_purifier("hetero_diffusion", has_weights=True)
def hetero_diffusion(pretrained: bool = True, prior: Optional[nn.Module | str] = None,
                     classifier: Optional[nn.Module | str] = None, **settings: Any) -> HeteroDiffusion:
    """Diffusion purification with heterogeneous noise (attended pixels strong, the rest weak) and single-step resampling."""
    from edgepure.models.loading import load_classifier, resolve_prior
    from edgepure.models.registry import DEFAULT_PRIOR

    d = prior if isinstance(prior, nn.Module) else resolve_prior(prior or DEFAULT_PRIOR, pretrained=pretrained)
    clf = classifier if isinstance(classifier, nn.Module) else load_classifier(classifier)
    return HeteroDiffusion(d, clf, **settings)
