"""NAPPure (Nan et al., arXiv 2510.14025): purification by maximising the posterior of the clean image x
and the perturbation parameters θ given the observed image,

    L(x, θ) = E_{σ,n} ‖D(y + σn; σ) − y‖²  +  λ1·φ(θ)  +  λ2·‖y_adv − (2·f(x, θ) − 1)‖²,   y = 2x − 1,

with ``D`` an EDM denoiser (the image prior, on [−1, 1]), ``f``/``φ`` a perturbation family of
``edgepure.perturb`` and σ ~ U(0.4, 0.6). Alternating Adam steps: one on ``y`` (lr ``lr_x``, in [−1, 1]
units, then clipped to [−1, 1]), one on θ (lr ``lr_theta``) at the updated image; ``y`` starts at
``y_adv`` (or, with ``init_sigma``, at the prior's denoising of it) and θ at the identity. Both Adam states and bias corrections are unrolled in Python, so with a
fixed K the whole purification is one static graph (``make_fx`` records the gradients; see
``edgepure.export``).

Two modes, one implementation:
- ``fixed``: K steps (``steps``), all randomness from the ``noise`` input of shape (N, K, 3·H·W + 1):
  per step, a standard-normal image and one variate mapped to σ = lo + (hi − lo)·Φ(z).
- ``reference``: the paper's iteration counts and step sizes, torch only (for comparison).

``prior_grad="full"`` back-propagates through ``D`` (the vector-Jacobian product); ``"forward"`` treats
``D``'s output as a constant, so the prior's gradient is ``2(y − D(y + σn; σ))`` (one forward of D per step).

Occlusion is modelled by :class:`edgepure.perturb.SoftMask`: a per-pixel sigmoid mask with the content
fixed to the observation, whose area is the prior φ. Unlike the paper's square (centre and size are not
differentiable, so the paper trains an auxiliary network), it is differentiable everywhere and fits
stickers of any shape.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from edgepure.models.loading import prior_label
from edgepure.models.registry import DEFAULT_PRIOR
from edgepure.perturb import Additive, Composite, ConvBlur, Flow, Params, Perturbation, SoftMask
from edgepure.purifiers.base import Purifier, check_steps, voted_calls
from edgepure.purifiers.registry import register_purifier
from edgepure.purifiers.unroll import Unrolled
from edgepure.runtime.errors import ConfigError

__all__ = ["KINDS", "NAPPure", "NAPPureConfig", "load_tuned", "paper_config", "shipped_tuned"]

from edgepure.purifiers.nappure_settings import (  # noqa: F401 - re-exported: nappure.<name> is their public home
    _FAMILY, _FIXED, _FIXED_GUIDED, _FIXED_RESTORE, _KIND_PRIOR, _PRIOR_TABLES, GUIDED_PRIOR, KINDS, RESTORE_PRIOR,
    NAPPureConfig, _fixed_table, default_prior, fixed_config, paper_config,
)


def build_family(kind: str, image_size: int = 32, flow_eps: Optional[float] = None, mask_init: float = -4.0) -> Perturbation:
    """The generation model f(x, θ) a purifier of ``kind`` inverts (unconstrained unless ``flow_eps``)."""
    fams: Dict[str, Perturbation] = {
        "mask": SoftMask(init_logit=mask_init),
        "flow": Flow(eps=flow_eps, smooth_size=9, sigma=1.5, image_size=image_size),
        "conv": ConvBlur(kernel_size=5, eps=None),
        "additive": Additive(eps=None),
    }
    if kind == "joint":
        return Composite([fams["mask"], fams["flow"], fams["conv"], fams["additive"]], learn_weights=True)
    return fams[_FAMILY[kind]]


def _simplex(kernel: torch.Tensor) -> torch.Tensor:
    """(N, k, k) kernels → non-negative, each summing to one (a blur keeps the brightness)."""
    k = kernel.clamp_min(0.0)
    return k / k.sum(dim=(1, 2), keepdim=True).clamp_min(1e-6)


def _adam_direction(m_hat: torch.Tensor, v_hat: torch.Tensor, eps2: float, backward_eps2: Optional[float]) -> torch.Tensor:
    """Adam's normalised step m̂ / √max(v̂, ε²). With ``backward_eps2`` the value stays exactly that, but the
    derivative is the one of m̂ / √max(v̂, ε_b²): where a coordinate's gradient is ~0 (ε = 1e-8) the exact
    derivative multiplies by up to 1e7 per step, and through K unrolled steps it overflows float32 (measured: joint
    K 8, gradients of 1e25–1e29 and NaN for 1 image in 16) — useless to an attacker and to learning."""
    # in float16 ε² = 1e-16 rounds to 0, and a coordinate whose gradient is 0 divides 0 by 0: floor it at the
    # dtype's smallest normal number (float32 and float64 keep ε² itself)
    eps2 = max(eps2, torch.finfo(v_hat.dtype).tiny)
    exact = m_hat / v_hat.clamp_min(eps2).sqrt()
    if backward_eps2 is None:
        return exact
    soft = m_hat / v_hat.clamp_min(max(eps2, backward_eps2)).sqrt()
    return exact.detach() + (soft - soft.detach())  # the value of exact (bit for bit), the derivative of soft


def _lookup(table: Dict[str, float], key: str, what: str) -> float:
    fam = key.split(".", 1)[0] if "." in key else key
    if key.endswith(".w") and "w" in table:
        return table["w"]
    for k in (key, fam):
        if k in table:
            return float(table[k])
    raise ConfigError(f"nappure: no {what} for parameter {key!r} (given for {', '.join(table)})")


@dataclass
class StepContext:
    """What every step of one purification shares: the observation y_adv (in [−1, 1]), θ's fixed entries (the
    occlusion's content), the learned θ keys (``learn``, in θ's order ``keys``) and how a step differentiates."""

    y_adv: torch.Tensor
    fixed: Dict[str, torch.Tensor]
    learn: list[str]
    keys: list[str]
    create_graph: bool
    eps2: float
    soft2: Optional[float]
    lam2: float | torch.Tensor

    def full_theta(self, learned: Params) -> Params:
        """θ with its fixed entries, in the family's order."""
        return {k: (learned[k] if k in learned else self.fixed[k]) for k in self.keys}


@dataclass
class StepState:
    """What one step hands the next: the image y, θ's learned entries and both Adam moments of each."""

    y: torch.Tensor
    theta: Params
    m_y: torch.Tensor
    v_y: torch.Tensor
    m_t: Params
    v_t: Params


class NAPPure(Purifier):
    """NAPPure with a given prior ``D`` and configuration; see the module docstring."""

    stochastic = True
    needs_autograd = True

    def __init__(self, prior: nn.Module, config: NAPPureConfig, mode: str = "fixed", image_size: int = 32) -> None:
        super().__init__()
        if mode not in ("fixed", "reference"):
            raise ConfigError(f"nappure: mode must be 'fixed' or 'reference', got {mode!r}")
        if config.kind not in KINDS:
            raise ConfigError(f"nappure: unknown kind {config.kind!r} (expected one of {', '.join(KINDS)})")
        check_steps("nappure", "steps", config.steps)
        if config.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"nappure: lr_schedule must be 'constant' or 'cosine', got {config.lr_schedule!r}")
        if config.init_sigma is not None and not config.init_sigma > 0:
            raise ConfigError(f"nappure: init_sigma must be > 0 (or None: start at the observation), got {config.init_sigma}")
        if config.votes < 1:
            raise ConfigError(f"nappure: votes must be ≥ 1, got {config.votes}")
        if config.step_scale is not None:
            groups = {"x", "mask", "flow", "conv", "additive", "w"}
            for g, v in config.step_scale.items():
                if g not in groups:
                    raise ConfigError(f"nappure: step_scale group {g!r} is not one of {', '.join(sorted(groups))}")
                if len(v) != config.steps or not all(math.isfinite(float(a)) and float(a) >= 0 for a in v):
                    raise ConfigError(f"nappure: step_scale[{g!r}] must hold {config.steps} finite values ≥ 0 "
                                      f"(one per step), got {list(v)}")
        if config.prior_grad not in ("full", "forward"):
            raise ConfigError(f"nappure: prior_grad must be 'full' or 'forward', got {config.prior_grad!r}")
        lo, hi = config.sigma_range
        if not 0 < lo <= hi:
            raise ConfigError(f"nappure: sigma_range must satisfy 0 < low ≤ high, got {config.sigma_range}")
        self.prior = prior.eval()
        for p in self.prior.parameters():
            p.requires_grad_(False)
        self.cfg = config
        self.mode = mode
        self.image_size = image_size
        self.family = build_family(config.kind, image_size, config.flow_eps, config.mask_init)
        # tensors that stand in for λ1, λ2, σ₀ and the per-step step sizes while they are being learned
        # (edgepure.training.nappure); None: everything comes from the configuration
        self.hyper: Optional[Dict[str, torch.Tensor]] = None
        # the ε of Adam's normaliser in the derivative an attack takes (the value keeps adam_eps; see _adam_direction);
        # None: the exact derivative. The joint purifier's exact derivative overflows (its δ sits under the mask);
        # the per-kind ones stay finite, and there the exact derivative is the stronger attack (docs/nappure.md).
        # Learning the hyper-parameters always takes the softened one (LEARN_BACKWARD_EPS).
        self.backward_eps: Optional[float] = 1e-3 if config.kind == "joint" else None
        self.tuned: Optional[str] = None  # where learned settings came from (recorded in config())

    @property
    def steps(self) -> int:
        return self.cfg.steps

    @property
    def votes(self) -> int:
        """R, read by the pipeline (``edgepure.export.voting``) and the evaluation."""
        return self.cfg.votes

    def noise_shape(self, x: torch.Tensor) -> Optional[tuple[int, ...]]:
        n, c, h, w = x.shape
        return (n, self.cfg.steps, c * h * w + 1)

    # -- one evaluation of the loss pieces -------------------------------------------------------------------
    def _prior_term(self, y: torch.Tensor, noise: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        lo, hi = self.cfg.sigma_range
        sigma = lo + (hi - lo) * 0.5 * (1 + torch.erf(z / math.sqrt(2.0)))  # U(lo, hi) from a standard normal
        d = self.prior(y + sigma.view(-1, 1, 1, 1) * noise, sigma)
        if self.cfg.prior_grad == "forward":
            d = d.detach()
        return (d - y).square().flatten(1).sum(1)

    def _likelihood(self, y: torch.Tensor, y_adv: torch.Tensor, theta: Params) -> torch.Tensor:
        f = self.family((y + 1) * 0.5, theta)
        return (y_adv - (2 * f - 1)).square().flatten(1).sum(1)

    def _phi(self, theta: Params) -> torch.Tensor:
        if isinstance(self.family, Composite):
            return sum(self.lambda1(k) * v for k, v in self.family.penalties(theta).items())  # type: ignore[return-value]
        return self.lambda1(self.family.name) * self.family.penalty(theta)

    def loss(self, y: torch.Tensor, y_adv: torch.Tensor, theta: Params, noise: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The per-sample objective L (y in [−1, 1])."""
        return self._prior_term(y, noise, z) + self._phi(theta) + self.lambda2() * self._likelihood(y, y_adv, theta)

    # -- hyper-parameters: the configuration's, or the tensors being learned (``self.hyper``) -------------------
    def lambda1(self, family: str) -> float | torch.Tensor:
        """λ1 of ``family`` (a float, or the tensor being learned)."""
        if self.hyper is not None and f"lam1.{family}" in self.hyper:
            return self.hyper[f"lam1.{family}"]
        return _lookup(self.cfg.lam1, family, "λ1")

    def lambda2(self) -> float | torch.Tensor:
        """λ2 (a float, or the tensor being learned)."""
        if self.hyper is not None and "lam2" in self.hyper:
            return self.hyper["lam2"]
        return self.cfg.lam2

    def _init_sigma(self) -> float | torch.Tensor | None:
        if self.hyper is not None and "init_sigma" in self.hyper:
            return self.hyper["init_sigma"]
        return self.cfg.init_sigma

    def step_group(self, key: str) -> str:
        """The step-size group of a θ entry: ``"w"`` for the mixing weights, otherwise its family's name."""
        if key.endswith(".w"):
            return "w"
        return key.split(".", 1)[0] if isinstance(self.family, Composite) else self.family.name

    def step_sizes(self, group: str) -> list[float] | torch.Tensor:
        """The K step sizes of ``group`` (``"x"`` or a θ group): base rate × lr_schedule's decay × step_scale."""
        if self.hyper is not None and f"lr.{group}" in self.hyper:
            return self.hyper[f"lr.{group}"]
        cfg, k = self.cfg, self.cfg.steps
        if group == "x":
            base = cfg.lr_x
        else:
            base = _lookup(cfg.lr_theta, group, "θ learning rate")
        scale = (cfg.step_scale or {}).get(group)
        out = []
        for t in range(1, k + 1):
            decay = 0.5 * (1 + math.cos(math.pi * (t - 1) / k)) if cfg.lr_schedule == "cosine" else 1.0
            out.append(base * decay * (float(scale[t - 1]) if scale is not None else 1.0))
        return out

    def _hyper_grad(self) -> bool:
        return self.hyper is not None and any(v.requires_grad for v in self.hyper.values())

    # -- the unrolled optimisation ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        return self.purify(x, noise)[0]

    def purify(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None, track: bool = False
               ) -> tuple[torch.Tensor, Params, list[float]]:
        """Purified images, the final θ and (with ``track``) the mean loss before each step and at the end."""
        n, c, h, w = x.shape
        if noise is None:
            noise = torch.randn(self.noise_shape(x), dtype=x.dtype, device=x.device)  # type: ignore[arg-type]
        expected = (n, self.cfg.steps, c * h * w + 1)
        if tuple(noise.shape) != expected:
            raise ConfigError(f"nappure: noise must have shape {expected}, got {tuple(noise.shape)}")
        ctx, state = self.start(x, noise[:, 0])
        lr_x = self.step_sizes("x")
        lr_th = {k: self.step_sizes(self.step_group(k)) for k in ctx.learn}
        history: list[float] = []
        with torch.enable_grad():
            for t in range(1, self.cfg.steps + 1):
                bc1, bc2 = self.bias_corrections(t)
                state = self.step(ctx, state, noise[:, t - 1], lr_x[t - 1], {k: v[t - 1] for k, v in lr_th.items()},
                                  bc1, bc2, history if track else None)
        theta = ctx.full_theta(state.theta)
        if track:
            with torch.no_grad():
                history.append(float(self._final_loss(state.y, ctx.y_adv, theta, noise)))
        return self.finish(ctx, state), {k: v.detach() for k, v in theta.items()}, history

    # -- the three pieces of a purification: start, one step (K times), finish; the exporter composes the K-step
    # graph from one exported step (edgepure.export.compose, through ``unrolled``) ----------------------------
    def start(self, x: torch.Tensor, noise_1: torch.Tensor) -> tuple[StepContext, StepState]:
        """The optional denoising jump (on step 1's noise image; ``noise_1`` = noise[:, 0]), θ's start and zeroed
        Adam moments."""
        cfg = self.cfg
        n, c, h, w = x.shape
        # an adaptive attack differentiates through us, and so does the learning of the step sizes
        learning = torch.is_grad_enabled() and self._hyper_grad()
        create_graph = learning or (torch.is_grad_enabled() and x.requires_grad)
        eps_b = LEARN_BACKWARD_EPS if learning and self.backward_eps is None else self.backward_eps
        y_adv = x * 2 - 1
        y = y_adv
        theta = self.family.identity(x)
        s0 = self._init_sigma()
        if s0 is not None:  # one diffusion-purification jump: noise to σ₀ (step 1's noise image), denoise
            y = self.prior(y_adv + s0 * noise_1[:, : c * h * w].reshape(n, c, h, w),
                           s0 * torch.ones(n, dtype=x.dtype, device=x.device)).clamp(-1.0, 1.0)
            if not create_graph:
                y = y.detach()
            theta = self._fit_theta(theta, y, y_adv)
        fixed = set(getattr(self.family, "fixed", ()))
        if "content" in theta or any(k.endswith(".content") for k in theta):
            theta = {k: (x if k in fixed else v) for k, v in theta.items()}  # the observation, in the graph
        learn = [k for k in theta if k not in fixed]
        # Adam's ε as a floor under the second moment, √max(v̂, ε²): the step stays differentiable where a
        # gradient is exactly 0 (√ has an infinite slope at 0), and the floor survives export (the ONNX
        # exporter drops an Add of a constant ≤ 1e-8 as if it were zero)
        ctx = StepContext(y_adv=y_adv, fixed={k: v for k, v in theta.items() if k not in learn}, learn=learn,
                          keys=list(theta),
                          create_graph=create_graph, eps2=cfg.adam_eps**2,
                          soft2=eps_b**2 if create_graph and eps_b is not None else None, lam2=self.lambda2())
        state = StepState(y=y, theta={k: theta[k] for k in learn}, m_y=torch.zeros_like(y), v_y=torch.zeros_like(y),
                          m_t={k: torch.zeros_like(theta[k]) for k in learn},
                          v_t={k: torch.zeros_like(theta[k]) for k in learn})
        return ctx, state

    def bias_corrections(self, t: int) -> tuple[float, float]:
        """Adam's bias corrections 1 − β₁ᵗ and 1 − β₂ᵗ of step ``t`` (from 1)."""
        b1, b2 = self.cfg.betas
        return 1 - b1**t, 1 - b2**t

    def step(self, ctx: StepContext, state: StepState, noise_t: torch.Tensor, lr_x: Any, lr_th: Dict[str, Any],
             bc1: Any, bc2: Any, history: Optional[list[float]] = None) -> StepState:
        """One step: the x step, then the θ step at the updated image. ``noise_t``: this step's (N, 3·H·W + 1)
        noise; ``lr_x``, ``lr_th`` (by θ key), ``bc1``, ``bc2``: its step sizes and bias corrections (floats or
        tensors). With ``history``, the mean loss before the step is appended."""
        b1, b2 = self.cfg.betas
        learn, create_graph = ctx.learn, ctx.create_graph
        n, c, h, w = state.y.shape
        step_noise, z = noise_t[:, : c * h * w].reshape(n, c, h, w), noise_t[:, c * h * w]
        y = state.y
        theta = ctx.full_theta(state.theta)
        # the x step's gradient is the partial one, θ held fixed (and the θ step's, y held fixed): without a
        # graph that is detach; with one (adaptive attacks, learned step sizes) a fresh node per variable, so
        # the paths through the earlier steps (θ depends on the earlier y, y on θ) stay out of the step
        if not create_graph:
            y = y.detach().requires_grad_(True)
            theta = {k: (v.detach() if k in learn else v) for k, v in theta.items()}
        else:
            y = y.clone()
            if not y.requires_grad:
                y.requires_grad_(True)
        loss_x = self._prior_term(y, step_noise, z) + ctx.lam2 * self._likelihood(y, ctx.y_adv, theta)
        if history is not None:
            history.append(float((loss_x + self._phi(theta)).mean().detach()))
        (g,) = torch.autograd.grad(loss_x.sum(), y, create_graph=create_graph)
        m_y = b1 * state.m_y + (1 - b1) * g
        v_y = b2 * state.v_y + (1 - b2) * g * g
        y = (y - lr_x * _adam_direction(m_y / bc1, v_y / bc2, ctx.eps2, ctx.soft2)).clamp(-1.0, 1.0)
        # θ step, at the updated image
        if not create_graph:
            y = y.detach()
            theta = {k: (v.detach().requires_grad_(True) if k in learn else v) for k, v in theta.items()}
        else:
            theta = {k: (v.clone() if k in learn else v) for k, v in theta.items()}
            for k in learn:
                if not theta[k].requires_grad:
                    theta[k].requires_grad_(True)
        loss_t = self._phi(theta) + ctx.lam2 * self._likelihood(y, ctx.y_adv, theta)
        grads = torch.autograd.grad(loss_t.sum(), [theta[k] for k in learn], create_graph=create_graph)
        new, m_t, v_t = dict(theta), dict(state.m_t), dict(state.v_t)
        for k, gk in zip(learn, grads):
            m_t[k] = b1 * m_t[k] + (1 - b1) * gk
            v_t[k] = b2 * v_t[k] + (1 - b2) * gk * gk
            new[k] = theta[k] - lr_th[k] * _adam_direction(m_t[k] / bc1, v_t[k] / bc2, ctx.eps2, ctx.soft2)
        new = self._constrain(new)
        return StepState(y=y, theta={k: new[k] for k in learn}, m_y=m_y, v_y=v_y, m_t=m_t, v_t=v_t)

    def finish(self, ctx: StepContext, state: StepState) -> torch.Tensor:
        """The purified image in [0, 1] (detached unless a gradient flows through the purification)."""
        out = ((state.y + 1) * 0.5).clamp(0.0, 1.0)
        return out if ctx.create_graph else out.detach()

    def unrolled(self, x: torch.Tensor) -> Unrolled:
        """The start, one step and the finish as modules on flat tensors, and each step's constants, from which
        ``edgepure.export.compose`` builds the K-step graph (see :class:`Unrolled`)."""
        from edgepure.purifiers.unroll import nappure_parts

        return nappure_parts(self, x)

    def _fit_theta(self, theta: Params, y: torch.Tensor, y_adv: torch.Tensor) -> Params:
        """θ at its conditional optimum given the image estimate ``y`` where that has a closed form — additive:
        argmin_δ λ1‖δ‖² + λ2‖r − 2δ‖² (r = y_adv − y, δ in [0, 1] units). Others keep the identity (for the
        soft mask the closed form, m = clip(1 − λ1/(2λ2·Σ_c r_c²)), was measured and made it worse)."""
        if isinstance(self.family, Additive):
            l1, l2 = self.lambda1("additive"), self.lambda2()
            return {"delta": (2 * l2 / (l1 + 4 * l2)) * (y_adv - y)}
        return theta

    def _final_loss(self, y: torch.Tensor, y_adv: torch.Tensor, theta: Params, noise: torch.Tensor) -> torch.Tensor:
        n, c, h, w = y.shape
        if noise.shape[1] == 0:
            step_noise, z = torch.zeros_like(y), torch.zeros(n, dtype=y.dtype, device=y.device)
        else:
            step_noise, z = noise[:, -1, : c * h * w].reshape(n, c, h, w), noise[:, -1, c * h * w]
        return self.loss(y, y_adv, theta, step_noise, z).mean()

    def _constrain(self, theta: Params) -> Params:
        if isinstance(self.family, Composite):
            out = dict(theta)
            for k, v in theta.items():
                if k.endswith(".w"):
                    out[k] = v.clamp(0.0, 1.0)
            if self.cfg.flow_eps is not None and "flow.flow" in out:
                out["flow.flow"] = out["flow.flow"].clamp(-self.cfg.flow_eps, self.cfg.flow_eps)
            if self.cfg.kernel_simplex and "conv.kernel" in out:
                out["conv.kernel"] = _simplex(out["conv.kernel"])
            return out
        if isinstance(self.family, Flow) and self.cfg.flow_eps is not None:
            return {"flow": theta["flow"].clamp(-self.cfg.flow_eps, self.cfg.flow_eps)}
        if isinstance(self.family, ConvBlur) and self.cfg.kernel_simplex:
            return {"kernel": _simplex(theta["kernel"])}
        return theta

    def calls_per_image(self) -> dict[str, int]:
        """Network evaluations per purified image: each step one prior forward and its vector-Jacobian product
        (and one plain forward for a denoised start), × R with votes, plus the R − 1 extra classifications."""
        calls = {"denoiser_with_gradient": self.cfg.steps}
        if self.cfg.init_sigma is not None:
            calls["denoiser"] = 1
        return voted_calls(calls, self.cfg.votes)

    def config(self) -> dict[str, object]:
        d = asdict(self.cfg)
        d["mode"] = self.mode
        d["tuned"] = self.tuned
        d["prior"] = prior_label(self.prior)
        return d


LEARN_BACKWARD_EPS = 1e-3  # the backward ε while hyper-parameters are learned (edgepure.training.nappure)

_TUNED_KEYS = {"lam1", "lam2", "init_sigma", "step_scale"}


TUNED_DIR = Path(__file__).resolve().parent / "tuned"


def shipped_tuned(kind: str, steps: int) -> Optional[Path]:
    """The package's learned settings for ``kind`` at K = ``steps`` (``tuned/nappure-<kind>-k<K>.json``), if any."""
    p = TUNED_DIR / f"nappure-{kind}-k{steps}.json"
    return p if p.is_file() else None


def _read_tuned(path: str | Path, kind: str, steps: int) -> Dict[str, Any]:
    """A learned-settings file of ``edgepure train nappure``, checked to be for ``kind`` at K = ``steps``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"nappure: tuned settings file {p} does not exist")
    try:
        doc = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"nappure: {p} is not a JSON settings file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict) or "kind" not in doc or "steps" not in doc:
        raise ConfigError(f"nappure: {p} must hold {{'kind', 'steps', 'settings'}} (from edgepure train nappure), "
                          f"found {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
    if doc["kind"] != kind or doc["steps"] != steps:
        raise ConfigError(f"nappure: {p} was learned for kind {doc['kind']!r} at K = {doc['steps']}, "
                          f"but the purifier is kind {kind!r} at K = {steps}")
    extra = set(doc["settings"]) - _TUNED_KEYS
    if extra:
        raise ConfigError(f"nappure: {p} sets {', '.join(sorted(extra))}; expected only {', '.join(sorted(_TUNED_KEYS))}")
    return doc


def _other_table(path: str | Path, doc: Dict[str, Any], kind: str, prior: Optional[str]) -> Optional[str]:
    """Why a learned-settings file does not fit a purifier on ``prior`` — it was learned on top of another prior's
    hand-set settings (files without a ``prior`` field: edm_unet_s) — or None when it fits."""
    learned_with = str(doc.get("prior", DEFAULT_PRIOR))
    if _fixed_table(kind, learned_with) is _fixed_table(kind, prior):
        return None
    return (f"nappure: {path} was learned with the prior {learned_with!r}, whose hand-set {kind} settings "
            f"differ from those of the purifier's prior {prior!r}")


def load_tuned(path: str | Path, kind: str, steps: int, prior: Optional[str] = None) -> Dict[str, Any]:
    """The settings learned by ``edgepure train nappure`` (its ``settings.json``) for ``kind`` at K = ``steps``,
    on top of the hand-set settings that ``prior`` (the purifier's, by name) starts from."""
    doc = _read_tuned(path, kind, steps)
    problem = _other_table(path, doc, kind, prior)
    if problem is not None:
        raise ConfigError(problem)
    return dict(doc["settings"])


@register_purifier("nappure", has_weights=True)
def nappure(kind: str = "joint", steps: Optional[int] = None, mode: str = "fixed", pretrained: bool = True,
            prior: Optional[nn.Module | str] = None, prior_grad: str = "full", tuned: Optional[str] = "shipped",
            **overrides: Any) -> NAPPure:
    """NAPPure: MAP estimate of image and perturbation under an EDM prior, K unrolled Adam steps (exportable).

    ``tuned`` (fixed mode): ``"shipped"`` — the settings edgepure learned for this kind and K where it ships some
    (``edgepure/purifiers/tuned/``), the hand-set ones otherwise; ``"none"`` (or None) — the hand-set ones; or the
    path of a ``settings.json`` of ``edgepure train nappure`` (λ1, λ2, σ₀ and per-step step sizes learned for this
    kind and K). Settings passed as keywords take precedence over either; ``config()`` records where they came
    from and every value, so ``create_purifier("nappure", **pur.config())`` rebuilds ``pur`` without the file."""
    from edgepure.models.loading import resolve_prior

    if kind not in KINDS:
        raise ConfigError(f"nappure: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    if steps is not None:
        check_steps("nappure", "steps", steps)  # before the prior's weights are read
    if prior is None:
        prior = default_prior(kind, mode)
    prior_name = prior if isinstance(prior, str) else getattr(prior, "edgepure_name", None)
    if mode == "reference":
        cfg = paper_config(kind)
        if steps is not None:
            cfg = replace(cfg, steps=steps)
    elif mode == "fixed":
        cfg = fixed_config(kind, 16 if steps is None else steps, prior_name)
    else:
        raise ConfigError(f"nappure: mode must be 'fixed' or 'reference', got {mode!r}")
    unknown = set(overrides) - set(NAPPureConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"nappure: unknown setting(s) {', '.join(sorted(unknown))}")
    source: Optional[str] = None
    if mode == "fixed" and tuned not in ("none", None):
        if _TUNED_KEYS <= set(overrides):  # every learned setting given (a purifier rebuilt from its config()):
            source = tuned  # the file is not consulted, its name is kept
        else:
            if tuned == "shipped":
                path = shipped_tuned(kind, cfg.steps)
            elif tuned.startswith("shipped:"):
                path = TUNED_DIR / tuned.split(":", 1)[1]
            else:
                path = Path(tuned)
            if path is not None:
                doc = _read_tuned(path, kind, cfg.steps)
                problem = _other_table(path, doc, kind, prior_name)
                if problem is not None and tuned != "shipped":
                    raise ConfigError(problem)
                if problem is None:  # the default passes over a file learned on another prior's hand-set settings
                    overrides = dict(doc["settings"]) | overrides
                    source = f"shipped:{path.name}" if tuned.startswith("shipped") else str(path)
    elif mode == "reference" and tuned not in ("shipped", "none", None):
        raise ConfigError(f"nappure: learned settings ({tuned}) are for fixed mode, not mode {mode!r}")
    cfg = replace(cfg, prior_grad=prior_grad, **overrides)
    d = resolve_prior(prior, pretrained=pretrained) if isinstance(prior, str) else prior
    pur = NAPPure(d, cfg, mode=mode)
    pur.tuned = source
    return pur
