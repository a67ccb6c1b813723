"""The per-image worst case across separate robust evaluations (``edgepure eval worst``).

Each ``benchmark`` result carries ``per_image``: a digest of the images and labels it scored, which of them the
defended pipeline read right clean, and after each attack and threat. Runs of the same defense on the same images —
one threat per run, the adaptive threat through surrogates of several lengths, attacks split between machines — are
combined here: an image counts as robust under an attack only if every run read it right clean and after every threat
of that attack. This module needs only numpy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgepure.runtime.errors import ConfigError, DataError

__all__ = ["MASK_ENCODING", "format_worst", "images_digest", "load_result", "pack_mask", "unpack_mask", "worst_of"]

MASK_ENCODING = "hex of numpy.packbits (image i is bit i, most significant bit first)"


def pack_mask(mask: np.ndarray) -> str:
    """A boolean vector as hex (``numpy.packbits``, big-endian bit order): 128 characters for 512 images."""
    return np.packbits(np.asarray(mask, dtype=bool)).tobytes().hex()


def unpack_mask(text: str, n: int, what: str = "mask") -> np.ndarray:
    """The inverse of :func:`pack_mask` for ``n`` images."""
    try:
        raw = bytes.fromhex(text)
    except (TypeError, ValueError):
        raise DataError(f"{what}: expected hex digits, found {str(text)[:40]!r}") from None
    if len(raw) != (n + 7) // 8:
        raise DataError(f"{what}: expected {(n + 7) // 8} bytes for {n} images, found {len(raw)}")
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n].astype(bool)


def images_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """Which images were scored: sha256 of the uint8 pixels and int64 labels (24 hex digits)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def load_result(path: str | Path) -> dict[str, Any]:
    """A result written by ``edgepure eval robust --json`` (stdout saved to a file) or ``--out DIR``
    (``DIR/results.json``; the directory itself may be given)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise DataError(f"{p}: no such file (expected the JSON of `edgepure eval robust --json` or its --out folder)")
    try:
        result = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: not a JSON file ({e})") from None
    if not isinstance(result, dict) or "robust_accuracy" not in result:
        raise DataError(f"{p}: expected the result of `edgepure eval robust` (with robust_accuracy), found "
                        f"{'keys ' + ', '.join(sorted(result)[:6]) if isinstance(result, dict) else type(result).__name__}")
    if "per_image" not in result:
        raise DataError(f"{p}: has no per_image record (written before edgepure recorded one); run it again — "
                        f"with --cache its adversarial examples are reused, only the scoring runs")
    return result


def _same(results: Sequence[dict[str, Any]], labels: Sequence[str], what: str, get: Any) -> None:
    first = get(results[0])
    for r, label in zip(results[1:], labels[1:]):
        if get(r) != first:
            raise ConfigError(f"{labels[0]} and {label} differ in {what}: {first!r} vs {get(r)!r} "
                              f"(the worst case is taken over runs of one defense on the same images)")


def worst_of(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """Combine robust-evaluation results of one defense on the same images into the per-image worst case.

    Returns plain numbers: ``robust_accuracy[attack]`` holds each run's threats as ``"label:threat"`` and ``worst``
    (over every run that ran the attack); ``clean_accuracy`` counts the images read right clean in every run."""
    if len(results) < 2:
        raise ConfigError(f"expected at least two results to combine, found {len(results)}")
    if len(labels) != len(results):
        raise ConfigError(f"expected one label per result ({len(results)}), found {len(labels)}")
    _same(results, labels, "the number of images", lambda r: r["n"])
    _same(results, labels, "the images scored", lambda r: r["per_image"]["images"])
    _same(results, labels, "the classifier", lambda r: r.get("model"))
    _same(results, labels, "the networks' weights", lambda r: r["per_image"].get("weights"))
    _same(results, labels, "the defense", lambda r: (r.get("defense"), r.get("defense_config")))
    # an image's reading is right on every one of R noise draws: runs of other R count by another rule
    _same(results, labels, "the noise draws per image (--resubmit)", lambda r: r.get("resubmit", 1))
    n = int(results[0]["n"])
    clean = np.ones(n, dtype=bool)
    for r, label in zip(results, labels):
        clean &= unpack_mask(r["per_image"]["clean"], n, f"{label}: per_image.clean")
    robust: dict[str, dict[str, float]] = {}
    worst: dict[str, np.ndarray] = {}
    for r, label in zip(results, labels):
        for attack, threats in r["per_image"]["attacks"].items():
            row = robust.setdefault(attack, {})
            ok = worst.setdefault(attack, clean.copy())
            for threat, text in threats.items():
                mask = unpack_mask(text, n, f"{label}: per_image.attacks.{attack}.{threat}")
                row[f"{label}:{threat}"] = float((mask & clean).mean())
                ok &= mask
    for attack, ok in worst.items():
        robust[attack]["worst"] = float(ok.mean())
    return {
        "n": n,
        "runs": list(labels),
        "defense": results[0].get("defense"),
        "defense_config": results[0].get("defense_config"),
        "model": results[0].get("model"),
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": robust,
        "average": {"worst": float(np.mean([row["worst"] for row in robust.values()]))},
        "attacks_in": {a: [lb for r, lb in zip(results, labels) if a in r["per_image"]["attacks"]] for a in robust},
    }


def format_worst(result: dict[str, Any]) -> str:
    """The combined result as a plain-text table: one line per attack and run, then the worst case."""
    lines = [f"defense: {result['defense']}   n = {result['n']}   runs: {', '.join(result['runs'])}",
             f"clean accuracy in every run {result['clean_accuracy'] * 100:.2f} %"]
    width = max(len(k) for row in result["robust_accuracy"].values() for k in row)
    for attack, row in result["robust_accuracy"].items():
        lines.append(attack)
        lines += [f"  {k:<{width}} {v * 100:>7.2f} %" for k, v in row.items()]
    lines.append(f"average of worst {result['average']['worst'] * 100:.2f} %")
    return "\n".join(lines)
