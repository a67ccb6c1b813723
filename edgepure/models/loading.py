"""Resolve a ``--model`` value: a registered name with shipped weights, or a training checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from edgepure.models.registry import create_classifier, create_prior, load_classifier, load_weights_file
from edgepure.runtime.errors import ModelError

__all__ = ["frozen", "load_classifier_source", "prior_label", "resolve_classifier", "resolve_prior"]


def frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter's gradient off (a fixed network that attacks and losses go through)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resolve_classifier(spec: str | None) -> nn.Module:
    """``None`` → the shipped GTSRB classifier; a name → its shipped weights; a path to a checkpoint
    (``.safetensors`` with its ``.json`` beside it, or a training directory holding ``best.safetensors``)."""
    if spec is None:
        return load_classifier()
    found = _checkpoint(spec)
    if found is None:
        return load_classifier(spec)
    path, meta = found
    model = create_classifier(meta["name"], **meta["model_config"])
    load_weights_file(model, path)
    return model.eval()


def _checkpoint(spec: str) -> tuple[Path, dict[str, Any]] | None:
    """``(safetensors path, record)`` when ``spec`` names a checkpoint file or training directory, else None."""
    p = Path(spec).expanduser()
    if not (p.suffix == ".safetensors" or p.is_dir() or p.exists()):
        return None
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
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_path}: not a checkpoint record ({exc})") from None
    if not isinstance(meta, dict) or "name" not in meta:
        raise ModelError(f"{meta_path}: not a checkpoint record (it names no architecture)")
    meta.setdefault("model_config", {})
    return p, meta


def resolve_prior(spec: str, pretrained: bool = True) -> nn.Module:
    """A prior (denoiser) network: a registered name (its shipped weights when ``pretrained``) or a training
    checkpoint of ``edgepure train prior`` (``.safetensors`` with its ``.json``, or the run directory's best).
    A checkpoint's path is kept as ``edgepure_source`` so that a purifier's ``config()`` can name it."""
    found = _checkpoint(spec)
    if found is None:
        return create_prior(spec, pretrained=pretrained)
    path, meta = found
    if meta.get("kind", "prior") != "prior":
        raise ModelError(f"{path}: a {meta['kind']} checkpoint, expected an image prior's")
    model = create_prior(meta["name"], **meta["model_config"])
    load_weights_file(model, path)
    model.edgepure_source = str(path)  # type: ignore[attr-defined]
    return model.eval()


def prior_label(model: nn.Module) -> str:
    """What rebuilds ``model`` through :func:`resolve_prior`: its checkpoint path, else its registered name."""
    return getattr(model, "edgepure_source", None) or getattr(model, "edgepure_name", type(model).__name__)


def load_classifier_source(spec: str) -> tuple[Any, dict[str, Any]]:
    """A classifier given as a registered name or checkpoint, ``module:callable`` (returning a torch module that
    takes [0, 1] images) or an ONNX file (returned as its path); also the record that lets it be rebuilt."""
    import importlib

    if spec.lower().endswith(".onnx"):
        if not Path(spec).is_file():
            raise ModelError(f"{spec}: no such ONNX classifier file")
        return Path(spec), {"name": Path(spec).name, "source": str(Path(spec).resolve()), "format": "onnx"}
    if ":" in spec and not Path(spec).exists():
        mod_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"--classifier {spec}: cannot import {attr!r} from {mod_name!r} ({exc})") from None
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
        if not isinstance(model, nn.Module):
            raise ModelError(f"--classifier {spec}: expected a torch nn.Module, got {type(model).__name__}")
        return model.eval(), {"name": spec, "source": spec, "format": "module:callable"}
    model = resolve_classifier(spec)
    return model, {"name": getattr(model, "edgepure_name", spec), "source": spec}
