"""Training IMPure's reconstruction network on (perturbed, clean) pairs: seeded, resumable, validated.

Each training batch of clean training-split images is cut into five equal parts: one stays clean, the
others get one perturbation family each (conv, patch, flow, additive; budgets of the NAPPure protocol),
half of them with random parameters inside the budget and half attacked by 2-step PGD on the classifier
(IMPure fine-tunes on adversarial/clean pairs). Loss, as IMPure's:

    L1(R(x_in), x) + w·Σ_s ‖F_s(mix) − F_s(x)‖₁ / ‖F_s(x)‖₁

with ``F_s`` the classifier's stage activations and ``mix`` the input with a random contiguous run of
patches replaced by the reconstruction (IMPure's mixing of purified and input images before the feature
network). Validation: the classifier's accuracy on the reconstructions of a fixed perturbed held-out set
(the best checkpoint has the highest), and the L1 error to the clean images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgepure.data import open_dataset
from edgepure.models.registry import create_prior
from edgepure.runtime.errors import ConfigError
from edgepure.training.common import to_tensor
from edgepure.training.loop import fit

__all__ = ["ImpureConfig", "feature_loss", "perturb_batch", "train_impure"]

FAMILIES = ("conv", "patch", "flow", "additive")


@dataclass
class ImpureConfig:
    data: str
    out: str
    model: str = "impure_s"
    classifier: str | None = None  # the feature network and the attacked model (default: the shipped one)
    epochs: int = 4
    batch_size: int = 80
    lr: float = 2e-3
    warmup_steps: int = 200
    seed: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0
    val_n: int = 500
    feature_weight: float = 0.1
    ema: float = 0.999
    grad_clip: float = 1.0
    max_steps: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def perturb_batch(x: torch.Tensor, y: torch.Tensor, classifier: torch.nn.Module, g: torch.Generator) -> torch.Tensor:
    """``x`` cut in 5 parts: clean, then one family each (half random parameters, half PGD-2)."""
    from edgepure.attacks import PGD
    from edgepure.perturb import create_perturbation

    parts = list(torch.arange(len(x)).chunk(5))
    out = x.clone()
    for fam, idx in zip(FAMILIES, parts[1:]):
        if len(idx) == 0:
            continue
        pert = create_perturbation(fam, "gtsrb", image_size=x.shape[-1])
        half = len(idx) // 2
        rnd, atk = idx[:half], idx[half:]
        if len(rnd):
            with torch.no_grad():
                out[rnd] = pert(x[rnd], pert.random(x[rnd], g)).clamp(0, 1)
        if len(atk):
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            out[atk] = PGD(classifier, pert, steps=2, seed=seed)(x[atk], y[atk]).detach()
    return out


def _mix(inp: torch.Tensor, rec: torch.Tensor, patch: int, g: torch.Generator) -> torch.Tensor:
    """``inp`` with a random contiguous run (raster order) of patches replaced by ``rec``, per image."""
    n, _, h, w = inp.shape
    gh, gw = h // patch, w // patch
    total = gh * gw
    length = torch.randint(total // 4, total + 1, (n, 1), generator=g)
    start = (torch.rand(n, 1, generator=g) * (total - length + 1)).floor()
    pos = torch.arange(total)[None]
    keep = ((pos >= start) & (pos < start + length)).to(inp.dtype).view(n, 1, gh, gw)
    keep = keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return keep * rec + (1 - keep) * inp


def feature_loss(classifier: torch.nn.Module, mixed: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Σ over the classifier's stages of ‖F_s(mixed) − F_s(clean)‖₁ / ‖F_s(clean)‖₁ (the clean side without grad)."""
    with torch.no_grad():
        ref = classifier.stage_features(clean)  # type: ignore[operator]
    got = classifier.stage_features(mixed)  # type: ignore[operator]
    return sum(((a - b).abs().mean() / (b.abs().mean() + 1e-6) for a, b in zip(got, ref)), torch.zeros(()))


@torch.no_grad()
def _validate(model: torch.nn.Module, classifier: torch.nn.Module, clean: torch.Tensor, perturbed: torch.Tensor,
              labels: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
    model.eval()
    rec = torch.cat([model(perturbed[i : i + 250], noise[i : i + 250]) for i in range(0, len(clean), 250)])
    rec_clean = torch.cat([model(clean[i : i + 250], noise[i : i + 250]) for i in range(0, len(clean), 250)])
    acc = lambda z: float((classifier(z).argmax(1) == labels).float().mean())  # noqa: E731
    return {"val_accuracy": acc(rec), "val_accuracy_clean": acc(rec_clean), "val_accuracy_unpurified": acc(perturbed),
            "val_l1": float((rec - clean).abs().mean())}


def train_impure(cfg: ImpureConfig, resume: bool = False, log: Any = print,
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train ``cfg.model`` on the training split of ``cfg.data``; checkpoints go to ``cfg.out``. ``device`` runs the
    network and the classifier there; batches, perturbations' draws and noise are made on the CPU."""
    from edgepure.models.loading import frozen, load_classifier, on_device

    if cfg.epochs <= 0 or cfg.batch_size < 5:
        raise ConfigError(f"need epochs > 0 and a batch size ≥ 5 (five parts), got {cfg.epochs} and {cfg.batch_size}")
    if not 0 <= cfg.ema < 1 or cfg.feature_weight < 0:
        raise ConfigError(f"need 0 ≤ ema < 1 and feature_weight ≥ 0, got {cfg.ema} and {cfg.feature_weight}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = create_prior(cfg.model, **cfg.model_kwargs)
    net = on_device(model, device)  # moves the model: before fit builds the optimiser and the EMA copy
    classifier = on_device(frozen(load_classifier(cfg.classifier)), device)
    size = int(getattr(model, "input_size", 32))
    common = dict(size=size, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, progress=True)
    train = open_dataset(cfg.data, "train", **common)
    val = open_dataset(cfg.data, "val", **common).sample(cfg.val_n, 0)
    x_train, y_train = to_tensor(train.images), torch.from_numpy(train.labels)
    gv = torch.Generator().manual_seed(4321)
    v_clean, v_labels = to_tensor(val.images).float() / 255, torch.from_numpy(val.labels)
    v_pert = perturb_batch(v_clean, v_labels, classifier, gv)
    v_noise = torch.randn(v_clean.shape, generator=gv)

    patch = int(getattr(model, "patch", 4))

    def loss_fn(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        clean, labels = x_train[idx].float() / 255, y_train[idx]
        inp = perturb_batch(clean, labels, classifier, g)
        rec = net(inp, torch.randn(inp.shape, generator=g))
        loss = (rec - clean).abs().mean()
        if cfg.feature_weight > 0:
            loss = loss + cfg.feature_weight * feature_loss(classifier, _mix(inp, rec, patch, g), clean)
        return loss

    return fit(model, cfg, len(x_train), loss_fn,
               lambda m: _validate(on_device(m, device), classifier, v_clean, v_pert, v_labels, v_noise), out, score="val_accuracy",
               minimize=False, best_key="best_val_accuracy",
               record={"kind": "impure", "input_size": size, "dataset": "gtsrb"}, resume=resume, log=log, digits=4)
