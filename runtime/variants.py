"""Several purifier variants of one pipeline in one model directory, for the latency budget.

A variant set is a directory with ``variants.json`` and one exported model directory per variant::

    models/nappure/
        variants.json        {"schema": 1, "variants": [{"name": "k4", "path": "k4"}, {"name": "k8", ...}]}
        k4/manifest.json …
        k8/manifest.json …

Variants are listed from the weakest (cheapest) to the strongest. A plain model directory (one
``manifest.json``) is a set of one. ``edgepure export --steps 4 --steps 8 --steps 16`` writes such a set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepure.runtime.errors import ModelError
from edgepure.runtime.manifest import MANIFEST_NAME

__all__ = ["VARIANTS_NAME", "Variant", "list_variants", "write_variants"]

VARIANTS_NAME = "variants.json"


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path


def list_variants(directory: str | Path) -> list[Variant]:
    """The variants of ``directory``, weakest first (a plain model directory gives one variant)."""
    d = Path(directory)
    if not d.exists():
        raise ModelError(f"{d}: no such model directory")
    if (d / MANIFEST_NAME).is_file():
        return [Variant(d.name, d)]
    index = d / VARIANTS_NAME
    if not index.is_file():
        raise ModelError(f"{d}: neither {MANIFEST_NAME} nor {VARIANTS_NAME} (expected a directory written by "
                         "'edgepure export')")
    try:
        data: Any = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{index}: corrupt ({exc})") from None
    items = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ModelError(f"{index}: expected {{'variants': [{{'name': ..., 'path': ...}}, ...]}} with at least one")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("path"), str):
            raise ModelError(f"{index}: each variant needs a 'name' and a 'path' string, found {item!r}")
        path = (d / item["path"]).resolve()
        if d.resolve() not in path.parents:
            raise ModelError(f"{index}: variant path {item['path']!r} leaves the directory")
        if not (path / MANIFEST_NAME).is_file():
            raise ModelError(f"{index}: variant {item['name']!r} has no {path / MANIFEST_NAME}")
        out.append(Variant(item["name"], path))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ModelError(f"{index}: variant names repeat: {names}")
    return out


def write_variants(directory: str | Path, variants: list[tuple[str, str]]) -> Path:
    """Write ``variants.json`` for ``(name, relative path)`` pairs, weakest first."""
    path = Path(directory) / VARIANTS_NAME
    body = {"schema": 1, "variants": [{"name": n, "path": p} for n, p in variants]}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path
