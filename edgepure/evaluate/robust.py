"""Robust evaluation: clean and robust accuracy of (purifier →) classifier per attack and threat model.

``benchmark(...)`` returns plain numbers (RobustBench style); ``edgepure eval robust`` prints them and
writes JSON, CSV and figures. An image counts as robust under an attack only if the defended pipeline
classifies it correctly clean and after the attack; the ``worst`` column is the per-image worst case
over every threat model that was run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgepure.attacks import APGD, PGD, Threat, attack_target
from edgepure.data.base import ImageSet
from edgepure.evaluate.cache import AdvCache, shared_batches, shared_scores
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


def _examples(x_all: torch.Tensor, fresh: dict[int, torch.Tensor],
              predict: Callable[[torch.Tensor, int], tuple[np.ndarray, torch.Tensor]], batch_size: int, k: int,
              chosen: Optional[np.ndarray]) -> np.ndarray:
    """The figure's clean / attacked / purified panels of ``k`` images: the first images the threat attacked (all of
    them when it attacked every image), then, if it attacked fewer than ``k``, the first of those it left out. Each
    purified panel is the reading its batch was scored with (same batch, same noise)."""
    order = np.arange(len(x_all)) if chosen is None else np.concatenate([np.flatnonzero(chosen), np.flatnonzero(~chosen)])
    at = [(int(i), int(i) - int(i) % batch_size) for i in order[:k]]  # (image, start of its batch)
    purified = {s: predict(fresh[s], s)[1] for s in {s for _, s in at}}
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
               method: str = "apgd", eot: int = 1, restarts: int = 1, batch_size: int = 128) -> dict[str, Any]:
    """The attack settings that key cached examples (:func:`adversarial_key`): every batch of ``batch_size`` images
    attacked with seed ``seed`` + its offset."""
    return {"attack": attack, "budget": budget or {}, "dataset": dataset, "method": method, "steps": steps,
            "eot": eot, "restarts": restarts, "seed": seed, "batch_size": batch_size}


def blind_examples(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, steps: int = 100,
                   seed: int = 0, cache_dir: Optional[str | Path] = None, dataset: str = "gtsrb",
                   log: Optional[Callable[[str], None]] = None, method: str = "apgd",
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Blind examples of ``attack`` (APGD-CE, or another of ``ATTACK_METHODS``) on ``classifier`` for the images ``x``
    (N×C×H×W in [0, 1], on the CPU) and labels ``y``: the attack of :func:`benchmark` (same batches and seeds, hence
    the same examples of the same images), computed once on ``device`` (the classifier is moved there) and kept in
    ``cache_dir`` under :func:`benchmark`'s keys. Returned on the CPU."""
    if method not in ATTACK_METHODS:
        raise ConfigError(f"unknown attack method {method!r} (expected {', '.join(ATTACK_METHODS)})")
    store = AdvCache(Path(cache_dir) if cache_dir is not None else None)
    spec = blind_spec(attack, steps, seed, dataset=dataset, method=method)
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
    adv = torch.cat([attack_cls(classifier, perturbation, steps=steps, seed=seed + s)(
        x[s : s + b].to(dev), y[s : s + b].to(dev)).detach().cpu() for s in range(0, len(x), b)])
    if log is not None:
        with torch.no_grad():
            acc = float((classifier(adv.to(dev)).argmax(1).cpu() == y).float().mean())
        log(f"blind {attack} ({method} {steps}): {len(x)} examples in {time.perf_counter() - t0:.0f} s, classifier accuracy {acc:.3f}")
    store.save("blind", key, adv)
    return adv


def benchmark(
    classifier: nn.Module,
    data: ImageSet,
    defense: str | Purifier | None = None,
    attacks: Sequence[str] = PERTURBATIONS,
    threats: Sequence[str] = ("blind", "adaptive"),
    method: str = "apgd",
    steps: int = 100,
    eot: int = 1,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 128,
    dataset: str = "gtsrb",
    budgets: Optional[dict[str, dict[str, Any]]] = None,
    progress: bool = False,
    keep_examples: int = 0,
    scorer: Optional[Callable[[torch.Tensor, int], np.ndarray]] = None,
    cache_dir: Optional[str | Path] = None,
    device: str | torch.device = "cpu",
    surrogate: str | Purifier | None = None,
    skip_misread: bool = False,
    cascade: bool = False,
) -> dict[str, Any]:
    """Evaluate ``classifier`` behind ``defense`` (a registered purifier name, a Purifier, or None) on
    ``data`` under each attack family and threat model. Returns a dict of plain numbers.

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
    every image. Examples are cached under their own key, as with ``skip_misread``."""
    unknown = [a for a in attacks if a not in PERTURBATIONS]
    if unknown:
        raise ConfigError(f"unknown attack(s) {', '.join(unknown)} (expected {', '.join(PERTURBATIONS)})")
    try:
        threat_list = [Threat(t) for t in threats]
    except ValueError:
        raise ConfigError(f"unknown threat in {list(threats)} (expected {', '.join(t.value for t in Threat)})") from None
    if method not in ATTACK_METHODS:
        raise ConfigError(f"unknown attack method {method!r} (expected {', '.join(ATTACK_METHODS)})")
    if len(data) == 0:
        raise ConfigError("no images to evaluate")
    purifier = create_purifier(defense) if isinstance(defense, str) else defense
    stand_in = create_purifier(surrogate) if isinstance(surrogate, str) else surrogate
    if stand_in is not None:
        if purifier is None:
            raise ConfigError("a surrogate purifier was given without a defense: it stands in for the defense's gradient")
        if all(t is Threat.blind for t in threat_list):
            raise ConfigError(f"a surrogate purifier is used only by the adaptive threats (adaptive, bpda); "
                              f"the threats asked are {', '.join(t.value for t in threat_list)}")
    dev = torch.device(device)
    for module in (purifier, stand_in, classifier):
        if module is not None:
            frozen(module)
            module.to(dev)
    if purifier is None:
        threat_list = [Threat.blind]  # without a defense every threat is the same attack
    attacked = stand_in if stand_in is not None else purifier  # what the adaptive threats differentiate
    x_all = torch.from_numpy(data.as_float_nchw())
    y_all = torch.from_numpy(data.labels)
    n = len(data)
    starts = list(range(0, n, batch_size))
    t0 = time.perf_counter()

    def predict(x: torch.Tensor, s: int) -> tuple[np.ndarray, torch.Tensor]:
        if scorer is not None and not keep_examples:  # the scorer decides; the torch pipeline would be wasted work
            return scorer(x, seed + s), x
        pred, purified = _defended_predict(classifier, purifier, x.to(dev), seed + s)
        return (scorer(x, seed + s) if scorer is not None else pred), purified.cpu()

    cache = AdvCache(Path(cache_dir) if cache_dir is not None else None)
    # predictions are kept too (``scores/``), keyed by the pipeline, the noise seed and the images themselves: a
    # resumed run, or another process of a split one, reads a batch's reading instead of purifying it again
    scores = cache if scorer is None else AdvCache(None)  # what a custom scorer runs cannot be keyed
    pipeline = _pipeline_digest(classifier, purifier, dev) if scores.dir is not None else ""

    def score_key(s: int, x: torch.Tensor) -> str:
        return hashlib.sha256(f"{pipeline} {seed + s} ".encode() + x.numpy().tobytes()).hexdigest()[:24]

    def score(s: int, x: torch.Tensor) -> np.ndarray:
        return predict(x, s)[0]

    clean_pred = np.zeros(n, dtype=np.int64)
    for s, pred in shared_scores(scores, ((s, x_all[s : s + batch_size]) for s in starts), score_key, score):
        clean_pred[s : s + len(pred)] = pred
    with torch.no_grad():
        bare_pred = np.concatenate([classifier(x_all[s : s + batch_size].to(dev)).argmax(1).cpu().numpy() for s in starts])
    clean_ok = clean_pred == data.labels

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(attacks) * len(threat_list) * len(starts), desc="attacks", unit="batch", leave=False)
    robust: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    examples: dict[str, dict[str, np.ndarray]] = {}
    survived: dict[str, dict[str, str]] = {}  # per attack and threat: which images the pipeline read right after it
    for name in attacks:
        budget = (budgets or {}).get(name, {})
        perturbation = create_perturbation(name, dataset, image_size=x_all.shape[-1], **budget).to(dev)
        ok_all = clean_ok.copy()
        robust[name] = {}
        ta = time.perf_counter()
        for threat in threat_list:
            ok = np.zeros(n, dtype=bool)
            chosen_all: Optional[np.ndarray] = None  # the images an adaptive threat attacks (None: every image)
            if threat is not Threat.blind and (cascade or skip_misread):
                chosen_all = ok_all.copy() if cascade else clean_ok  # the survivors so far, or those read right clean
            cached, key = None, ""
            if cache.dir is not None:
                spec = blind_spec(name, steps, seed, budget=budget, dataset=dataset, method=method, eot=eot,
                                  restarts=restarts, batch_size=batch_size)
                seen = None
                if threat is not Threat.blind:
                    assert attacked is not None
                    # votes change the scoring, not the attack (one draw per gradient): not part of the key
                    spec.update(threat=threat.value, defense=_name(attacked),
                                defense_config={k: v for k, v in attacked.config().items() if k != "votes"})
                    seen = attacked
                if chosen_all is not None:
                    spec["attacked"] = pack_mask(chosen_all)
                key = adversarial_key(classifier, x_all, y_all, spec, seen)
                cached = cache.load(threat.value, key, tuple(x_all.shape))

            def attack_images(s: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                target = attack_target(threat, attacked, classifier, seed=seed + s)
                atk = ATTACK_METHODS[method](target, perturbation, steps=steps, eot=eot, restarts=restarts, seed=seed + s)
                return atk(x.to(dev), y.to(dev)).detach().cpu()

            def attack_batch(s: int) -> torch.Tensor:
                x, y = x_all[s : s + batch_size], y_all[s : s + batch_size]
                if chosen_all is None:
                    return attack_images(s, x, y)
                chosen = torch.from_numpy(chosen_all[s : s + batch_size])
                x_adv = x.clone()  # the images left out stay as they are
                if chosen.any():
                    x_adv[chosen] = attack_images(s, x[chosen], y[chosen])
                return x_adv

            def waiting(s: int) -> None:
                if bar is not None:
                    bar.set_postfix(attack=name, threat=threat.value, waiting=f"batch {s} (another process)")

            # each batch as it is done is kept (an interrupted run resumes after it); batches another process of the
            # same run holds are waited for (processes given the same cache folder split the work)
            batches = ((s, cached[s : s + batch_size]) for s in starts) if cached is not None else shared_batches(
                cache, threat.value, key, tuple(x_all.shape), batch_size, attack_batch, on_wait=waiting)
            fresh: dict[int, torch.Tensor] = {}

            def kept(items: Iterator[tuple[int, torch.Tensor]]) -> Iterator[tuple[int, torch.Tensor]]:
                for s, x_adv in items:
                    fresh[s] = x_adv
                    yield s, x_adv

            for s, pred in shared_scores(scores, kept(batches), score_key, score, on_wait=waiting):
                ok[s : s + len(pred)] = pred == y_all[s : s + len(pred)].numpy()
                if bar is not None:
                    bar.set_postfix(attack=name, threat=threat.value)
                    bar.update(1)
            if keep_examples:
                examples.setdefault(name, {})[threat.value] = _examples(
                    x_all, fresh, predict, batch_size, keep_examples, chosen_all)
            if key and cached is None:
                cache.save(threat.value, key, torch.cat([fresh[s] for s in starts]))
                cache.drop_parts(threat.value, key)
            if chosen_all is not None:
                ok &= chosen_all  # the images left unattacked count as not robust, as they count anyway
            robust[name][threat.value] = float((ok & clean_ok).mean())
            survived.setdefault(name, {})[threat.value] = pack_mask(ok)
            ok_all &= ok
        robust[name]["worst"] = float(ok_all.mean())
        seconds[name] = round(time.perf_counter() - ta, 2)
    if bar is not None:
        bar.close()
    columns = [t.value for t in threat_list] + ["worst"]
    average = {c: float(np.mean([robust[a][c] for a in attacks])) for c in columns} if attacks else {}
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = {
        "n": n,
        "defense": _name(purifier) if purifier is not None else "none",
        "defense_config": purifier.config() if purifier is not None else {},
        "clean_accuracy": float(clean_ok.mean()),
        "clean_accuracy_undefended": float((bare_pred == data.labels).mean()),
        "robust_accuracy": robust,
        "average": average,
        "threats": [t.value for t in threat_list],
        "attack": {"method": method, "steps": steps, "eot": eot, "restarts": restarts, "seed": seed,
                   "dataset_budgets": dataset, "budget_overrides": budgets or {}, "skip_misread": skip_misread,
                   "cascade": cascade},
        "seconds": round(elapsed, 2),
        "seconds_per_attack": seconds,
        "images_per_second": round(n * len(attacks) * len(threat_list) / elapsed, 2) if elapsed > 0 else None,
        "per_image": {"images": images_digest(data.images, data.labels), "weights": _weights_digest(classifier, purifier),
                      "encoding": MASK_ENCODING,
                      "clean": pack_mask(clean_ok), "attacks": survived},
    }
    if stand_in is not None:
        result["surrogate"] = {"defense": _name(stand_in), "defense_config": stand_in.config()}
    if keep_examples:
        result["examples"] = examples
    return result
