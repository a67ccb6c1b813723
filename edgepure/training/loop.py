"""The epoch loop the image-network trainers share (prior, blind-spot, IMPure): Adam with warm-up and cosine
decay, gradient clipping, an EMA of the weights that is validated and shipped, best/last checkpoints as
safetensors + JSON, exact resumption, and a step limit for smoke runs.

A trainer gives the model, its config (``epochs``, ``batch_size``, ``lr``, ``warmup_steps``, ``seed``,
``ema``, ``grad_clip``, ``max_steps``), the number of training samples, ``loss_fn(index, generator)`` for one
batch and ``validate(model) -> metrics``; the loop does the rest.

The classifier keeps a loop of its own (:mod:`edgepure.training.classifier`): SGD with weight-decay groups, warm-up
in epochs, a synthetic share drawn anew each epoch, DDP under torchrun (per-rank shards weighted into the global
batch, per-rank draws, summed metrics, rank 0 alone writing) and training accuracies per step. Each would be a hook
here that no other trainer uses; both loops take their schedule, EMA and resumption from
:mod:`edgepure.training.common` and :func:`edgepure.training.checkpoint.load_last`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from edgepure.training.checkpoint import load_last, save_checkpoint
from edgepure.training.common import ema_copy, ema_update, lr_at

__all__ = ["fit"]


def fit(model: torch.nn.Module, cfg: Any, n_train: int, loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
        validate: Callable[[torch.nn.Module], dict[str, float]], out: Path, *, score: str, minimize: bool,
        best_key: str, record: dict[str, Any], resume: bool = False, log: Callable[[str], None] = print,
        digits: int = 5) -> dict[str, Any]:
    """Train ``model`` for ``cfg.epochs``; the best checkpoint has the best ``metrics[score]`` (lowest when
    ``minimize``), kept in the record as ``best_key``. ``record`` adds fields to every checkpoint record."""
    from tqdm import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    ema_model = ema_copy(model, cfg.ema)
    sign = 1.0 if minimize else -1.0
    start_epoch, history, best = 0, [], math.inf
    if resume:
        saved = load_last(out, model, opt, ema_model, cfg)
        start_epoch, history = int(saved["epoch"]) + 1, list(saved.get("history", []))
        best = sign * float(saved.get(best_key, sign * math.inf))
        log(f"resuming from epoch {start_epoch} of {cfg.epochs} ({out})")
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total, steps_done = steps_per_epoch * cfg.epochs, 0
    result: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(n_train, generator=g)
        model.train()
        t0, seen, loss_sum = time.time(), 0, 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
        for i in bar:
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg.warmup_steps, cfg.lr)
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = loss_fn(idx, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if ema_model is not None:
                ema_update(ema_model, model, cfg.ema, step)
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.{digits - 1}f}")
            steps_done += 1
            if cfg.max_steps is not None and steps_done >= cfg.max_steps:
                break
        shipped = ema_model if ema_model is not None else model
        metrics = validate(shipped)
        entry = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), **metrics, "seconds": round(time.time() - t0, 1)}
        history.append(entry)
        value = sign * metrics[score]
        result = {"name": cfg.model, **record, "config": asdict(cfg),
                  "model_config": getattr(model, "edgepure_config", {}), "epoch": epoch, "history": history,
                  best_key: sign * min(best, value)}
        if value < best:
            best = value
            save_checkpoint(out, "best", shipped, None, result)
        if ema_model is not None:
            save_checkpoint(out, "last_ema", ema_model, None, result)
        save_checkpoint(out, "last", model, opt, result)
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['train_loss']:.{digits}f} "
            + " ".join(f"{k} {v:.{digits}f}" for k, v in metrics.items()) + f" {entry['seconds']}s")
        if cfg.max_steps is not None and steps_done >= cfg.max_steps:
            break
    return result
