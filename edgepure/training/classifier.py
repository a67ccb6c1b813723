"""Training a classifier: seeded, resumable (safetensors checkpoints), with progress and validation."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgepure.data import open_dataset
from edgepure.data.base import ImageSet
from edgepure.evaluate.clean import evaluate_clean
from edgepure.models.registry import create_classifier
from edgepure.runtime.errors import ConfigError
from edgepure.training.adversarial import ADV_RESUME_KEYS, Crafter, adversarial_loss, budget_dataset, check_adversarial
from edgepure.training.augment import AugmentConfig, augment_batch
from edgepure.training.checkpoint import RESUME_KEYS, check_resumable, load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "cutmix_batch", "train_classifier"]


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "signnet_s"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0
    synth: int = 0  # synthetic renders mixed into each epoch
    synth_pool: int = 8600  # distinct synthetic renders drawn from
    augment: bool = True
    occlude: float = 0.25  # probability of an occluding patch per image
    occlude_max: int = 11  # largest patch side (pixels)
    stickers: float = 0.0  # probability of 2-6 small (mostly white) sticker patches per image
    cutmix: float = 0.0  # probability that a batch is CutMixed (a box from a shuffled partner, labels by area)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); evaluated and shipped
    max_steps: int | None = None  # stop early (smoke tests); None = full epochs
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # start from these weights: a registered classifier's shipped ones, or a checkpoint
    # purifier-aware training: this share of the images is replaced by the prior's denoising D(x + σn; σ),
    # σ ~ U(denoise_low, denoise_high) in [−1, 1] units, what a diffusion jump or NAPPure's denoised start hands on
    denoise: float = 0.0
    denoise_low: float = 0.25
    denoise_high: float = 1.2
    denoise_prior: str = "edm_unet_s"
    # adversarial training (edgepure.training.adversarial): a comma list of perturbation families ("" = off), crafted
    # per batch by ``adv_attack`` with ``adv_steps`` steps at eval robust's budgets, one family per image drawn at
    # random or the worst of all (``adv_strategy``); loss (1 − w)·CE(clean) + w·CE(adv) with w = ``adv_weight``
    # (None: 0.5), or TRADES with ``trades`` β > 0
    adversarial: str = ""
    adv_steps: int = 5
    adv_strategy: str = "random"
    adv_attack: str = "pgd"
    adv_weight: float | None = None
    trades: float = 0.0


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def _load_data(cfg: TrainConfig, size: int) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    common = dict(size=size, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, progress=True)
    train = open_dataset(cfg.data, "train", **common)
    val = open_dataset(cfg.data, "val", **common)
    synth = None
    if cfg.synth > 0:
        synth = open_dataset("synth", "train", n=cfg.synth_pool, seed=cfg.seed, size=size)
    return train, val, synth


@torch.no_grad()
def denoise_batch(x: torch.Tensor, prior: torch.nn.Module, p: float, low: float, high: float,
                  g: torch.Generator) -> torch.Tensor:
    """Replace each image of ``x`` ([0, 1]) with probability ``p`` by ``D(y + σn; σ)`` (y = 2x − 1, σ ~ U(low, high)),
    all randomness from ``g``."""
    n = x.shape[0]
    pick = torch.rand(n, generator=g) < p
    sigma = low + (high - low) * torch.rand(n, generator=g, dtype=x.dtype)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
    if not bool(pick.any()):
        return x
    y = x[pick] * 2 - 1
    s = sigma[pick]
    d = prior(y + s.view(-1, 1, 1, 1) * noise[pick], s)
    out = x.clone()
    out[pick] = ((d + 1) * 0.5).clamp(0.0, 1.0)
    return out


def cutmix_batch(x: torch.Tensor, p: float, g: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """CutMix (Yun et al. 2019) with probability ``p`` per batch: every image gets one box, of area share
    λ ~ U(0, 1) and the batch's aspect, from the image ``partner[i]`` of a random permutation. Returns the mixed
    batch, the permutation (None when the batch was left alone) and the pasted share of the area, which the
    loss gives to the partner's label. All draws from ``g``; with ``p`` = 0 nothing is drawn."""
    if p <= 0 or float(torch.rand(1, generator=g)) >= p:
        return x, None, 0.0
    n, _, h, w = x.shape
    partner = torch.randperm(n, generator=g)
    lam = float(torch.rand(1, generator=g))
    bh, bw = int(round(h * math.sqrt(lam))), int(round(w * math.sqrt(lam)))
    r0 = int(torch.randint(0, h - bh + 1, (1,), generator=g))
    c0 = int(torch.randint(0, w - bw + 1, (1,), generator=g))
    out = x.clone()
    out[:, :, r0 : r0 + bh, c0 : c0 + bw] = x[partner, :, r0 : r0 + bh, c0 : c0 + bw]
    return out, partner, bh * bw / (h * w)


def _batch_loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, g: torch.Generator,
                crafter: Crafter | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The loss of one batch, its clean logits and (with ``crafter``) the adversarial logits. The adversarial
    examples are crafted before CutMix: an attack needs whole images and their own labels."""
    x_adv = crafter(x, y, g)[0] if crafter is not None else None
    x, partner, share = cutmix_batch(x, cfg.cutmix, g)
    adv_logits = None
    if x_adv is None:
        logits = net(x)
    else:
        logits, adv_logits = net(torch.cat([x, x_adv])).split(len(x))  # one pass: BatchNorm sees both
    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if partner is not None:
        loss = (1.0 - share) * loss + share * F.cross_entropy(logits, y[partner], label_smoothing=cfg.label_smoothing)
    if adv_logits is not None:
        loss = adversarial_loss(loss, logits, adv_logits, y, cfg.adv_weight, cfg.trades, cfg.label_smoothing)
    return loss, logits, adv_logits


def _make_crafter(cfg: TrainConfig, families: tuple[str, ...], model: torch.nn.Module, size: int,
                  device: str | torch.device) -> Crafter | None:
    if not families:
        return None
    return Crafter(model, families, budget_dataset(cfg.data), size, cfg.adv_steps, strategy=cfg.adv_strategy,
                   attack=cfg.adv_attack, trades=cfg.trades > 0, device=device)


def _init_weights(model: torch.nn.Module, cfg: TrainConfig) -> None:
    from edgepure.models.loading import resolve_classifier
    from edgepure.training.checkpoint import init_from

    if cfg.init is not None:
        init_from(model, resolve_classifier(cfg.init), cfg.init, cfg.model)


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def train_classifier(cfg: TrainConfig, resume: bool = False, log: Any = print,
                     device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; write ``last``/``best`` checkpoints into ``cfg.out``.

    Shuffling, augmentation and dropout draw from generators seeded by ``(seed, epoch)``, so a run resumed
    from the checkpoint of epoch e continues exactly as the uninterrupted run would have. ``device`` runs the
    networks there (:func:`edgepure.models.loading.on_device`); data and augmentation stay on the CPU.
    With ``cfg.adversarial`` each batch also trains on adversarial examples crafted against the model
    (:mod:`edgepure.training.adversarial`), their draws from the same generators.
    """
    from edgepure.models.loading import on_device

    from tqdm import tqdm

    if cfg.epochs <= 0 or cfg.batch_size <= 0:
        raise ConfigError(f"epochs and batch size must be positive, got {cfg.epochs} and {cfg.batch_size}")
    if not 0.0 <= cfg.cutmix <= 1.0:
        raise ConfigError(f"cutmix must be a probability in [0, 1], got {cfg.cutmix}")
    if not 0.0 <= cfg.denoise <= 1.0 or not 0.0 < cfg.denoise_low <= cfg.denoise_high:
        raise ConfigError(f"denoise must be in [0, 1] and 0 < denoise_low ≤ denoise_high, got {cfg.denoise}, "
                          f"{cfg.denoise_low}, {cfg.denoise_high}")
    families = check_adversarial(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = create_classifier(cfg.model, **cfg.model_kwargs)
    _init_weights(model, cfg)
    net = on_device(model, device)  # moves the model: before the optimiser and the EMA copy, whose tensors follow it
    prior = None
    if cfg.denoise > 0:
        from edgepure.models.registry import create_prior

        prior = create_prior(cfg.denoise_prior, pretrained=True).eval()
        for p in prior.parameters():
            p.requires_grad_(False)
        prior = on_device(prior, device)
    size = int(getattr(model, "input_size", 32))
    crafter = _make_crafter(cfg, families, model, size, device)
    train, val, synth = _load_data(cfg, size)
    n_classes = int(getattr(model, "num_classes", 0))
    if n_classes and int(train.labels.max()) >= n_classes:
        raise ConfigError(f"the data has labels up to {int(train.labels.max())}, the model has {n_classes} classes")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=0.9, nesterov=True,
    )
    ema_model = None
    if cfg.ema > 0:
        if not 0 < cfg.ema < 1:
            raise ConfigError(f"ema decay must be in (0, 1), got {cfg.ema}")
        ema_model = copy.deepcopy(model).eval()
        for p in ema_model.parameters():
            p.requires_grad_(False)
    start_epoch, history, best = 0, [], -1.0
    if resume:
        record = load_checkpoint(out, "last", model, opt)
        if ema_model is not None:
            load_checkpoint(out, "last_ema", ema_model)
        check_resumable(out, record, cfg, RESUME_KEYS + ADV_RESUME_KEYS)
        start_epoch = int(record["epoch"]) + 1
        history = list(record.get("history", []))
        best = float(record.get("best_val_accuracy", -1.0))
        log(f"resuming from epoch {start_epoch} of {cfg.epochs} ({out})")

    x_real = _to_tensor(train.images)
    y_real = torch.from_numpy(train.labels)
    x_syn = _to_tensor(synth.images) if synth is not None else None
    y_syn = torch.from_numpy(synth.labels) if synth is not None else None
    n_per_epoch = len(x_real) + (cfg.synth if synth is not None else 0)
    steps_per_epoch = math.ceil(n_per_epoch / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    aug_cfg = (AugmentConfig(p_occlude=cfg.occlude, occlude_px=(4, cfg.occlude_max), p_stickers=cfg.stickers) if cfg.augment
               else AugmentConfig.none())
    result: dict[str, Any] = {}
    steps_done = 0

    for epoch in range(start_epoch, cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        xs, ys = x_real, y_real
        if x_syn is not None:
            pick = torch.randperm(len(x_syn), generator=g)[: cfg.synth]
            xs, ys = torch.cat([x_real, x_syn[pick]]), torch.cat([y_real, y_syn[pick]])  # type: ignore[index]
        order = torch.randperm(len(xs), generator=g)
        model.train()
        t0, seen, loss_sum, correct, adv_correct = time.time(), 0, 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
        for i in bar:
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, warmup, cfg.lr)
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = xs[idx].float() / 255.0
            if cfg.augment:
                x = augment_batch(x, aug_cfg, g)
            if prior is not None:
                x = denoise_batch(x, prior, cfg.denoise, cfg.denoise_low, cfg.denoise_high, g)
            y = ys[idx]
            loss, logits, adv_logits = _batch_loss(net, x, y, cfg, g, crafter)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema_model is not None:
                _ema_update(ema_model, model, min(cfg.ema, (1 + step) / (10 + step)))
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            adv_correct += int((adv_logits.argmax(1) == y).sum()) if adv_logits is not None else 0
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            **({"adv_acc": f"{adv_correct / seen:.3f}"} if crafter is not None else {}))
            steps_done += 1
            if cfg.max_steps is not None and steps_done >= cfg.max_steps:
                break
        shipped = ema_model if ema_model is not None else model
        metrics = evaluate_clean(on_device(shipped, device), val)
        entry = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            **({"train_adv_accuracy": adv_correct / max(seen, 1)} if crafter is not None else {}),
            "val_accuracy": metrics["accuracy"],
            "val_n": metrics["n"],
            "seconds": round(time.time() - t0, 1),
        }
        history.append(entry)
        record = {
            "name": cfg.model,
            "config": asdict(cfg),
            "model_config": getattr(model, "edgepure_config", {}),
            "epoch": epoch,
            "history": history,
            "best_val_accuracy": max(best, metrics["accuracy"]),
            "input_size": size,
            "class_names": list(train.class_names),
        }
        if metrics["accuracy"] > best:
            best = metrics["accuracy"]
            save_checkpoint(out, "best", shipped, None, record)
        if ema_model is not None:
            save_checkpoint(out, "last_ema", ema_model, None, record)
        save_checkpoint(out, "last", model, opt, record)
        result = record
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['train_loss']:.4f} train {entry['train_accuracy']:.4f} "
            f"val {entry['val_accuracy']:.4f} (n={entry['val_n']}) {entry['seconds']}s"
        )
        if cfg.max_steps is not None and steps_done >= cfg.max_steps:
            break
    return result
