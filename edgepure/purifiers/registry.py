"""The purifier registry: ``@register_purifier`` on a factory; ``create_purifier(name, pretrained, **kw)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from edgepure.purifiers.base import Purifier
from edgepure.runtime.errors import ConfigError, ModelError

__all__ = ["create_purifier", "list_purifiers", "purifier_info", "register_purifier"]


@dataclass
class PurifierEntry:
    name: str
    factory: Callable[..., Purifier]
    description: str
    has_weights: bool


_REGISTRY: dict[str, PurifierEntry] = {}


def register_purifier(name: str, has_weights: bool = False) -> Callable[[Callable[..., Purifier]], Callable[..., Purifier]]:
    def wrap(fn: Callable[..., Purifier]) -> Callable[..., Purifier]:
        if name in _REGISTRY:
            raise RuntimeError(f"purifier {name!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = PurifierEntry(name, fn, doc[0] if doc else "", has_weights)
        return fn

    return wrap


def _ensure_builtin() -> None:
    import edgepure.purifiers.baselines  # noqa: F401
    import edgepure.purifiers.coup  # noqa: F401
    import edgepure.purifiers.diffusion  # noqa: F401
    import edgepure.purifiers.impure  # noqa: F401
    import edgepure.purifiers.ncis  # noqa: F401
    import edgepure.purifiers.nappure  # noqa: F401


def list_purifiers() -> list[str]:
    """Names of every registered purifier."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def purifier_info(name: str) -> dict[str, object]:
    """Name, kind, one-line description and whether it uses trained weights (as ``classifier_info``)."""
    _ensure_builtin()
    if name not in _REGISTRY:
        raise ModelError(f"unknown purifier {name!r} (registered: {', '.join(sorted(_REGISTRY))})")
    e = _REGISTRY[name]
    return {"name": name, "kind": "purifier", "description": e.description, "pretrained": e.has_weights, "default": False}


def create_purifier(name: str, pretrained: bool = True, **kwargs: Any) -> Purifier:
    """Build a registered purifier. ``pretrained`` loads shipped weights for purifiers that have them
    (ignored by weight-free purifiers); ``kwargs`` are the purifier's settings."""
    _ensure_builtin()
    if name not in _REGISTRY:
        raise ModelError(f"unknown purifier {name!r} (registered: {', '.join(sorted(_REGISTRY))})")
    entry = _REGISTRY[name]
    try:
        purifier = entry.factory(pretrained=pretrained, **kwargs) if entry.has_weights else entry.factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"purifier {name!r}: {exc}") from None
    purifier.edgepure_name = name  # type: ignore[attr-defined]
    return purifier.eval()
