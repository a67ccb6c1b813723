"""Resolve a ``--model`` value: a registered name with shipped weights, or a training checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from edgepure.models.registry import create_classifier, load_classifier, load_weights_file
from edgepure.runtime.errors import ModelError

__all__ = ["resolve_classifier"]


def resolve_classifier(spec: str | None) -> nn.Module:
    """``None`` → the shipped GTSRB classifier; a name → its shipped weights; a path to a checkpoint
    (``.safetensors`` with its ``.json`` beside it, or a training directory holding ``best.safetensors``)."""
    if spec is None:
        return load_classifier()
    p = Path(spec).expanduser()
    if not (p.suffix == ".safetensors" or p.is_dir() or p.exists()):
        return load_classifier(spec)
    if p.is_dir():
        p = p / "best.safetensors"
    if p.suffix != ".safetensors":
        raise ModelError(f"{p}: expected a .safetensors checkpoint or a training directory")
    meta_path = p.with_suffix(".json")
    if not p.is_file():
        raise ModelError(f"{p}: checkpoint not found")
    if not meta_path.is_file():
        raise ModelError(f"{meta_path}: the checkpoint's JSON record is missing (it names the architecture)")
    try:
        meta = json.loads(meta_path.read_text())
        name = meta["name"]
        config = meta.get("model_config", {})
    except (json.JSONDecodeError, KeyError) as exc:
        raise ModelError(f"{meta_path}: not a checkpoint record ({exc})") from None
    model = create_classifier(name, **config)
    load_weights_file(model, p)
    return model.eval()
