"""edgepure: adversarial purification for robust traffic-sign recognition at the edge.

``import edgepure`` is light (no torch): the registries load on first use of ``create_classifier``,
``list_classifiers``, ``load_classifier``, ``create_purifier`` or ``list_purifiers``.
"""

from __future__ import annotations

from typing import Any

from edgepure.runtime.errors import EdgepureError

__version__ = "0.1.0"
__all__ = [
    "EdgepureError", "__version__", "create_classifier", "create_purifier", "list_classifiers", "list_purifiers",
    "load_classifier",
]

_LAZY = {
    "create_classifier": "edgepure.models.registry",
    "list_classifiers": "edgepure.models.registry",
    "load_classifier": "edgepure.models.registry",
    "create_purifier": "edgepure.purifiers.registry",
    "list_purifiers": "edgepure.purifiers.registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgepure' has no attribute {name!r}")
