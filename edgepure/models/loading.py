"""Resolve a ``--model`` value: a registered name with shipped weights, or a training checkpoint."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from edgepure.models.registry import create_classifier, create_prior, load_classifier, load_weights_file
from edgepure.runtime.errors import ConfigError, ModelError

__all__ = ["frozen", "load_classifier_source", "prior_label", "resolve_classifier", "resolve_prior"]


def frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter's gradient off (a fixed network that attacks and losses go through)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resolve_device(name: str) -> torch.device:
    """The PyTorch device ``name`` ("cpu", "cuda", "cuda:N"), checked to exist here."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r}: not a device (expected cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: expected cpu, cuda or cuda:N, found device type {dev.type!r}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name}: PyTorch sees no CUDA device here (torch {torch.__version__}, "
                              f"CUDA build {torch.version.cuda or 'none'}); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"--device {name}: PyTorch sees {count} CUDA device(s), numbered 0 to {count - 1}")
    return dev


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


class OnDevice(nn.Module):
    """``module`` on ``device``, called with tensors on any device: tensor arguments move there and results (tensors,
    or lists, tuples and dicts of them) come back to the device of the first tensor argument; gradients flow
    through both moves. The trainers keep data, augmentation and every seeded draw on the CPU (so a GPU run draws
    what a CPU run draws) and run their networks where ``--device`` says. Methods of the module (a classifier's
    ``stage_features``) are wrapped the same way; the module itself is ``.inner``."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.inner = module.to(device)
        self.target = torch.device(device)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        home = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        return _moved(fn(*_moved(args, self.target), **_moved(kwargs, self.target)), home)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self._call(self.inner, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = super().__getattr__("inner")
            attr = getattr(inner, name)
            if inspect.ismethod(attr) and attr.__self__ is inner:
                return lambda *a, **k: self._call(attr, *a, **k)
            return attr


def on_device(module: nn.Module, device: str | torch.device) -> nn.Module:
    """``module`` itself on the CPU, else :class:`OnDevice` (the module moved to ``device``)."""
    dev = torch.device(device)
    return module if dev.type == "cpu" else OnDevice(module, dev)


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
