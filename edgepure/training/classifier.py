"""Training a classifier: seeded, resumable (safetensors checkpoints), with progress and validation; on one
process, or on several under ``torchrun`` (PyTorch DDP, :mod:`edgepure.training.distributed`)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgepure.data import open_dataset
from edgepure.data.base import ImageSet
from edgepure.evaluate.clean import evaluate_clean
from edgepure.models.registry import create_classifier
from edgepure.runtime.errors import ConfigError
from edgepure.training import distributed
from edgepure.perturb import budget_dataset
from edgepure.training.adversarial import ADV_RESUME_KEYS, Crafter, adversarial_loss, check_adversarial
from edgepure.training.augment import AugmentConfig, augment_batch
from edgepure.training.checkpoint import RESUME_KEYS, load_last, save_checkpoint
from edgepure.training.common import ema_copy, ema_update, lr_at, to_tensor
from edgepure.training.distributed import Ranks

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


def _load_data(cfg: TrainConfig, size: int, progress: bool = True) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    common = dict(size=size, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, progress=progress)
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


def _check_config(cfg: TrainConfig) -> None:
    if cfg.epochs <= 0 or cfg.batch_size <= 0:
        raise ConfigError(f"epochs and batch size must be positive, got {cfg.epochs} and {cfg.batch_size}")
    if not 0.0 <= cfg.cutmix <= 1.0:
        raise ConfigError(f"cutmix must be a probability in [0, 1], got {cfg.cutmix}")
    if not 0.0 <= cfg.denoise <= 1.0 or not 0.0 < cfg.denoise_low <= cfg.denoise_high:
        raise ConfigError(f"denoise must be in [0, 1] and 0 < denoise_low ≤ denoise_high, got {cfg.denoise}, "
                          f"{cfg.denoise_low}, {cfg.denoise_high}")
    if cfg.ema > 0 and not cfg.ema < 1:
        raise ConfigError(f"ema decay must be in (0, 1), got {cfg.ema}")


def _new_model(cfg: TrainConfig) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)  # the same initialisation on every rank
    model = create_classifier(cfg.model, **cfg.model_kwargs)
    _init_weights(model, cfg)
    return model


def _load_prior(cfg: TrainConfig, device: torch.device) -> torch.nn.Module | None:
    """The frozen prior of ``--denoise`` on ``device``; None without it."""
    from edgepure.models.loading import on_device
    from edgepure.models.registry import create_prior

    if cfg.denoise <= 0:
        return None
    prior = create_prior(cfg.denoise_prior, pretrained=True).eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    return on_device(prior, device)


def _make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=0.9, nesterov=True,
    )


@dataclass
class _Loop:
    """What the epoch loop carries besides the data: the networks, the optimiser, the schedule and the ranks."""

    cfg: TrainConfig
    model: torch.nn.Module  # the module itself: checkpoints, the EMA, attacks and validation use it
    net: torch.nn.Module  # what the training forward pass goes through (on --device; DDP under torchrun)
    opt: torch.optim.Optimizer
    ema_model: torch.nn.Module | None
    prior: torch.nn.Module | None
    crafter: Crafter | None
    aug_cfg: AugmentConfig
    ranks: Ranks
    device: torch.device
    steps_per_epoch: int
    warmup: int
    steps_done: int = 0

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @property
    def stopped(self) -> bool:
        return self.cfg.max_steps is not None and self.steps_done >= self.cfg.max_steps


def _resume(out: Path, loop: _Loop, log: Any) -> tuple[int, list[dict[str, Any]], float]:
    """Load the run folder's last checkpoint into ``loop``: ``(first epoch to run, history, best accuracy)``."""
    cfg, ranks = loop.cfg, loop.ranks
    record = load_last(out, loop.model, loop.opt, loop.ema_model, cfg, RESUME_KEYS + ADV_RESUME_KEYS)
    start_epoch = int(record["epoch"]) + 1
    log(f"resuming from epoch {start_epoch} of {cfg.epochs} ({out})")
    before = int(record.get("world_size", 1))
    if before != ranks.world_size:
        log(f"the checkpoint was trained by {before} process(es), this run has {ranks.world_size}: the same global "
            "batches and schedule, other per-rank draws (augmentation, attack starts)")
    return start_epoch, list(record.get("history", [])), float(record.get("best_val_accuracy", -1.0))


def _epoch_data(data: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None], cfg: TrainConfig,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The epoch's images, labels and order (the synthetic draw and the permutation from the shared ``g``)."""
    x_real, y_real, x_syn, y_syn = data
    xs, ys = x_real, y_real
    if x_syn is not None:
        pick = torch.randperm(len(x_syn), generator=g)[: cfg.synth]
        xs, ys = torch.cat([x_real, x_syn[pick]]), torch.cat([y_real, y_syn[pick]])  # type: ignore[index]
    return xs, ys, torch.randperm(len(xs), generator=g)


def _batch_inputs(loop: _Loop, xs: torch.Tensor, ys: torch.Tensor, idx: torch.Tensor, g: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = loop.cfg
    x = xs[idx].float() / 255.0
    if cfg.augment:
        x = augment_batch(x, loop.aug_cfg, g)
    if loop.prior is not None:
        x = denoise_batch(x, loop.prior, cfg.denoise, cfg.denoise_low, cfg.denoise_high, g)
    return x, ys[idx]


def _step(loop: _Loop, step: int, loss: torch.Tensor, weight: float) -> None:
    """One optimiser step on ``weight`` × ``loss`` (DDP averages the ranks' gradients during ``backward``)."""
    loop.opt.zero_grad(set_to_none=True)
    (loss if weight == 1.0 else loss * weight).backward()
    loop.opt.step()
    if loop.ema_model is not None:
        ema_update(loop.ema_model, loop.model, loop.cfg.ema, step)


def _train_epoch(loop: _Loop, epoch: int, xs: torch.Tensor, ys: torch.Tensor, order: torch.Tensor,
                 g: torch.Generator) -> list[float]:
    """Train one epoch on this rank's share of each global batch of ``order``; returns this rank's
    ``[images, loss sum, correct, adversarial correct]``."""
    from tqdm import tqdm

    cfg, ranks = loop.cfg, loop.ranks
    gr = distributed.rank_generator(g, cfg.seed * 100_003 + epoch, ranks)
    loop.model.train()
    seen, loss_sum, correct, adv_correct = 0, 0.0, 0, 0
    bar = tqdm(range(loop.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False,
               disable=not ranks.main)
    for i in bar:
        step = epoch * loop.steps_per_epoch + i
        for group in loop.opt.param_groups:
            group["lr"] = lr_at(step, loop.total, loop.warmup, cfg.lr)
        batch = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        idx = distributed.shard(batch, ranks)
        x, y = _batch_inputs(loop, xs, ys, idx, gr)
        loss, logits, adv_logits = _batch_loss(loop.net, x, y, cfg, gr, loop.crafter)
        _step(loop, step, loss, distributed.shard_weight(len(idx), len(batch), ranks))
        seen += len(y)
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        adv_correct += int((adv_logits.argmax(1) == y).sum()) if adv_logits is not None else 0
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                        **({"adv_acc": f"{adv_correct / seen:.3f}"} if loop.crafter is not None else {}))
        loop.steps_done += 1
        if loop.stopped:
            break
    return [seen, loss_sum, correct, adv_correct]


def _end_epoch(loop: _Loop, epoch: int, sums: list[float], t0: float, val: ImageSet, history: list[dict[str, Any]],
               best: float, meta: dict[str, Any], log: Any) -> tuple[dict[str, Any], float]:
    """Validate, record and (rank 0) checkpoint the epoch: ``(record, best validation accuracy so far)``."""
    from edgepure.models.loading import on_device

    cfg, out = loop.cfg, Path(loop.cfg.out)
    distributed.sync_buffers([loop.model, loop.ema_model], loop.ranks)
    seen, loss_sum, correct, adv_correct = distributed.all_sum(sums, loop.ranks, loop.device)
    shipped = loop.ema_model if loop.ema_model is not None else loop.model
    metrics = evaluate_clean(on_device(shipped, loop.device), val)
    entry = {
        "epoch": epoch,
        "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        **({"train_adv_accuracy": adv_correct / max(seen, 1)} if loop.crafter is not None else {}),
        "val_accuracy": metrics["accuracy"],
        "val_n": metrics["n"],
        "seconds": round(time.time() - t0, 1),
    }
    history.append(entry)
    record = {
        "name": cfg.model,
        "config": asdict(cfg),
        "model_config": getattr(loop.model, "edgepure_config", {}),
        "epoch": epoch,
        "history": history,
        "best_val_accuracy": max(best, metrics["accuracy"]),
        **meta,
        "world_size": loop.ranks.world_size,
    }
    improved = metrics["accuracy"] > best
    best = max(best, metrics["accuracy"])
    if loop.ranks.main:
        if improved:
            save_checkpoint(out, "best", shipped, None, record)
        if loop.ema_model is not None:
            save_checkpoint(out, "last_ema", loop.ema_model, None, record)
        save_checkpoint(out, "last", loop.model, loop.opt, record)
    log(f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['train_loss']:.4f} train {entry['train_accuracy']:.4f} "
        f"val {entry['val_accuracy']:.4f} (n={entry['val_n']}) {entry['seconds']}s")
    return record, best


def train_classifier(cfg: TrainConfig, resume: bool = False, log: Any = print,
                     device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; write ``last``/``best`` checkpoints into ``cfg.out``.

    Shuffling, augmentation and dropout draw from generators seeded by ``(seed, epoch)``, so a run resumed
    from the checkpoint of epoch e continues exactly as the uninterrupted run would have. ``device`` runs the
    networks there (:func:`edgepure.models.loading.on_device`); data and augmentation stay on the CPU.
    With ``cfg.adversarial`` each batch also trains on adversarial examples crafted against the model
    (:mod:`edgepure.training.adversarial`), their draws from the same generators.

    Started by ``torchrun --nproc_per_node N`` the N processes train one model with DistributedDataParallel,
    ``cfg.batch_size`` being the global batch (:mod:`edgepure.training.distributed`); rank 0 writes and logs.
    """
    _check_config(cfg)
    families = check_adversarial(cfg)
    with distributed.session(device) as (ranks, dev):
        return _train(cfg, families, resume, distributed.main_only(log, ranks), ranks, dev)


def _train(cfg: TrainConfig, families: tuple[str, ...], resume: bool, log: Any, ranks: Ranks,
           device: torch.device) -> dict[str, Any]:
    out = Path(cfg.out)
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
    # moved (and under torchrun wrapped) before the optimiser and the EMA copy, whose tensors follow it
    model, net = distributed.wrap(_new_model(cfg), ranks, device)
    prior = _load_prior(cfg, device)
    size = int(getattr(model, "input_size", 32))
    crafter = _make_crafter(cfg, families, model, size, device)
    train, val, synth = _load_data(cfg, size, progress=ranks.main)
    n_classes = int(getattr(model, "num_classes", 0))
    if n_classes and int(train.labels.max()) >= n_classes:
        raise ConfigError(f"the data has labels up to {int(train.labels.max())}, the model has {n_classes} classes")
    data = (to_tensor(train.images), torch.from_numpy(train.labels),
            to_tensor(synth.images) if synth is not None else None,
            torch.from_numpy(synth.labels) if synth is not None else None)
    steps = distributed.steps_per_epoch(len(data[0]) + (cfg.synth if synth is not None else 0), cfg.batch_size, ranks)
    aug_cfg = (AugmentConfig(p_occlude=cfg.occlude, occlude_px=(4, cfg.occlude_max), p_stickers=cfg.stickers)
               if cfg.augment else AugmentConfig.none())
    loop = _Loop(cfg, model, net, _make_optimizer(model, cfg), ema_copy(model, cfg.ema), prior, crafter, aug_cfg, ranks,
                 device, steps, int(cfg.warmup_epochs * steps))
    start_epoch, history, best = _resume(out, loop, log) if resume else (0, [], -1.0)
    meta = {"input_size": size, "class_names": list(train.class_names)}
    result: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(distributed.rank_seed(cfg.seed * 100_003 + epoch, ranks))  # dropout: per rank
        xs, ys, order = _epoch_data(data, cfg, g)
        t0 = time.time()
        sums = _train_epoch(loop, epoch, xs, ys, order, g)
        result, best = _end_epoch(loop, epoch, sums, t0, val, history, best, meta, log)
        if loop.stopped:
            break
    return result
