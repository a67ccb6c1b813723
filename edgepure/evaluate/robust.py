"""Robust evaluation: clean and robust accuracy of (purifier →) classifier per attack and threat model.

``benchmark(...)`` returns plain numbers (RobustBench style); ``edgepure eval robust`` prints them and
writes JSON, CSV and figures. An image counts as robust under an attack only if the defended pipeline
classifies it correctly clean and after the attack — on every noise draw it is scored with, for a stochastic
pipeline (:mod:`edgepure.evaluate.draws`); the ``worst`` column is the per-image worst case over every threat
model that was run (``threats=("worst",)`` runs the blind and the adaptive threat for it and shows it alone).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgepure.attacks import APGD, PGD, Threat, attack_target
from edgepure.attacks.base import check_transfer
from edgepure.data.base import ImageSet
from edgepure.evaluate.cache import AdvCache, shared_batches
from edgepure.evaluate.draws import (default_eot, default_resubmit, drawn_readings, right_by_majority,
                                     right_on_every_draw)
from edgepure.evaluate.worst import MASK_ENCODING, images_digest, pack_mask
from edgepure.models.loading import frozen
from edgepure.perturb import PERTURBATIONS, create_perturbation
from edgepure.purifiers import Purifier, create_purifier
from edgepure.runtime.errors import ConfigError

__all__ = ["ATTACK_METHODS", "AdvCache", "adversarial_key", "benchmark", "blind_examples", "blind_spec",
           "parse_attack_methods", "surrogate_of"]

ATTACK_METHODS = {"apgd": APGD, "pgd": PGD}


def parse_attack_methods(spec: str, steps: Optional[int] = None, option: str = "--blind-methods") -> list[tuple[str, int]]:
    """``"apgd:100,pgd:40"`` → [("apgd", 100), ("pgd", 40)]: attack methods of ``ATTACK_METHODS`` with their steps; a
    method without ``:STEPS`` takes ``steps`` (None: the steps are required). ``option`` names the setting in errors."""
    out: list[tuple[str, int]] = []
    for item in (s.strip() for s in spec.split(",")):
        method, _, n = item.partition(":")
        if method not in ATTACK_METHODS or (n and not (n.isdigit() and int(n) >= 1)) or (not n and steps is None):
            raise ConfigError(f"{option}: expected a comma list of METHOD{'[:STEPS]' if steps is not None else ':STEPS'} "
                              f"(METHOD one of {', '.join(ATTACK_METHODS)}, steps ≥ 1), got {spec!r}")
        out.append((method, int(n) if n else int(steps)))  # type: ignore[arg-type]
    if len(set(out)) != len(out):
        raise ConfigError(f"{option}: {spec!r} names an attack twice")
    return out


@torch.no_grad()
def _defended_predict(classifier: nn.Module, purifier: Optional[Purifier], x: torch.Tensor, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """Predictions of the deployed pipeline and the purified images (noise from a generator seeded by ``seed``)."""
    if purifier is None:
        return classifier(x).argmax(1).cpu().numpy(), x
    g = torch.Generator().manual_seed(seed)  # a CPU generator: the same noise on every device
    if int(getattr(purifier, "votes", 1)) > 1:  # the deployed pipeline votes; the figure shows the first draw
        from edgepure.export.voting import Voting

        vote = Voting(purifier, classifier, purifier.votes)  # type: ignore[attr-defined]
        noise = vote.sample_noise(x, g)
        xp = purifier(x, None if noise is None else noise[0])
        return vote(x, noise).argmax(1).cpu().numpy(), xp
    xp = purifier(x, purifier.sample_noise(x, g))
    return classifier(xp).argmax(1).cpu().numpy(), xp


def _hash_weights(h: Any, classifier: nn.Module, purifier: Optional[nn.Module]) -> None:
    for prefix, module in (("classifier.", classifier), ("purifier.", purifier)):
        if module is None:
            continue
        for name, t in sorted(module.state_dict().items()):
            h.update((prefix + name).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())


def _weights_digest(classifier: nn.Module, purifier: Optional[nn.Module]) -> str:
    """Which networks were scored: sha256 of the classifier's and purifier's weights (24 hex digits)."""
    h = hashlib.sha256()
    _hash_weights(h, classifier, purifier)
    return h.hexdigest()[:24]


def _pipeline_digest(classifier: nn.Module, purifier: Optional[nn.Module], device: torch.device) -> str:
    """What a prediction depends on besides the images and the noise seed: both networks' weights, the purifier's
    settings (votes included) and the device type."""
    h = hashlib.sha256(f"edgepure-scores-1 {device.type} ".encode())
    _hash_weights(h, classifier, purifier)
    if purifier is not None:
        h.update(json.dumps([_name(purifier), purifier.config()], sort_keys=True, default=str).encode())  # type: ignore[operator]
    return h.hexdigest()


def _examples(setup: _Setup, fresh: dict[int, torch.Tensor], k: int, chosen: Optional[np.ndarray]) -> np.ndarray:
    """The figure's clean / attacked / purified panels of ``k`` images: the first images the threat attacked (all of
    them when it attacked every image), then, if it attacked fewer than ``k``, the first of those it left out. Each
    purified panel is the reading its batch was scored with (same batch, same noise)."""
    x_all, batch_size = setup.x_all, setup.batch_size
    order = np.arange(len(x_all)) if chosen is None else np.concatenate([np.flatnonzero(chosen), np.flatnonzero(~chosen)])
    at = [(int(i), int(i) - int(i) % batch_size) for i in order[:k]]  # (image, start of its batch)
    purified = {s: setup.scoring.predict(fresh[s], setup.seed + s)[1] for s in {s for _, s in at}}
    panels = [(x_all[i], fresh[s][i - s], purified[s][i - s]) for i, s in at]
    return np.stack([np.stack([p[m].numpy() for p in panels]) for m in range(3)])


def _name(purifier: nn.Module) -> str:
    """The registered name of ``purifier`` (its class name if it was not built by ``create_purifier``)."""
    return getattr(purifier, "edgepure_name", type(purifier).__name__)


def surrogate_of(purifier: Purifier, **changes: Any) -> Purifier:
    """``purifier`` with the settings ``changes`` changed (e.g. ``steps=32`` of a 500-step reference NAPPure), its
    weights copied from ``purifier`` (shipped, trained or random alike) unless ``changes`` names another ``prior``:
    a stand-in for :func:`benchmark`'s ``surrogate``."""
    config = purifier.config()
    unknown = sorted(set(changes) - set(config))
    if unknown:
        raise ConfigError(f"surrogate: {', '.join(unknown)} is not a setting of the defense "
                          f"(expected one of {', '.join(sorted(config))})")
    name = getattr(purifier, "edgepure_name", None)
    if name is None:
        raise ConfigError(f"surrogate: {type(purifier).__name__} is not a registered purifier (create_purifier)")
    own_weights = "prior" not in changes
    stand_in = create_purifier(name, pretrained=not own_weights, **(config | changes))
    if own_weights:
        stand_in.load_state_dict(purifier.state_dict())
    return stand_in


def adversarial_key(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: dict[str, Any],
                 purifier: Optional[nn.Module] = None) -> str:
    """A key for adversarial examples: the weights of what the attack differentiates (the classifier, and the
    purifier for the adaptive threats), the images and the attack settings."""
    h = hashlib.sha256()
    _hash_weights(h, classifier, purifier)
    h.update(x.numpy().tobytes())
    h.update(y.numpy().tobytes())
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def blind_spec(attack: str, steps: int, seed: int, budget: Optional[dict[str, Any]] = None, dataset: str = "gtsrb",
               method: str = "apgd", eot: int = 1, restarts: int = 1, batch_size: int = 128,
               transfer: str = "loss") -> dict[str, Any]:
    """The attack settings that key cached examples (:func:`adversarial_key`): every batch of ``batch_size`` images
    attacked with seed ``seed`` + its offset. ``transfer`` enters the settings only where it is not ``"first"``: the
    examples cached before the setting existed were made with ``"first"`` and keep their keys, and no key of theirs
    can name examples of another transfer."""
    spec = {"attack": attack, "budget": budget or {}, "dataset": dataset, "method": method, "steps": steps,
            "eot": eot, "restarts": restarts, "seed": seed, "batch_size": batch_size}
    if check_transfer(transfer) != "first":
        spec["transfer"] = transfer
    return spec


def blind_examples(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, steps: int = 100,
                   seed: int = 0, cache_dir: Optional[str | Path] = None, dataset: str = "gtsrb",
                   log: Optional[Callable[[str], None]] = None, method: str = "apgd",
                   device: str | torch.device = "cpu", transfer: str = "loss") -> torch.Tensor:
    """Blind examples of ``attack`` (APGD-CE, or another of ``ATTACK_METHODS``) on ``classifier`` for the images ``x``
    (N×C×H×W in [0, 1], on the CPU) and labels ``y``: the attack of :func:`benchmark` (same batches and seeds, hence
    the same examples of the same images; ``transfer`` as its ``blind_transfer``), computed once on ``device`` (the
    classifier is moved there) and kept in ``cache_dir`` under :func:`benchmark`'s keys. Returned on the CPU."""
    if method not in ATTACK_METHODS:
        raise ConfigError(f"unknown attack method {method!r} (expected {', '.join(ATTACK_METHODS)})")
    store = AdvCache(Path(cache_dir) if cache_dir is not None else None)
    spec = blind_spec(attack, steps, seed, dataset=dataset, method=method, transfer=transfer)
    key = adversarial_key(classifier, x, y, spec)
    cached = store.load("blind", key, tuple(x.shape))
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    b = spec["batch_size"]
    dev = torch.device(device)
    classifier.to(dev)
    perturbation = create_perturbation(attack, dataset, image_size=x.shape[-1]).to(dev)
    attack_cls = ATTACK_METHODS[method]
    adv = torch.cat([attack_cls(classifier, perturbation, steps=steps, seed=seed + s, transfer=transfer)(
        x[s : s + b].to(dev), y[s : s + b].to(dev)).detach().cpu() for s in range(0, len(x), b)])
    if log is not None:
        with torch.no_grad():
            acc = float((classifier(adv.to(dev)).argmax(1).cpu() == y).float().mean())
        log(f"blind {attack} ({method} {steps}): {len(x)} examples in {time.perf_counter() - t0:.0f} s, classifier accuracy "
            f"{acc:.3f} ({transfer} transfer)")
    store.save("blind", key, adv)
    return adv


@dataclass
class _Setup:
    """What every attack and threat of one :func:`benchmark` run shares."""

    classifier: nn.Module
    attacked: Optional[Purifier]  # what the adaptive threats differentiate: the defense, or its surrogate
    x_all: torch.Tensor
    y_all: torch.Tensor
    dev: torch.device
    seed: int
    batch_size: int
    method: str
    steps: int
    restarts: int
    dataset: str
    eot: tuple[int, int]  # gradient samples per step: blind, adaptive threats
    blind_transfer: str
    cache: AdvCache
    scoring: "_Scoring"
    bar: Any = None

    def starts(self) -> list[int]:
        return list(range(0, len(self.x_all), self.batch_size))

    def threat_eot(self, threat: Threat) -> int:
        return self.eot[0] if threat is Threat.blind else self.eot[1]

    def transfer(self, threat: Threat) -> str:
        """The blind threat transfers what ``blind_transfer`` says; the adaptive threats score the model they attack,
        so an iterate that fools it is a success: they keep the first that does."""
        return self.blind_transfer if threat is Threat.blind else "first"


class _Scoring:
    """How the deployed pipeline reads a batch: ``draws`` noise draws per image (:mod:`edgepure.evaluate.draws`), read
    by PyTorch or by ``scorer``, each draw's reading kept in the cache's ``scores/``."""

    def __init__(self, classifier: nn.Module, purifier: Optional[Purifier], dev: torch.device, seed: int, draws: int,
                 scorer: Optional[Callable[[torch.Tensor, int], np.ndarray]], keep_examples: int, cache: AdvCache) -> None:
        self.classifier, self.purifier, self.dev, self.seed, self.draws = classifier, purifier, dev, seed, draws
        self.scorer, self.keep_examples = scorer, keep_examples
        self.store = cache if scorer is None else AdvCache(None)  # what a custom scorer runs cannot be keyed
        self.pipeline = _pipeline_digest(classifier, purifier, dev) if self.store.dir is not None else ""

    def predict(self, x: torch.Tensor, noise_seed: int) -> tuple[np.ndarray, torch.Tensor]:
        """Predictions and purified images of ``x`` with the noise of ``noise_seed``."""
        if self.scorer is not None and not self.keep_examples:  # the scorer decides; the torch pipeline would be wasted
            return self.scorer(x, noise_seed), x
        pred, purified = _defended_predict(self.classifier, self.purifier, x.to(self.dev), noise_seed)
        return (self.scorer(x, noise_seed) if self.scorer is not None else pred), purified.cpu()

    def key(self, noise_seed: int, x: torch.Tensor) -> str:
        """A reading's key: the pipeline, the noise seed and the images themselves (so a resumed run, or another
        process of a split one, reads a batch's reading instead of purifying it again)."""
        return hashlib.sha256(f"{self.pipeline} {noise_seed} ".encode() + x.numpy().tobytes()).hexdigest()[:24]

    def verdicts(self, batches: Iterable[tuple[int, torch.Tensor]], labels: np.ndarray, n: int,
                 tick: Optional[Callable[[], None]] = None,
                 on_wait: Optional[Callable[[int], None]] = None) -> tuple[np.ndarray, np.ndarray]:
        """Per image of the ``batches``: read right on every draw, and by the majority of the draws."""
        every, major = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        for s, preds in drawn_readings(self.store, batches, self.seed, self.draws, self.key,
                                       lambda sd, x: self.predict(x, sd)[0], on_wait):
            at = slice(s, s + preds.shape[1])
            every[at], major[at] = right_on_every_draw(preds, labels[at]), right_by_majority(preds, labels[at])
            if tick is not None:
                tick()
        return every, major


def _threat_key(setup: _Setup, name: str, budget: dict[str, Any], threat: Threat, chosen: Optional[np.ndarray]) -> str:
    """The cache key of a threat's examples ("" without a cache folder)."""
    if setup.cache.dir is None:
        return ""
    spec = blind_spec(name, setup.steps, setup.seed, budget=budget, dataset=setup.dataset, method=setup.method,
                      eot=setup.threat_eot(threat), restarts=setup.restarts, batch_size=setup.batch_size,
                      transfer=setup.transfer(threat))
    seen = None
    if threat is not Threat.blind:
        assert setup.attacked is not None
        # votes change the scoring, not the attack (one draw per gradient): not part of the key
        spec.update(threat=threat.value, defense=_name(setup.attacked),
                    defense_config={k: v for k, v in setup.attacked.config().items() if k != "votes"})
        seen = setup.attacked
    if chosen is not None:
        spec["attacked"] = pack_mask(chosen)
    return adversarial_key(setup.classifier, setup.x_all, setup.y_all, spec, seen)


class _AttackRun:
    """One attack family under one threat: attacks every image (or those of ``chosen``) batch by batch — each batch kept
    as it is done, so an interrupted run resumes after it, and batches another process of the same run holds waited
    for (processes given the same cache folder split the work) — then scores the examples."""

    def __init__(self, setup: _Setup, name: str, perturbation: Any, budget: dict[str, Any], threat: Threat,
                 chosen: Optional[np.ndarray]) -> None:
        self.setup, self.name, self.perturbation, self.threat, self.chosen = setup, name, perturbation, threat, chosen
        self.key = _threat_key(setup, name, budget, threat, chosen)
        self.fresh: dict[int, torch.Tensor] = {}  # the examples per batch offset

    def attack_images(self, s: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        setup, threat = self.setup, self.threat
        target = attack_target(threat, setup.attacked, setup.classifier, seed=setup.seed + s)
        atk = ATTACK_METHODS[setup.method](target, self.perturbation, steps=setup.steps, eot=setup.threat_eot(threat),
                                           restarts=setup.restarts, seed=setup.seed + s, transfer=setup.transfer(threat))
        return atk(x.to(setup.dev), y.to(setup.dev)).detach().cpu()

    def attack_batch(self, s: int) -> torch.Tensor:
        b = self.setup.batch_size
        x, y = self.setup.x_all[s : s + b], self.setup.y_all[s : s + b]
        if self.chosen is None:
            return self.attack_images(s, x, y)
        chosen = torch.from_numpy(self.chosen[s : s + b])
        x_adv = x.clone()  # the images left out stay as they are
        if chosen.any():
            x_adv[chosen] = self.attack_images(s, x[chosen], y[chosen])
        return x_adv

    def waiting(self, s: int) -> None:
        if self.setup.bar is not None:
            self.setup.bar.set_postfix(attack=self.name, threat=self.threat.value, waiting=f"batch {s} (another process)")

    def tick(self) -> None:
        if self.setup.bar is not None:
            self.setup.bar.set_postfix(attack=self.name, threat=self.threat.value)
            self.setup.bar.update(1)

    def kept(self, items: Iterator[tuple[int, torch.Tensor]]) -> Iterator[tuple[int, torch.Tensor]]:
        for s, x_adv in items:
            self.fresh[s] = x_adv
            yield s, x_adv

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        """Attack and score: per image read right on every draw, and by the majority of the draws."""
        setup, key, kind = self.setup, self.key, self.threat.value
        b, shape = setup.batch_size, tuple(setup.x_all.shape)
        cached = setup.cache.load(kind, key, shape) if key else None
        batches = ((s, cached[s : s + b]) for s in setup.starts()) if cached is not None else shared_batches(
            setup.cache, kind, key, shape, b, self.attack_batch, on_wait=self.waiting)
        every, major = setup.scoring.verdicts(self.kept(batches), setup.y_all.numpy(), shape[0], self.tick, self.waiting)
        if key and cached is None:
            setup.cache.save(kind, key, torch.cat([self.fresh[s] for s in setup.starts()]))
            setup.cache.drop_parts(kind, key)
        return every, major


@dataclass
class _Plan:
    """What a :func:`benchmark` run asks of every attack: the threats in order, the columns shown, and which images
    the adaptive threats attack."""

    threats: list[Threat]
    columns: list[str]
    cascade: bool
    skip_misread: bool
    keep_examples: int


def _attack_row(setup: _Setup, plan: _Plan, name: str, budget: dict[str, Any],
                clean: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """One attack under every threat: its figures (every draw, majority), per-image masks and examples."""
    perturbation = create_perturbation(name, setup.dataset, image_size=setup.x_all.shape[-1], **budget).to(setup.dev)
    clean_every, clean_major = clean
    every_all, major_all = clean_every.copy(), clean_major.copy()  # the survivors so far
    row: dict[str, Any] = {"every": {}, "majority": {}, "masks": {}, "masks_majority": {}, "examples": {}}
    for threat in plan.threats:
        chosen: Optional[np.ndarray] = None  # the images an adaptive threat attacks (None: every image)
        if threat is not Threat.blind and (plan.cascade or plan.skip_misread):
            # the survivors so far, or those read right clean, by the majority rule: a superset of those read right on
            # every draw, so that both figures count only attacked images
            chosen = major_all.copy() if plan.cascade else clean_major.copy()
        run = _AttackRun(setup, name, perturbation, budget, threat, chosen)
        every, major = run.run()
        if plan.keep_examples:
            row["examples"][threat.value] = _examples(setup, run.fresh, plan.keep_examples, chosen)
        if chosen is not None:  # the images left unattacked count as not robust, as they count anyway
            every &= chosen
            major &= chosen
            if plan.cascade:  # the column counts the images that survived the threats before it too
                every &= every_all
                major &= major_all
        row["every"][threat.value] = float((every & clean_every).mean())
        row["majority"][threat.value] = float((major & clean_major).mean())
        row["masks"][threat.value], row["masks_majority"][threat.value] = pack_mask(every), pack_mask(major)
        every_all &= every
        major_all &= major
    row["every"]["worst"], row["majority"]["worst"] = float(every_all.mean()), float(major_all.mean())
    return row


def _plan_threats(threats: Sequence[str], purifier: Optional[Purifier]) -> tuple[list[Threat], list[str], bool]:
    """The threats to run, the columns to show and whether ``worst`` asked for them (then run as a cascade)."""
    if "worst" in threats:
        if len(threats) != 1:
            raise ConfigError(f"the threat 'worst' runs blind and adaptive itself and is given alone, got {list(threats)}")
        plan = [Threat.blind, Threat.adaptive]
        if purifier is not None and getattr(purifier, "masks_gradient", False):
            plan.append(Threat.bpda)  # its full gradient is zero: the adaptive attack that works on it is BPDA
        return plan, ["worst"], True
    try:
        plan = [Threat(t) for t in threats]
    except ValueError:
        raise ConfigError(f"unknown threat in {list(threats)} (expected {', '.join(t.value for t in Threat)} "
                          f"or worst)") from None
    return plan, [t.value for t in plan] + ["worst"], False


def _check_request(attacks: Sequence[str], method: str, data: ImageSet, blind_transfer: str) -> None:
    unknown = [a for a in attacks if a not in PERTURBATIONS]
    if unknown:
        raise ConfigError(f"unknown attack(s) {', '.join(unknown)} (expected {', '.join(PERTURBATIONS)})")
    if method not in ATTACK_METHODS:
        raise ConfigError(f"unknown attack method {method!r} (expected {', '.join(ATTACK_METHODS)})")
    check_transfer(blind_transfer)
    if len(data) == 0:
        raise ConfigError("no images to evaluate")


def _defense_modules(defense: str | Purifier | None, surrogate: str | Purifier | None, threats: Sequence[str],
                     classifier: nn.Module, dev: torch.device) -> tuple[Optional[Purifier], Optional[Purifier]]:
    """The defense and its surrogate, checked, frozen and on ``dev`` (the classifier too)."""
    purifier = create_purifier(defense) if isinstance(defense, str) else defense
    stand_in = create_purifier(surrogate) if isinstance(surrogate, str) else surrogate
    if stand_in is not None:
        if purifier is None:
            raise ConfigError("a surrogate purifier was given without a defense: it stands in for the defense's gradient")
        if all(t == "blind" for t in threats):
            raise ConfigError(f"a surrogate purifier is used only by the adaptive threats (adaptive, bpda); "
                              f"the threats asked are {', '.join(threats)}")
    for module in (purifier, stand_in, classifier):
        if module is not None:
            frozen(module)
            module.to(dev)
    return purifier, stand_in


def benchmark(classifier: nn.Module, data: ImageSet, defense: str | Purifier | None = None,
              attacks: Sequence[str] = PERTURBATIONS, threats: Sequence[str] = ("blind", "adaptive"),
              method: str = "apgd", steps: int = 100, eot: Optional[int] = None, restarts: int = 1, seed: int = 0,
              batch_size: int = 128, dataset: str = "gtsrb", budgets: Optional[dict[str, dict[str, Any]]] = None,
              progress: bool = False, keep_examples: int = 0,
              scorer: Optional[Callable[[torch.Tensor, int], np.ndarray]] = None,
              cache_dir: Optional[str | Path] = None, device: str | torch.device = "cpu",
              surrogate: str | Purifier | None = None, skip_misread: bool = False, cascade: bool = False,
              blind_transfer: str = "loss", resubmit: Optional[int] = None) -> dict[str, Any]:
    """Evaluate ``classifier`` behind ``defense`` (a registered purifier name, a Purifier, or None) on
    ``data`` under each attack family and threat model. Returns a dict of plain numbers.

    ``threats``: any of ``blind``, ``adaptive``, ``bpda``; or ``("worst",)``: the blind threat, then the adaptive one
    (and BPDA for a purifier that masks its gradient) on its survivors — a cascade — reported as one column, the
    per-image worst case. ``blind_transfer``: which iterate the blind attack transfers (``"loss"``, the highest-loss
    one, or ``"first"``, the first that fooled the classifier; :class:`edgepure.attacks.Attack`); the adaptive threats
    keep the first iterate that fools the pipeline they attack and score.

    ``eot``: gradient samples per attack step; None: 4 for the adaptive threats of a stochastic purifier, else 1 (an
    ``eot`` given applies to every threat). ``resubmit``: noise draws each scored image is read with (None: 5 for a
    stochastic pipeline, else 1); an image counts as read right only if it is read right on every draw (clean and
    attacked alike), and the result's ``*_majority`` figures count the majority over the draws
    (:mod:`edgepure.evaluate.draws`).

    ``scorer(x, seed) -> predictions`` replaces PyTorch for scoring clean and attacked images (an exported
    graph in ONNX Runtime, :class:`edgepure.evaluate.exported.OnnxScorer`); the attacks still differentiate
    the PyTorch modules. ``cache_dir`` keeps adversarial examples on disk (keyed by the classifier's
    weights, the images and every attack setting, and for adaptive threats the purifier's weights and
    settings) and reuses them: blind ones for the next defense, adaptive ones for the next backend; each batch is kept as
    it is done, so a run that was interrupted resumes after its last finished batch. ``device``
    runs the attacks and the PyTorch pipeline there (the modules are moved to it); every random draw is made on the
    CPU, so a GPU run attacks and purifies with the same noise as a CPU run.

    ``surrogate`` (a purifier, or a registered name): the adaptive threats (``adaptive``, ``bpda``) differentiate
    through it instead of the defense, and the examples are scored on the defense — a stand-in for a purifier too long to
    differentiate (NAPPure's 500-step reference mode: the same settings for fewer steps). Its examples are cached under
    its own key, so the examples of a run that defended with the surrogate itself are reused. The result's
    ``surrogate`` records it.

    ``skip_misread``: the adaptive threats attack only the images the defended pipeline reads right clean (an image
    counts only if it is read right clean, so the others cannot change a figure) — the saving is the misread share of
    the most expensive attacks. The blind threat still attacks every image (its examples serve every defense of the
    classifier). The images left out of a batch change the batch the attack draws its noise for, so the examples are
    not the ones of a run that attacks every image: they are cached under their own key.

    ``cascade`` (AutoAttack's protocol): each adaptive threat attacks only the images read right clean that survived
    every threat before it (in ``threats``' order), so its figure counts the images that survived it *and* them — after
    the blind threat, the worst of both — for the cost of attacking the survivors only. The blind threat still attacks
    every image. Examples are cached under their own key, as with ``skip_misread``. With several noise draws the
    survivors are those of the majority rule (a superset of those read right on every draw)."""
    _check_request(attacks, method, data, blind_transfer)
    dev = torch.device(device)
    purifier, stand_in = _defense_modules(defense, surrogate, threats, classifier, dev)
    threat_list, columns, worst = _plan_threats(threats, purifier)
    if purifier is None:
        threat_list = [Threat.blind]  # without a defense every threat is the same attack
    plan = _Plan(threat_list, columns, cascade or worst, skip_misread, keep_examples)
    attacked = stand_in if stand_in is not None else purifier  # what the adaptive threats differentiate
    cache = AdvCache(Path(cache_dir) if cache_dir is not None else None)
    draws = default_resubmit(purifier, resubmit)
    setup = _Setup(classifier, attacked, torch.from_numpy(data.as_float_nchw()), torch.from_numpy(data.labels), dev,
                   seed, batch_size, method, steps, restarts, dataset, default_eot(attacked, eot), blind_transfer, cache,
                   _Scoring(classifier, purifier, dev, seed, draws, scorer, keep_examples, cache))
    t0 = time.perf_counter()
    clean, bare_pred = _clean_verdicts(setup, data)
    rows, seconds = _attack_rows(setup, plan, attacks, budgets or {}, clean, progress)
    elapsed = time.perf_counter() - t0
    result = _result(setup, data, purifier, rows, clean, bare_pred, plan, eot is None,
                     {"budget_overrides": budgets or {}, "skip_misread": skip_misread, "cascade": plan.cascade})
    result.update(seconds=round(elapsed, 2), seconds_per_attack=seconds,
                  images_per_second=round(len(data) * len(attacks) * len(threat_list) / elapsed, 2) if elapsed > 0 else None)
    if stand_in is not None:
        result["surrogate"] = {"defense": _name(stand_in), "defense_config": stand_in.config()}
    if keep_examples:
        result["examples"] = {name: row["examples"] for name, row in rows.items()}
    return result


def _clean_verdicts(setup: _Setup, data: ImageSet) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The defended pipeline's verdicts on the clean images (every draw, majority) and the bare classifier's
    predictions."""
    b = setup.batch_size
    clean = setup.scoring.verdicts(((s, setup.x_all[s : s + b]) for s in setup.starts()), data.labels, len(data))
    with torch.no_grad():
        bare_pred = np.concatenate([setup.classifier(setup.x_all[s : s + b].to(setup.dev)).argmax(1).cpu().numpy()
                                    for s in setup.starts()])
    return clean, bare_pred


def _attack_rows(setup: _Setup, plan: _Plan, attacks: Sequence[str], budgets: dict[str, dict[str, Any]],
                 clean: tuple[np.ndarray, np.ndarray], progress: bool
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Every attack's row, and the seconds each took (with ``progress``, one bar over every batch of every threat)."""
    if progress:
        from tqdm import tqdm

        setup.bar = tqdm(total=len(attacks) * len(plan.threats) * len(setup.starts()), desc="attacks", unit="batch",
                         leave=False)
    rows: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name in attacks:
        ta = time.perf_counter()
        rows[name] = _attack_row(setup, plan, name, budgets.get(name, {}), clean)
        seconds[name] = round(time.perf_counter() - ta, 2)
    if setup.bar is not None:
        setup.bar.close()
    return rows, seconds


def _result(setup: _Setup, data: ImageSet, purifier: Optional[Purifier], rows: dict[str, dict[str, Any]],
            clean: tuple[np.ndarray, np.ndarray], bare_pred: np.ndarray, plan: _Plan, eot_default: bool,
            attack: dict[str, Any]) -> dict[str, Any]:
    """The plain numbers of a :func:`benchmark` run."""
    shown = [t.value for t in plan.threats] + ["worst"]

    def average(which: str) -> dict[str, float]:
        return {c: float(np.mean([row[which][c] for row in rows.values()])) for c in shown} if rows else {}

    return {
        "n": len(data),
        "defense": _name(purifier) if purifier is not None else "none",
        "defense_config": purifier.config() if purifier is not None else {},
        "clean_accuracy": float(clean[0].mean()),
        "clean_accuracy_majority": float(clean[1].mean()),
        "clean_accuracy_undefended": float((bare_pred == data.labels).mean()),
        "robust_accuracy": {name: row["every"] for name, row in rows.items()},
        "robust_accuracy_majority": {name: row["majority"] for name, row in rows.items()},
        "average": average("every"),
        "average_majority": average("majority"),
        "threats": [t.value for t in plan.threats],
        "columns": plan.columns,
        "resubmit": setup.scoring.draws,
        "attack": {"method": setup.method, "steps": setup.steps, "eot": setup.eot[1], "eot_blind": setup.eot[0],
                   "eot_default": eot_default, "restarts": setup.restarts, "seed": setup.seed,
                   "dataset_budgets": setup.dataset, "blind_transfer": setup.blind_transfer,
                   "adaptive_transfer": "first", **attack},
        "per_image": {"images": images_digest(data.images, data.labels),
                      "weights": _weights_digest(setup.classifier, purifier), "encoding": MASK_ENCODING,
                      "clean": pack_mask(clean[0]), "attacks": {name: row["masks"] for name, row in rows.items()},
                      "clean_majority": pack_mask(clean[1]),
                      "attacks_majority": {name: row["masks_majority"] for name, row in rows.items()}},
    }
