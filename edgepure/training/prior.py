"""Training an image prior: an EDM denoiser on the training split (seeded, resumable, with validation).

Loss (Karras et al. 2022): ``λ(σ)·‖D(y + σn; σ) − y‖²`` with ``λ(σ) = (σ² + σd²)/(σ·σd)²`` on images ``y`` in
[−1, 1]. The noise levels come from a mixture: with probability ``focus_p`` uniformly from
``focus`` (NAPPure's prior term evaluates ``D`` at σ ~ U(0.4, 0.6)), otherwise EDM's log-normal
(``P_mean`` −1.2, ``P_std`` 1.2), so the prior also serves purifiers that denoise at other levels.
Validation: the mean squared error of ``D`` at fixed noise levels on the held-out tracks, with noise
drawn from a fixed seed (identical every epoch), in [−1, 1] units.

``corrupt`` > 0 trains a *restoration* prior: that share of the inputs carries, before the noise, an occluding
patch (flat colour, random texture or saturated random pixels; 3–12 px, anywhere) and/or an additive pattern
(random signs of ±ε, ε from 8/255 to 32/255, at 1, 2 or 4 px scale), while the target stays the clean image; the
noise level of a corrupted input is log-uniform on [0.01, 1] (a restoration at low σ is what a purifier's first
jump needs). ``D`` then
estimates the clean sign behind stickers and high-frequency patterns as well as behind Gaussian noise. The other
inputs, and the validation, are the plain denoising task. ``init`` starts from trained weights (a registered
prior's shipped ones or a checkpoint) — a fine-tuning run.

``adversarial`` > 0 adds the attacks a deployed purifier meets: that share of the inputs is replaced by adversarial
examples against the classifier (the shipped one unless ``classifier`` names another), half a patch and half additive
noise with the NAPPure protocol's budgets (7×7 centred patch; L∞ 24/255), found by ``adv_steps``-step PGD from a
random start on the fly (IMPure's recipe for its reconstruction network); target clean, noise level as for the
other corruptions. ``adv_additive`` sets the additive share of those examples and ``adv_sigma_max`` caps their noise
levels (log-uniform from 0.01 up to it: a purifier's denoised start reads D at a small σ). Validation then adds
``adversarial@0.1`` on a fixed set attacked the same way.

``adv_pool`` > 0 takes a share ``adv_pool_share`` of the adversarial inputs from a *pool*: that many training
images, attacked once before training by the evaluation's own blind attack (APGD-CE of ``edgepure eval robust``, or
PGD with ``adv_pool_method="pgd"``; ``adv_pool_steps`` steps; each image's highest-loss iterate, or with
``adv_pool_transfer="first"`` the first that fooled the classifier; the first share patched, the last ``adv_additive``
share noised), cached in ``adv_cache``
(default: the run folder) under ``eval robust``'s keys; the other adversarial inputs stay on-the-fly PGD. The
classifier is frozen, so a pool is exact, not stale. Each pool input is a random pool image, its clean target shifted
with it; the held-out validation set is attacked by both (the pool's attack on the first half). A pool costs one APGD
run up front (its cost per image: docs/nappure.md, stage 4). Why both attacks: a prior trained on one attack's
examples learns that attack's patterns — trained on PGD-4 alone it restores PGD examples far better than APGD ones,
trained on APGD alone the reverse (docs/nappure.md).

``feature_weight`` > 0 adds a classifier-guided term (as HGD's and IMPure's): for every input with σ ≤ 0.5, IMPure's
normalised L1 distance between the classifier's stage activations on ``D``'s output and on the clean image — the
restoration must be one the classifier reads, not only close in pixels (a residual of an adversarial pattern too
small to matter for the MSE still fools a classifier). Validation then also reports the classifier's accuracy on
the denoised clean and attacked held-out images at σ 0.1.

``corrupt_warp`` > 0 adds geometric distortion to the restoration task: that share of the inputs is warped, before any
other corruption and the noise, by a random smooth flow (``warp_batch``: a coarse random field of 3×3 to 8×8 control
points, bicubically upsampled, peak displacement WARP_PX), target the unwarped sign, noise level as for the other
corruptions. A plain denoiser prefers a warped sign to the straight one (the bilinear resampling smooths it, and its
denoising error is lower: measured in docs/nappure.md), so NAPPure's distortion purifier gets no pull towards the
unwarped image from it; a prior that has learned to unwarp gives that pull. Validation then adds ``unwarp@0.1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from edgepure.data import open_dataset
from edgepure.models.loading import frozen, resolve_classifier, resolve_prior
from edgepure.models.registry import create_prior
from edgepure.runtime.errors import ConfigError
from edgepure.training.checkpoint import init_from
from edgepure.training.common import random_shift, to_tensor
from edgepure.training.impure import feature_loss
from edgepure.training.loop import fit

__all__ = ["PriorConfig", "adversarial_batch", "adversarial_pool", "corrupt_batch", "corrupted_sigmas", "train_prior", "validate_prior",
           "warp_batch"]

VAL_SIGMAS = (0.1, 0.25, 0.5, 1.0)


@dataclass
class PriorConfig:
    data: str
    out: str
    model: str = "edm_unet_s"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 300
    seed: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0
    val_n: int = 1024  # held-out images scored each epoch
    focus: tuple[float, float] = (0.4, 0.6)
    focus_p: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    shift: int = 2  # random translation in pixels (reflect padding); 0: off
    ema: float = 0.999
    grad_clip: float = 1.0
    max_steps: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    corrupt: float = 0.0  # share of inputs with a restoration corruption (the target stays clean)
    init: str | None = None  # start from these weights: a registered prior's shipped ones, or a checkpoint
    adversarial: float = 0.0  # share of inputs replaced by PGD examples against the classifier (clean target)
    adv_steps: int = 4
    classifier: str | None = None  # attacked by ``adversarial`` (default: the shipped classifier)
    feature_weight: float = 0.0  # weight of the classifier-feature loss on D's outputs (σ ≤ FEATURE_SIGMA_MAX)
    adv_additive: float = 0.5  # share of the adversarial examples that carry additive noise (the rest: a patch)
    adv_sigma_max: float = 1.0  # their noise levels: log-uniform on [CORRUPT_SIGMA[0], this]
    adv_pool: int = 0  # > 0: adversarial inputs partly from this many training images attacked once by blind APGD-CE
    adv_pool_share: float = 1.0  # share of the adversarial inputs taken from the pool (the rest: PGD on the fly)
    adv_pool_steps: int = 20  # attack steps of the pool's examples
    # the pool's attack(s): "apgd" (APGD-CE, eval robust's), "pgd", or a comma list of METHOD[:STEPS] (every pool image
    # attacked by each; an input takes one of them at random)
    adv_pool_method: str = "apgd"
    # which iterate the pool's attack keeps: "loss" (the highest-loss one, eval robust's blind default) or "first" (the
    # first that fooled the classifier, the pools of the shipped guided prior)
    adv_pool_transfer: str = "loss"
    adv_cache: str | None = None  # folder of the pool's examples (None: the run folder)
    corrupt_warp: float = 0.0  # share of inputs warped by a random smooth flow (target: the unwarped image)

    def __post_init__(self) -> None:
        from edgepure.attacks.base import check_transfer

        check_transfer(self.adv_pool_transfer, "adv_pool_transfer")

    @property
    def restoring(self) -> bool:
        """Some inputs carry a corruption under the noise (target: the clean sign): a restoration prior."""
        return self.corrupt > 0 or self.adversarial > 0 or self.corrupt_warp > 0


CORRUPT_PX = (3, 12)  # side of an occluding patch, pixels
CORRUPT_EPS = (8 / 255, 32 / 255)  # range of the additive pattern's amplitude, [0, 1] units
WARP_PX = (0.3, 3.0)  # peak displacement of a random warp, pixels
WARP_GRIDS = (3, 4, 6, 8)  # control points per side of a random warp's coarse field
CORRUPT_SIGMA = (0.01, 1.0)  # noise levels of corrupted inputs: log-uniform (restoration matters most at low σ)
RESTORE_WEIGHT_SIGMA = 0.1  # corrupted inputs are weighted as if σ were at least this
FEATURE_SIGMA_MAX = 0.5  # the feature loss applies to inputs up to this noise level


def corrupt_batch(y: torch.Tensor, p: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a share ``p`` of the images ``y`` (N×C×H×W in [−1, 1]): per picked image a patch and an additive
    sign pattern, each with probability 0.6 (a patch when neither is drawn); see the module docstring. Returns
    the corrupted copy and which images were picked."""
    n, c, h, w = y.shape
    pick = torch.rand(n, generator=g) < p
    use_patch = torch.rand(n, generator=g) < 0.6
    use_add = pick & (torch.rand(n, generator=g) < 0.6)
    use_patch = pick & (use_patch | ~use_add)
    # patches: a rectangle per image, content by type (flat colour, uniform texture, saturated pixels)
    lo, hi = CORRUPT_PX
    ph = torch.randint(lo, hi + 1, (n,), generator=g)
    pw = torch.randint(lo, hi + 1, (n,), generator=g)
    r0 = (torch.rand(n, generator=g) * (h - ph + 1)).long()
    c0 = (torch.rand(n, generator=g) * (w - pw + 1)).long()
    rows, cols = torch.arange(h), torch.arange(w)
    inside = (((rows[None] >= r0[:, None]) & (rows[None] < (r0 + ph)[:, None]))[:, :, None]
              & ((cols[None] >= c0[:, None]) & (cols[None] < (c0 + pw)[:, None]))[:, None, :])
    mask = (inside & use_patch[:, None, None]).unsqueeze(1).to(y.dtype)  # N×1×H×W
    flat = torch.rand(n, c, 1, 1, generator=g).expand(n, c, h, w)
    texture = torch.rand(n, c, h, w, generator=g)
    saturated = (torch.rand(n, c, h, w, generator=g) < 0.5).to(y.dtype)
    style = torch.randint(0, 3, (n,), generator=g).view(n, 1, 1, 1)
    content = torch.where(style == 0, flat, torch.where(style == 1, texture, saturated)) * 2 - 1
    out = y * (1 - mask) + content * mask
    # additive: ±ε at a random scale (adversarial patterns are saturated and partly low-frequency)
    lo_eps, hi_eps = CORRUPT_EPS
    eps = 2 * (lo_eps + (hi_eps - lo_eps) * torch.rand(n, generator=g)) * use_add.to(y.dtype)
    scale_of = torch.randint(0, 3, (n,), generator=g)
    for i, scale in enumerate((1, 2, 4)):
        at = scale_of == i
        signs = torch.randint(0, 2, (n, c, h // scale, w // scale), generator=g).to(y.dtype) * 2 - 1
        signs = signs.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        out = out + (eps * at.to(y.dtype)).view(n, 1, 1, 1) * signs
    return out.clamp(-1.0, 1.0), pick


def warp_batch(y: torch.Tensor, p: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a share ``p`` of the images ``y`` (N×C×H×W) by random smooth flows: per picked image a coarse field of
    G×G control points (G from WARP_GRIDS) with uniform (dx, dy) in [−1, 1], bicubically upsampled to H×W, scaled
    to a peak displacement uniform in WARP_PX pixels, applied with the purifiers' bilinear warp (border padding).
    Returns the warped copy and which images were picked."""
    from edgepure.perturb.families import Flow

    n, _, h, w = y.shape
    pick = torch.rand(n, generator=g) < p
    grid_of = torch.randint(0, len(WARP_GRIDS), (n,), generator=g)
    amp = WARP_PX[0] + (WARP_PX[1] - WARP_PX[0]) * torch.rand(n, generator=g)
    flow = torch.zeros(n, 2, h, w, dtype=y.dtype)
    for i, size in enumerate(WARP_GRIDS):
        coarse = torch.rand(n, 2, size, size, generator=g) * 2 - 1  # drawn for every image: a fixed random stream
        at = grid_of == i
        if bool(at.any()):
            flow[at] = torch.nn.functional.interpolate(coarse[at].to(y.dtype), size=(h, w), mode="bicubic",
                                                       align_corners=True)
    peak = flow.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    flow = flow / peak * (amp * pick).view(n, 1, 1, 1).to(y.dtype)
    warp = Flow(eps=None, smooth_size=1, image_size=h).to(y.device)
    out = warp(y, {"flow": flow.to(y.device)})
    return torch.where(pick.view(n, 1, 1, 1).to(y.device), out, y), pick


ADV_FAMILIES = ("patch", "additive")


def adversarial_batch(y: torch.Tensor, labels: torch.Tensor, classifier: torch.nn.Module, steps: int,
                      g: torch.Generator, additive: float = 0.5) -> torch.Tensor:
    """``y`` (N×C×H×W in [−1, 1]) attacked by PGD on ``classifier``: the first images with the protocol's patch,
    the last ⌊additive·N⌋ with its additive noise (budgets of ``create_perturbation(..., "gtsrb")``; half
    and half by default); returned in [−1, 1]."""
    from edgepure.attacks import PGD
    from edgepure.perturb import create_perturbation

    x = (y + 1) / 2
    out = x.clone()
    n_add = int(additive * len(x))  # floor: half and half puts the odd image in the patch half
    for fam, idx in zip(ADV_FAMILIES, torch.arange(len(x)).split([len(x) - n_add, n_add])):
        if len(idx):
            pert = create_perturbation(fam, "gtsrb", image_size=x.shape[-1])
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            out[idx] = PGD(classifier, pert, steps=steps, seed=seed)(x[idx], labels[idx]).detach()
    return out.clamp(0, 1) * 2 - 1


def adversarial_pool(images: torch.Tensor, labels: torch.Tensor, classifier: torch.nn.Module, steps: int,
                     additive: float, cache: Path, seed: int = 0, log: Any = None,
                     device: str | torch.device = "cpu", method: str = "apgd", transfer: str = "loss") -> torch.Tensor:
    """Blind APGD-CE examples of ``images`` (uint8 NCHW) in [−1, 1]: the first images patched, the last
    ⌊additive·N⌋ noised (as :func:`adversarial_batch` splits them), each family one cached run of
    :func:`edgepure.evaluate.robust.blind_examples`. ``transfer="loss"`` keeps each image's highest-loss iterate (what
    an attacker sends, and the evaluation's blind threat): a purifier trained on barely-fooling iterates learns to undo
    the easiest examples only."""
    from edgepure.evaluate.robust import blind_examples

    x = images.float() / 255
    out = torch.empty_like(x)
    n_add = int(additive * len(x))
    for fam, idx in zip(ADV_FAMILIES, torch.arange(len(x)).split([len(x) - n_add, n_add])):
        if len(idx):
            out[idx] = blind_examples(classifier, x[idx], labels[idx], fam, steps, seed, cache, log=log, device=device,
                                      method=method, transfer=transfer)
    return out.clamp(0, 1) * 2 - 1


def corrupted_sigmas(n: int, g: torch.Generator, high: float | None = None) -> torch.Tensor:
    """Noise levels for corrupted inputs, log-uniform on ``CORRUPT_SIGMA`` (or up to ``high``)."""
    lo, hi = CORRUPT_SIGMA
    hi = hi if high is None else high
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=g))


def sample_sigmas(n: int, cfg: PriorConfig, g: torch.Generator) -> torch.Tensor:
    lo, hi = cfg.focus
    focus = lo + (hi - lo) * torch.rand(n, generator=g)
    broad = torch.exp(cfg.p_mean + cfg.p_std * torch.randn(n, generator=g))
    pick = torch.rand(n, generator=g) < cfg.focus_p
    return torch.where(pick, focus, broad)


def _edm_loss_and_output(model: torch.nn.Module, y: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                         observed: torch.Tensor | None, weight_sigma: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """EDM's weighted denoising loss of ``model`` at ``y`` (the target) and its output; the noise is added to
    ``observed`` (None: ``y``; a corrupted copy for a restoration prior). ``weight_sigma`` (None: ``sigma``) sets EDM's
    weight λ(σ) = (σ² + σd²)/(σ·σd)², which evens out the σ² scale of a denoising error."""
    sd = float(getattr(model, "sigma_data", 0.5))
    ws = sigma if weight_sigma is None else weight_sigma
    weight = (ws**2 + sd**2) / (ws * sd) ** 2
    x = y if observed is None else observed
    d = model(x + sigma.view(-1, 1, 1, 1) * noise, sigma)
    return (weight * (d - y).square().flatten(1).mean(1)).mean(), d


Corruption = Callable[[torch.Tensor, float, torch.Generator], "tuple[torch.Tensor, torch.Tensor]"]


def _denoised(model: torch.nn.Module, images: torch.Tensor, sigma: float, seed: int, batch_size: int,
              corrupted: Corruption | None = None, observed: torch.Tensor | None = None
              ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Per batch of the clean ``images`` (uint8): its slice, the clean batch in [−1, 1] and ``D`` at ``sigma`` of it
    (every image corrupted first by ``corrupted`` — ``corrupt_batch`` or ``warp_batch`` — if given, or of
    ``observed``: given inputs in [−1, 1]); noise from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    for i in range(0, len(images), batch_size):
        at = slice(i, i + batch_size)
        y = images[at].float() / 127.5 - 1
        x = corrupted(y, 1.0, g)[0] if corrupted is not None else y
        if observed is not None:
            x = observed[at]
        yield at, y, model(x + sigma * torch.randn(y.shape, generator=g), torch.full((len(y),), sigma))


def _mean_error(model: torch.nn.Module, images: torch.Tensor, sigma: float, seed: int, batch_size: int,
                corrupted: Corruption | None = None, observed: torch.Tensor | None = None) -> float:
    """Mean squared error of ``D`` at ``sigma`` against the clean images (see ``_denoised``)."""
    total = sum(float((d - y).square().flatten(1).mean(1).sum())
                for _, y, d in _denoised(model, images, sigma, seed, batch_size, corrupted, observed))
    return total / max(len(images), 1)


def _to01(z: torch.Tensor) -> torch.Tensor:
    """[−1, 1] (a denoiser's output, clipped) to the classifier's [0, 1]."""
    return (z.clamp(-1, 1) + 1) / 2


@torch.no_grad()
def validate_prior(model: torch.nn.Module, images: torch.Tensor, sigmas: tuple[float, ...] = VAL_SIGMAS,
                   batch_size: int = 256, seed: int = 1234, corrupt: bool = False,
                   attacked: torch.Tensor | None = None, classifier: torch.nn.Module | None = None,
                   labels: torch.Tensor | None = None, warp: bool = False) -> dict[str, float]:
    """Mean squared denoising error per noise level (images uint8 NCHW; errors in [−1, 1] units); with
    ``corrupt`` also the restoration error at σ 0.1 and 0.5 (``restore@…``), with ``attacked`` (adversarial
    versions of ``images`` in [−1, 1]) the restoration error of those at σ 0.1 (``adversarial@0.1``), and the mean
    of the restoration errors and ``mse@0.5`` (``mix``, what picks the best checkpoint of a restoration prior); with
    ``classifier`` and ``labels`` its accuracy on the denoisings at σ 0.1 of the clean (``accuracy@0.1``) and the
    attacked images (``adversarial_accuracy@0.1``); with ``warp`` the restoration error of warped images at σ 0.1
    (``unwarp@0.1``, part of ``mix``)."""
    model.eval()
    out: dict[str, float] = {}
    if classifier is not None and labels is not None:
        sources = [("accuracy@0.1", None)] + ([("adversarial_accuracy@0.1", attacked)] if attacked is not None else [])
        for key, observed in sources:
            right = sum(int((classifier(_to01(d)).argmax(1) == labels[at]).sum())
                        for at, _, d in _denoised(model, images, 0.1, seed + 3, batch_size, observed=observed))
            out[key] = right / max(len(images), 1)
    if corrupt:  # the restoration task: corrupted inputs, clean targets (fixed corruptions and noise)
        for level in (0.1, 0.5):
            out[f"restore@{level:g}"] = _mean_error(model, images, level, seed + 1, batch_size, corrupted=corrupt_batch)
    if warp:
        out["unwarp@0.1"] = _mean_error(model, images, 0.1, seed + 4, batch_size, corrupted=warp_batch)
    if attacked is not None:
        out["adversarial@0.1"] = _mean_error(model, images, 0.1, seed + 2, batch_size, observed=attacked)
    for s in sigmas:
        out[f"mse@{s:g}"] = _mean_error(model, images, s, seed, batch_size)
    parts = [v for k, v in out.items() if k.startswith(("restore@", "adversarial@", "unwarp@"))]
    if parts and "mse@0.5" in out:
        out["mix"] = (out["mse@0.5"] + sum(parts)) / (1 + len(parts))
    return out


def _check_config(cfg: PriorConfig) -> list[tuple[str, int]]:
    """Refuse settings that make no run (before anything is written); returns the pool's attacks (method, steps)."""
    from edgepure.evaluate.robust import parse_attack_methods

    if cfg.epochs <= 0 or cfg.batch_size <= 0:
        raise ConfigError(f"epochs and batch size must be positive, got {cfg.epochs} and {cfg.batch_size}")
    if not 0 <= cfg.ema < 1:
        raise ConfigError(f"ema decay must be in [0, 1), got {cfg.ema}")
    lo, hi = cfg.focus
    if not 0 < lo <= hi:
        raise ConfigError(f"focus noise range must satisfy 0 < low ≤ high, got {cfg.focus}")
    if not 0 <= cfg.corrupt <= 1 or not 0 <= cfg.adversarial <= 1 or not 0 <= cfg.corrupt_warp <= 1:
        raise ConfigError(f"corrupt, corrupt_warp and adversarial must be shares in [0, 1], got {cfg.corrupt}, "
                          f"{cfg.corrupt_warp} and {cfg.adversarial}")
    if cfg.adversarial > 0 and cfg.adv_steps < 1:
        raise ConfigError(f"adv_steps must be ≥ 1, got {cfg.adv_steps}")
    if cfg.feature_weight < 0:
        raise ConfigError(f"feature_weight must be ≥ 0, got {cfg.feature_weight}")
    if not 0 <= cfg.adv_additive <= 1:
        raise ConfigError(f"adv_additive must be a share in [0, 1], got {cfg.adv_additive}")
    if cfg.adv_pool < 0:
        raise ConfigError(f"adv_pool must be ≥ 0 images, got {cfg.adv_pool}")
    if not 0 <= cfg.adv_pool_share <= 1 or cfg.adv_pool_steps < 1:
        raise ConfigError(f"adv_pool_share must be a share in [0, 1] and adv_pool_steps ≥ 1, got {cfg.adv_pool_share} "
                          f"and {cfg.adv_pool_steps}")
    methods = parse_attack_methods(cfg.adv_pool_method, cfg.adv_pool_steps, option="adv_pool_method")
    if cfg.adv_pool > 0 and cfg.adversarial == 0:
        raise ConfigError("adv_pool needs adversarial > 0 (the share of inputs taken from the pool), got 0")
    if not CORRUPT_SIGMA[0] < cfg.adv_sigma_max <= CORRUPT_SIGMA[1]:
        raise ConfigError(f"adv_sigma_max must be in ({CORRUPT_SIGMA[0]:g}, {CORRUPT_SIGMA[1]:g}], got {cfg.adv_sigma_max}")
    return methods


@dataclass
class _PriorData:
    """What a prior run trains and validates on: images uint8 NCHW; with adversarial inputs or the feature loss also
    the classifier (on the run's device), the attacked validation images and the pool, both in [−1, 1]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    val_labels: torch.Tensor
    classifier: torch.nn.Module | None = None
    val_attacked: torch.Tensor | None = None
    pool: tuple[torch.Tensor, torch.Tensor] | None = None  # clean images and their examples (one stack per attack)


def _load_data(cfg: PriorConfig, size: int) -> _PriorData:
    """The training split and ``val_n`` held-out images (the same every epoch and every run)."""
    common = dict(size=size, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, progress=True)
    train = open_dataset(cfg.data, "train", **common)
    val = open_dataset(cfg.data, "val", **common)
    pick = torch.randperm(len(val.images), generator=torch.Generator().manual_seed(0))[: cfg.val_n]
    return _PriorData(to_tensor(train.images), torch.from_numpy(train.labels).long(), to_tensor(val.images)[pick],
                      torch.from_numpy(val.labels).long()[pick])


def _add_adversaries(data: _PriorData, cfg: PriorConfig, methods: list[tuple[str, int]], out: Path, log: Any,
                     device: str | torch.device) -> None:
    """With adversarial inputs or the feature loss: the classifier, the attacked validation images and the pool."""
    from edgepure.models.loading import on_device

    if not (cfg.adversarial > 0 or cfg.feature_weight > 0):
        return
    raw = frozen(resolve_classifier(cfg.classifier))  # the module itself: blind_examples keys its cache by its weights
    data.classifier = on_device(raw, device)
    if cfg.adv_pool > 0:
        _add_pool(data, raw, cfg, methods, out, log, device)
    elif cfg.adversarial > 0:
        data.val_attacked = adversarial_batch(data.x_val.float() / 127.5 - 1, data.val_labels, data.classifier,
                                              cfg.adv_steps, torch.Generator().manual_seed(4321), cfg.adv_additive)


def _add_pool(data: _PriorData, raw_classifier: torch.nn.Module, cfg: PriorConfig, methods: list[tuple[str, int]],
              out: Path, log: Any, device: str | torch.device) -> None:
    """The pool (``adv_pool`` training images attacked once by each of ``methods``) and the validation set attacked by
    the first of them (on its first half with ``adv_pool_share`` < 1, the second half as on the fly)."""
    x_train, y_train, x_val, v_labels = data.x_train, data.y_train, data.x_val, data.val_labels
    if cfg.adv_pool > len(x_train):
        raise ConfigError(f"adv_pool asks for {cfg.adv_pool} images, the training split has {len(x_train)}")
    cache = Path(cfg.adv_cache) if cfg.adv_cache else out
    pool_idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.adv_pool]
    log(f"adversarial pool: blind {', '.join(f'{m.upper()}-{s}' for m, s in methods)} on {cfg.adv_pool} training images, "
        f"cached in {cache}")
    data.pool = (x_train[pool_idx], torch.stack([
        adversarial_pool(x_train[pool_idx], y_train[pool_idx], raw_classifier, steps, cfg.adv_additive, cache, log=log,
                         device=device, method=method, transfer=cfg.adv_pool_transfer) for method, steps in methods]))
    data.val_attacked = adversarial_pool(x_val, v_labels, raw_classifier, methods[0][1], cfg.adv_additive, cache,
                                         log=log, device=device, method=methods[0][0], transfer=cfg.adv_pool_transfer)
    if cfg.adv_pool_share < 1:
        half = len(x_val) // 2
        data.val_attacked[half:] = adversarial_batch(x_val[half:].float() / 127.5 - 1, v_labels[half:], data.classifier,
                                                     cfg.adv_steps, torch.Generator().manual_seed(4321), cfg.adv_additive)


class _PriorLoss:
    """One batch's loss (``fit``'s ``loss_fn``): EDM's loss on randomly shifted training images; for a restoration prior
    part of the inputs warped, corrupted or attacked (target clean); with ``feature_weight`` the classifier-feature
    term. Every draw from the batch's generator, in a fixed order (resumption replays it)."""

    def __init__(self, cfg: PriorConfig, net: torch.nn.Module, data: _PriorData) -> None:
        self.cfg, self.net, self.data = cfg, net, data

    def __call__(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        cfg, classifier = self.cfg, self.data.classifier
        y = random_shift(self.data.x_train[idx].float() / 127.5 - 1, cfg.shift, g)
        sigma = sample_sigmas(len(y), cfg, g)
        observed, weight_sigma = None, None
        if cfg.restoring:
            observed, sigma, weight_sigma = self._restoration(y, idx, sigma, g)
        loss, d = _edm_loss_and_output(self.net, y, sigma, torch.randn(y.shape, generator=g), observed, weight_sigma)
        near = sigma <= FEATURE_SIGMA_MAX
        if cfg.feature_weight > 0 and classifier is not None and bool(near.any()):
            loss = loss + cfg.feature_weight * feature_loss(classifier, _to01(d[near]), _to01(y[near]))
        return loss

    def _restoration(self, y: torch.Tensor, idx: torch.Tensor, sigma: torch.Tensor, g: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The inputs under the noise, the noise levels and the levels EDM's weight reads; a pool example replaces its
        target in ``y`` too (in place)."""
        cfg = self.cfg
        observed, picked = y, torch.zeros(len(y), dtype=torch.bool)
        if cfg.corrupt_warp > 0:  # first the geometry, then stickers / patterns on the warped sign
            observed, picked = warp_batch(y, cfg.corrupt_warp, g)
        observed, patched = corrupt_batch(observed, cfg.corrupt, g)
        picked = picked | patched
        adv = torch.zeros(len(y), dtype=torch.bool)
        if self.data.classifier is not None and cfg.adversarial > 0:
            adv = torch.rand(len(y), generator=g) < cfg.adversarial
            self._attack(y, observed, idx, adv, g)
            picked = picked | adv
        sigma = torch.where(picked, corrupted_sigmas(len(y), g), sigma)
        if cfg.adv_sigma_max != CORRUPT_SIGMA[1]:
            sigma = torch.where(adv, corrupted_sigmas(len(y), g, cfg.adv_sigma_max), sigma)
        # a restoration error does not shrink with σ: EDM's weight, ∝ 1/σ² at low σ, is held at λ(0.1)
        return observed, sigma, torch.where(picked, sigma.clamp_min(RESTORE_WEIGHT_SIGMA), sigma)

    def _attack(self, y: torch.Tensor, observed: torch.Tensor, idx: torch.Tensor, adv: torch.Tensor,
                g: torch.Generator) -> None:
        """The inputs ``adv`` picks become adversarial examples (in place): a share from the pool, the rest PGD."""
        cfg, pool = self.cfg, self.data.pool
        from_pool = torch.zeros_like(adv)
        if pool is not None:
            from_pool = adv & (torch.rand(len(y), generator=g) < cfg.adv_pool_share)
        if pool is not None and bool(from_pool.any()):
            # a random pool image and its clean target, shifted together
            j = torch.randint(0, len(pool[0]), (int(from_pool.sum()),), generator=g)
            # which attack's example: drawn only with several (one attack keeps the random stream as it was)
            a = torch.randint(0, len(pool[1]), (len(j),), generator=g) if len(pool[1]) > 1 else torch.zeros_like(j)
            pair = random_shift(torch.cat([pool[0][j].float() / 127.5 - 1, pool[1][a, j]], 1), cfg.shift, g)
            y[from_pool], observed[from_pool] = pair[:, : y.shape[1]], pair[:, y.shape[1] :]
        fly = adv & ~from_pool
        if bool(fly.any()):
            observed[fly] = adversarial_batch(y[fly], self.data.y_train[idx][fly], self.data.classifier, cfg.adv_steps,
                                              g, cfg.adv_additive)


def train_prior(cfg: PriorConfig, resume: bool = False, log: Any = print,
                device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train ``cfg.model`` on the training split of ``cfg.data``; checkpoints go to ``cfg.out``.

    The best checkpoint is the one with the lowest validation error at σ = 0.5 (of the EMA weights
    when ``ema`` > 0). Resuming from the last checkpoint continues exactly as the uninterrupted run. ``device``
    runs the prior and the classifier there (:func:`edgepure.models.loading.on_device`); batches, noise and the
    attacks' draws are made on the CPU.
    """
    from edgepure.models.loading import on_device

    methods = _check_config(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = create_prior(cfg.model, **cfg.model_kwargs)
    if cfg.init is not None and not resume:
        init_from(model, resolve_prior(cfg.init), cfg.init, cfg.model)
    net = on_device(model, device)  # moves the model: before fit builds the optimiser and the EMA copy
    size = int(getattr(model, "input_size", 32))
    data = _load_data(cfg, size)
    _add_adversaries(data, cfg, methods, out, log, device)

    def validate(m: torch.nn.Module) -> dict[str, float]:
        return validate_prior(on_device(m, device), data.x_val, corrupt=cfg.corrupt > 0, attacked=data.val_attacked,
                              classifier=data.classifier, labels=data.val_labels, warp=cfg.corrupt_warp > 0)

    return fit(model, cfg, len(data.x_train), _PriorLoss(cfg, net, data), validate, out,
               score="mix" if cfg.restoring else "mse@0.5", minimize=True, best_key="best_val_mse",
               record={"kind": "prior", "input_size": size, "dataset": "gtsrb"}, resume=resume, log=log)
