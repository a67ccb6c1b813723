"""The model registries (timm-style): ``@register_classifier`` / ``@register_prior`` on a factory, then
``create_classifier`` / ``create_prior``.

Shipped weights live in ``edgepure/models/weights/<tag>.safetensors`` with ``<tag>.json`` beside them
(the model's name, constructor arguments, preprocessing and class names). Weights are safetensors only:
nothing is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from torch import nn

from edgepure.runtime.errors import ModelError

__all__ = [
    "ClassifierEntry",
    "DEFAULT_PRIOR",
    "ModelEntry",
    "classifier_info",
    "create_prior",
    "list_priors",
    "register_prior",
    "DEFAULT_CLASSIFIER",
    "create_classifier",
    "list_classifiers",
    "load_classifier",
    "load_weights_file",
    "register_classifier",
    "shipped_weights",
]

DEFAULT_CLASSIFIER = "signnet_s_cutmix"  # signnet_s fine-tuned with CutMix; why it is the default: its model card
DEFAULT_PRIOR = "edm_unet_s"


@dataclass
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    pretrained_tag: str | None = None  # file stem under weights/


ClassifierEntry = ModelEntry  # the name this module exported first

# one registry per kind of network: classifiers, and the image networks purifiers use ("priors": denoisers,
# blind-spot and masked-reconstruction networks)
_REGISTRIES: dict[str, dict[str, ModelEntry]] = {"classifier": {}, "prior": {}}
_BUILTIN = {
    "classifier": ("edgepure.models.classifiers",),
    "prior": ("edgepure.models.priors", "edgepure.models.blindspot", "edgepure.models.impure"),
}


def _register(kind: str, name: str | None, pretrained_tag: str | None, defaults: dict[str, Any]
              ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRIES[kind]:
            raise RuntimeError(f"{kind} {key!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRIES[kind][key] = ModelEntry(key, fn, doc[0] if doc else "", dict(defaults), pretrained_tag)
        return fn

    return wrap


def register_classifier(
    name: str | None = None, *, pretrained_tag: str | None = None, **defaults: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a factory ``fn(**kw) -> nn.Module`` under ``name`` (default: the function's name)."""
    return _register("classifier", name, pretrained_tag, defaults)


def register_prior(
    name: str | None = None, *, pretrained_tag: str | None = None, **defaults: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register an image-prior (denoiser) factory, as ``register_classifier`` does."""
    return _register("prior", name, pretrained_tag, defaults)


def _registry(kind: str) -> dict[str, ModelEntry]:
    import importlib

    for module in _BUILTIN[kind]:
        importlib.import_module(module)  # registers the built-in architectures
    return _REGISTRIES[kind]


def _list(kind: str, pretrained: bool) -> list[str]:
    return sorted(n for n, e in _registry(kind).items() if not pretrained or _weights_path(e) is not None)


def list_classifiers(pretrained: bool = False) -> list[str]:
    """Names of the registered classifiers (only those with shipped weights when ``pretrained``)."""
    return _list("classifier", pretrained)


def list_priors(pretrained: bool = False) -> list[str]:
    """Names of the registered image priors (only those with shipped weights when ``pretrained``)."""
    return _list("prior", pretrained)


def _entry(name: str, kind: str = "classifier") -> ModelEntry:
    reg = _registry(kind)
    if name not in reg:
        raise ModelError(f"unknown {kind} {name!r} (registered: {', '.join(sorted(reg))})")
    return reg[name]


def _weights_dir() -> Path:
    return Path(str(resources.files("edgepure.models") / "weights"))


def _weights_path(entry: ModelEntry) -> Path | None:
    if entry.pretrained_tag is None:
        return None
    path = _weights_dir() / f"{entry.pretrained_tag}.safetensors"
    return path if path.is_file() else None


def shipped_weights() -> dict[str, Path]:
    """Registered model names (classifiers and priors) mapped to their shipped safetensors file."""
    return {n: p for kind in _REGISTRIES for n, e in _registry(kind).items() if (p := _weights_path(e)) is not None}


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load a safetensors file into ``model``; names and shapes must match exactly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: weight file not found")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{p}: not a readable safetensors file ({exc})") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(
            f"{p}: weights do not match the model (missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''})"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ModelError(f"{p}: tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state)


def create_classifier(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered classifier: float RGB NCHW in [0, 1] → logits (normalisation is inside the model).

    ``pretrained=True`` loads the weights shipped in the package (an error for a name that has none);
    ``kwargs`` override the architecture's defaults (with pretrained weights they must match them).
    """
    return _create("classifier", name, pretrained, kwargs)


def create_prior(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered image prior: a noise-conditional denoiser ``D(x; σ)`` on images in [−1, 1]."""
    return _create("prior", name, pretrained, kwargs)


def _create(kind: str, name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    entry = _entry(name, kind)
    config = dict(entry.defaults)
    if pretrained:
        path = _weights_path(entry)
        if path is None:
            have = ", ".join(_list(kind, pretrained=True)) or "none"
            raise ModelError(f"{kind} {name!r} has no shipped weights (shipped: {have})")
        meta = json.loads(path.with_suffix(".json").read_text())
        config.update(meta.get("config", {}))
        clash = {k: v for k, v in kwargs.items() if k in config and config[k] != v}
        if clash:
            raise ModelError(
                f"{kind} {name!r}: the shipped weights were trained with "
                f"{ {k: config[k] for k in clash} }, cannot build them with {clash}"
            )
    config.update(kwargs)
    model = entry.factory(**config)
    model.edgepure_name = name  # type: ignore[attr-defined]
    model.edgepure_config = config  # type: ignore[attr-defined]
    if pretrained:
        _check_sha256(path, meta)  # type: ignore[arg-type]
        load_weights_file(model, path)  # type: ignore[arg-type]
        model.pretrained_cfg = {k: meta[k] for k in ("dataset", "class_names", "preprocessing") if k in meta}  # type: ignore[attr-defined]
        model.eval()
    return model


def _check_sha256(path: Path, meta: dict[str, Any]) -> None:
    import hashlib

    expected = meta.get("sha256")
    if expected is None:
        raise ModelError(f"{path.with_suffix('.json')}: no sha256 recorded for the shipped weights")
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != expected:
        raise ModelError(f"{path}: sha256 mismatch (expected {expected[:16]}…, found {found[:16]}…); "
                         "the weight file was modified or is corrupt — reinstall edgepure")


def load_classifier(name: str | None = None) -> nn.Module:
    """The shipped, trained classifier (``name`` defaults to the GTSRB classifier), in eval mode."""
    model = create_classifier(name or DEFAULT_CLASSIFIER, pretrained=True)
    return model.eval()


def classifier_info(name: str, kind: str = "classifier") -> dict[str, Any]:
    """Name, kind, one-line description, whether weights ship, and whether it is the default of its kind."""
    entry = _entry(name, kind)
    default = DEFAULT_CLASSIFIER if kind == "classifier" else DEFAULT_PRIOR
    return {"name": name, "kind": kind, "description": entry.description,
            "pretrained": _weights_path(entry) is not None, "default": name == default}
