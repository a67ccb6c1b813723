"""edgepure: adversarial purification for robust traffic-sign recognition at the edge.

``import edgepure`` is light (no torch): the model registry is loaded on first use of
``create_classifier``, ``list_classifiers`` or ``load_classifier``.
"""

from __future__ import annotations

from typing import Any

from edgepure.runtime.errors import EdgepureError

__version__ = "0.1.0"
__all__ = ["EdgepureError", "__version__", "create_classifier", "list_classifiers", "load_classifier"]

_LAZY = {"create_classifier", "list_classifiers", "load_classifier"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from edgepure.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'edgepure' has no attribute {name!r}")
