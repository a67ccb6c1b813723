"""Training a blind-spot network self-supervised (NCIS's restorer): seeded, resumable, validated.

Each batch of training-split images ``x`` in [0, 1] gets zero-mean noise ``n`` of a random strength (per
image: Gaussian with σ ~ U(0, ``noise_max``), or uniform in ±σ√3, half each — symmetric residuals like an
L∞ attack's), and the loss is ``‖B(x + n) − (x + n)‖²``: the noisy image is its own target, no clean
image is used as a label. Because ``B``'s output at a pixel never sees that pixel, the best it can do is
predict the clean value from the context. Validation: the MSE of ``B(x + n)`` against the *clean*
held-out images at fixed noise levels (what the network is for), and of the noisy input for reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgepure.data import open_dataset
from edgepure.models.registry import create_prior
from edgepure.runtime.errors import ConfigError
from edgepure.training.common import random_shift, to_tensor
from edgepure.training.loop import fit

__all__ = ["BlindSpotConfig", "train_blindspot", "validate_blindspot"]

VAL_NOISE = (0.0, 8 / 255, 16 / 255, 32 / 255)


@dataclass
class BlindSpotConfig:
    data: str
    out: str
    model: str = "bsn_s"
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    seed: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0
    val_n: int = 1024
    noise_max: float = 32 / 255
    shift: int = 2
    ema: float = 0.999
    grad_clip: float = 1.0
    max_steps: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def add_symmetric_noise(x: torch.Tensor, noise_max: float, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    std = noise_max * torch.rand(n, 1, 1, 1, generator=g)
    gauss = torch.randn(x.shape, generator=g)
    unif = (torch.rand(x.shape, generator=g) * 2 - 1) * math.sqrt(3.0)
    pick = (torch.rand(n, 1, 1, 1, generator=g) < 0.5).to(x.dtype)
    return x + std * (pick * gauss + (1 - pick) * unif)


@torch.no_grad()
def validate_blindspot(model: torch.nn.Module, images: torch.Tensor, levels: tuple[float, ...] = VAL_NOISE,
                       batch_size: int = 256, seed: int = 1234) -> dict[str, float]:
    """MSE against the clean images of ``B(x + σn)`` per Gaussian noise level σ (images uint8 NCHW)."""
    model.eval()
    out: dict[str, float] = {}
    for s in levels:
        g = torch.Generator().manual_seed(seed)
        total, n = 0.0, 0
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].float() / 255
            y = x + s * torch.randn(x.shape, generator=g)
            total += float((model(y) - x).square().flatten(1).mean(1).sum())
            n += len(x)
        out[f"mse@{s * 255:.0f}"] = total / max(n, 1)
    return out


def train_blindspot(cfg: BlindSpotConfig, resume: bool = False, log: Any = print) -> dict[str, Any]:
    """Train ``cfg.model`` on the training split of ``cfg.data``; the best checkpoint has the lowest
    validation MSE at 16/255 noise (of the EMA weights when ``ema`` > 0)."""
    if cfg.epochs <= 0 or cfg.batch_size <= 0:
        raise ConfigError(f"epochs and batch size must be positive, got {cfg.epochs} and {cfg.batch_size}")
    if not 0 <= cfg.ema < 1 or cfg.noise_max < 0:
        raise ConfigError(f"need 0 ≤ ema < 1 and noise_max ≥ 0, got {cfg.ema} and {cfg.noise_max}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = create_prior(cfg.model, **cfg.model_kwargs)
    size = int(getattr(model, "input_size", 32))
    common = dict(size=size, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, progress=True)
    x_train = to_tensor(open_dataset(cfg.data, "train", **common).images)
    val = to_tensor(open_dataset(cfg.data, "val", **common).images)
    x_val = val[torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[: cfg.val_n]]

    def loss_fn(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        noisy = add_symmetric_noise(random_shift(x_train[idx].float() / 255, cfg.shift, g), cfg.noise_max, g)
        return (model(noisy) - noisy).square().mean()

    return fit(model, cfg, len(x_train), loss_fn, lambda m: validate_blindspot(m, x_val), out, score="mse@16",
               minimize=True, best_key="best_val_mse",
               record={"kind": "blindspot", "input_size": size, "dataset": "gtsrb"}, resume=resume, log=log)
