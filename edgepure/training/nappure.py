"""Learning NAPPure's hyper-parameters through its K unrolled steps (seeded, resumable).

A fixed-K NAPPure run is a differentiable function of its step sizes, its λ1 and λ2 and the noise level σ₀ of its
denoised start. This module learns them for one kind and one K: the per-step step sizes of the image and of
every θ group (``"x"``, ``"mask"``, ``"flow"``, ``"conv"``, ``"additive"``, ``"w"``), each λ and σ₀, by Adam on
their logarithms, minimising the classifier's cross-entropy on purified images — clean images and blind
adversarial examples (APGD-CE on the classifier alone, the protocol of ``edgepure eval robust``) of the
*training tracks*, so the validation tracks that every robustness number is measured on stay unseen. The
gradient is the one an adaptive attack takes (through the prior's vector-Jacobian products), here with respect
to the hyper-parameters. Each learned value stays within ``max_scale``× of where it started.

The result is a settings file for ``create_purifier("nappure", kind=…, steps=K, **settings)``: ``lam1``,
``lam2``, ``init_sigma`` and ``step_scale`` (the per-step multipliers on top of the configured schedule).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from edgepure.runtime.errors import ConfigError
from edgepure.training.checkpoint import write_json_atomic

__all__ = ["NAPPureTuneConfig", "learned_settings", "tune_nappure"]


@dataclass
class NAPPureTuneConfig:
    data: str
    out: str
    kind: str = "joint"
    steps: int = 8
    n: int = 256  # training-track images (each attacked by every attack)
    attacks: tuple[str, ...] = ("conv", "patch", "flow", "additive")
    attack_steps: int = 100
    iters: int = 60
    batch_size: int = 8  # images per source (clean and each attack) per iteration
    lr: float = 0.05  # Adam on the logarithms of the hyper-parameters
    max_scale: float = 4.0
    seed: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0
    classifier: Optional[str] = None  # name or checkpoint; None: the shipped classifier
    cache: Optional[str] = None  # folder of the adversarial examples (None: the run folder)
    snapshot_every: int = 5  # also keep the settings of every N-th iteration (settings-NNNN.json), to choose from
    prior: Optional[str] = None  # name or checkpoint; None: the kind's default prior (nappure.default_prior)


def _purifier(cfg: NAPPureTuneConfig):  # type: ignore[no-untyped-def]
    from edgepure.purifiers import create_purifier

    # learning starts from the hand-set settings, also where learned ones ship for this kind and K
    return create_purifier("nappure", kind=cfg.kind, steps=cfg.steps, tuned="none", prior=cfg.prior)


def _start(pur: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logarithms of the purifier's current hyper-parameters (the point learning starts from)."""
    from edgepure.perturb import Composite

    c = pur.cfg
    theta = pur.family.identity(x[:1])
    fixed = set(getattr(pur.family, "fixed", ()))
    groups = sorted({pur.step_group(k) for k in theta if k not in fixed})
    fams = [f.name for f in pur.family.families] if isinstance(pur.family, Composite) else [pur.family.name]
    start = {"lr.x": torch.tensor(pur.step_sizes("x"), dtype=torch.float64).log()}
    for g in groups:
        start[f"lr.{g}"] = torch.tensor(pur.step_sizes(g), dtype=torch.float64).clamp_min(1e-12).log()
    start["lam2"] = torch.tensor(math.log(c.lam2), dtype=torch.float64)
    for f in fams:
        start[f"lam1.{f}"] = torch.tensor(math.log(float(pur.lambda1(f))), dtype=torch.float64)
    if c.init_sigma is not None:
        start["init_sigma"] = torch.tensor(math.log(c.init_sigma), dtype=torch.float64)
    return start


def learned_settings(pur: Any, logs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """NAPPure settings (``lam1``, ``lam2``, ``init_sigma``, ``step_scale``) for learned logarithms ``logs``
    (``pur`` is left as it was)."""
    values = {k: v.detach().double().exp() for k, v in logs.items()}
    out: dict[str, Any] = {"lam2": float(values["lam2"]),
                           "lam1": dict(pur.cfg.lam1) | {k[5:]: float(v) for k, v in values.items() if k.startswith("lam1.")}}
    if "init_sigma" in values:
        out["init_sigma"] = float(values["init_sigma"])
    scale = {}
    configured, hyper = pur.cfg, pur.hyper
    pur.cfg, pur.hyper = replace(configured, step_scale=None), None  # step_scale multiplies the schedule alone
    try:
        for k, v in values.items():
            if k.startswith("lr."):
                base = pur.step_sizes(k[3:])
                scale[k[3:]] = [round(float(a) / b, 6) if b > 0 else 1.0 for a, b in zip(v.tolist(), base)]
    finally:
        pur.cfg, pur.hyper = configured, hyper
    out["step_scale"] = scale
    return out


def _adversarial(classifier: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: NAPPureTuneConfig,
                 cache: Path, log: Callable[[str], None], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Blind APGD-CE examples of every attack, computed once and kept in ``cache`` — the cache and keys of
    ``edgepure eval robust`` (same attack, batches and seeds), so the two share examples of the same images."""
    from edgepure.evaluate.robust import blind_examples

    return {a: blind_examples(classifier, x, y, a, cfg.attack_steps, cfg.seed, cache, log=log, device=device)
            for a in cfg.attacks}


def _check_config(cfg: NAPPureTuneConfig) -> None:
    from edgepure.purifiers.nappure import KINDS

    if cfg.steps < 1 or cfg.iters < 1 or cfg.batch_size < 1 or cfg.n < 1:
        raise ConfigError(f"steps, iters, batch size and n must be ≥ 1, got {cfg.steps}, {cfg.iters}, {cfg.batch_size}, {cfg.n}")
    if cfg.kind not in KINDS:
        raise ConfigError(f"nappure: unknown kind {cfg.kind!r} (expected one of {', '.join(KINDS)})")
    if not cfg.max_scale > 1:
        raise ConfigError(f"max_scale must be > 1, got {cfg.max_scale}")


class _Tuner:
    """The state of a tuning run: the images and their examples, the purifier and classifier on ``dev``, the learned
    logarithms and their Adam on the CPU, and what the run folder keeps."""

    def __init__(self, cfg: NAPPureTuneConfig, x_all: torch.Tensor, y_all: torch.Tensor, adv: dict[str, torch.Tensor],
                 classifier: torch.nn.Module, pur: Any, dev: torch.device) -> None:
        self.cfg, self.x_all, self.y_all, self.adv, self.classifier, self.pur, self.dev = (
            cfg, x_all, y_all, adv, classifier, pur, dev)
        self.start = _start(pur, x_all)
        self.logs = {k: v.clone().requires_grad_(True) for k, v in self.start.items()}
        self.opt = torch.optim.Adam(list(self.logs.values()), lr=cfg.lr)
        self.sources = ["clean", *cfg.attacks]
        self.history: list[dict[str, Any]] = []

    def resume(self, state_path: Path) -> int:
        """Load the run's state (refusing other settings); returns the first iteration to run."""
        st = json.loads(state_path.read_text())
        now = json.loads(json.dumps(asdict(self.cfg)))
        diff = sorted(k for k in now if k not in ("iters", "cache", "snapshot_every") and st["config"].get(k) != now[k])
        if diff:
            raise ConfigError(f"{state_path}: the run was started with other settings: "
                              + ", ".join(f"{k} {st['config'].get(k)!r} (now {now[k]!r})" for k in diff))
        with torch.no_grad():
            for k, v in st["logs"].items():
                self.logs[k].copy_(torch.tensor(v, dtype=torch.float64))
        for k, p in self.logs.items():
            self.opt.state[p] = {"step": torch.tensor(float(st["adam_step"])),
                                 "exp_avg": torch.tensor(st["adam_m"][k], dtype=torch.float64),
                                 "exp_avg_sq": torch.tensor(st["adam_v"][k], dtype=torch.float64)}
        self.history = st["history"]
        return int(st["iter"])

    def step(self, it: int) -> dict[str, Any]:
        """Iteration ``it``: one Adam step on a batch of every source; returns its record."""
        cfg, pur, logs = self.cfg, self.pur, self.logs
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
        idx = torch.randperm(len(self.x_all), generator=g)[: cfg.batch_size]
        xb = torch.cat([self.x_all[idx]] + [self.adv[a][idx] for a in cfg.attacks])
        yb = self.y_all[idx].repeat(len(self.sources))
        noise = pur.sample_noise(xb, g)
        self.opt.zero_grad()
        # one source at a time, gradients accumulated: the same gradient as the whole batch at once, in a fifth of
        # the memory (the graph through K steps and their second derivatives is large per image)
        parts, loss = [], torch.zeros(())
        for s in range(0, len(xb), cfg.batch_size):
            pur.hyper = {k: v.exp().float().to(self.dev) for k, v in logs.items()}  # the gradient flows back to the CPU
            part = self.classifier(pur(xb[s : s + cfg.batch_size].to(self.dev),
                                       noise[s : s + cfg.batch_size].to(self.dev))).cpu()
            part_loss = torch.nn.functional.cross_entropy(part, yb[s : s + cfg.batch_size], reduction="sum") / len(xb)
            part_loss.backward()
            parts.append(part.detach())
            loss = loss + part_loss.detach()
        logits = torch.cat(parts)
        for v in logs.values():  # a value that never reaches the output (θ's last step) gets a zero gradient
            if v.grad is None:
                v.grad = torch.zeros_like(v)
        self.opt.step()
        bound = math.log(cfg.max_scale)
        with torch.no_grad():
            for k, v in logs.items():
                v.copy_(torch.maximum(torch.minimum(v, self.start[k] + bound), self.start[k] - bound))
        pur.hyper = None
        ok = (logits.argmax(1) == yb).float().view(len(self.sources), -1).mean(1)
        return {"iter": it + 1, "loss": round(float(loss.detach()), 4), "seconds": round(time.perf_counter() - t0, 1),
                "accuracy": {s: round(float(a), 3) for s, a in zip(self.sources, ok)}}

    def save(self, out: Path, it: int) -> None:
        """``state.json`` and ``settings.json`` after iteration ``it`` (and every ``snapshot_every``-th settings)."""
        cfg, logs, opt = self.cfg, self.logs, self.opt
        st = {"config": asdict(cfg), "iter": it + 1, "history": self.history,
              "logs": {k: v.detach().tolist() for k, v in logs.items()},
              "adam_step": int(opt.state[logs["lam2"]]["step"]),
              "adam_m": {k: opt.state[v]["exp_avg"].tolist() for k, v in logs.items()},
              "adam_v": {k: opt.state[v]["exp_avg_sq"].tolist() for k, v in logs.items()}}
        write_json_atomic(out / "state.json", st)
        doc = {"kind": cfg.kind, "steps": cfg.steps, "prior": self.pur.config()["prior"], "iter": it + 1,
               "settings": learned_settings(self.pur, logs)}
        write_json_atomic(out / "settings.json", doc)
        if cfg.snapshot_every > 0 and (it + 1) % cfg.snapshot_every == 0:
            write_json_atomic(out / f"settings-{it + 1:04d}.json", doc)


def tune_nappure(cfg: NAPPureTuneConfig, resume: bool = False, log: Callable[[str], None] = print,
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """Learn the hyper-parameters of NAPPure ``cfg.kind`` at K = ``cfg.steps``; see the module docstring.
    Writes ``state.json`` (resumable, every iteration), ``settings.json`` (the learned settings, rewritten every
    iteration) and ``settings-NNNN.json`` every ``snapshot_every`` iterations: on held-out tracks the clean accuracy
    falls as the learning goes on (it only sees training-track images, which the classifier fits), so the
    iteration is chosen on held-out images (``benchmarks/nappure.py --images tune --set tuned=…``). ``device`` runs
    the attacks, the purifier and the classifier there; the learned values, Adam's state and every draw stay on the CPU."""
    from edgepure.data import open_dataset
    from edgepure.models.loading import frozen, resolve_classifier

    _check_config(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.json"
    if state_path.exists() and not resume:
        raise ConfigError(f"{state_path} exists: pass --resume to continue that run, or choose another --out")
    data = open_dataset(cfg.data, "train", n=cfg.n, seed=cfg.seed, size=32, val_fraction=cfg.val_fraction,
                        split_seed=cfg.split_seed)
    x_all = torch.from_numpy(data.as_float_nchw())
    y_all = torch.from_numpy(data.labels)
    classifier = frozen(resolve_classifier(cfg.classifier))
    dev = torch.device(device)
    adv = _adversarial(classifier, x_all, y_all, cfg, Path(cfg.cache) if cfg.cache else out, log, dev)
    classifier.to(dev)
    tuner = _Tuner(cfg, x_all, y_all, adv, classifier, _purifier(cfg).to(dev), dev)
    first = tuner.resume(state_path) if resume and state_path.exists() else 0
    for it in range(first, cfg.iters):
        rec = tuner.step(it)
        tuner.history.append(rec)
        log(json.dumps(rec))
        tuner.save(out, it)
    return json.loads((out / "settings.json").read_text())
