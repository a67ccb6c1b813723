"""Resumable checkpoints as safetensors + JSON (never pickle).

``<tag>.safetensors`` holds the model weights (loadable on its own), ``<tag>.optim.safetensors`` the
optimizer's tensors, ``<tag>.json`` the configuration, epoch, history and the optimizer's scalar state.
Files are written to temporary names and renamed, so an interrupted save never leaves a half-written
checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgepure.runtime.errors import ConfigError, ModelError
from edgepure.runtime.manifest import make_public

__all__ = ["check_resumable", "init_from", "load_checkpoint", "load_last", "save_checkpoint", "write_json_atomic"]


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    make_public(tmp)  # safetensors creates its files 0600; a checkpoint is an ordinary file
    os.replace(tmp, path)


def _split_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(
    directory: Path, tag: str, model: nn.Module, optimizer: torch.optim.Optimizer | None, meta: dict[str, Any]
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _save_tensors(directory / f"{tag}.safetensors", dict(model.state_dict()))
    record = dict(meta)
    if optimizer is not None:
        tensors, state = _split_optimizer(optimizer)
        _save_tensors(directory / f"{tag}.optim.safetensors", tensors or {"_empty": torch.zeros(1)})
        record["optimizer"] = state
    write_json_atomic(directory / f"{tag}.json", record)  # written last: its presence marks a whole checkpoint


def load_checkpoint(
    directory: Path, tag: str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``); return its JSON record."""
    from safetensors.torch import load_file

    from edgepure.models.registry import load_weights_file

    meta_path = directory / f"{tag}.json"
    if not meta_path.is_file():
        raise ModelError(f"{meta_path}: no checkpoint to resume from")
    try:
        record = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_path}: corrupt checkpoint record ({exc})") from None
    load_weights_file(model, directory / f"{tag}.safetensors")
    if optimizer is not None and "optimizer" in record:
        tensors = load_file(str(directory / f"{tag}.optim.safetensors"))
        state: dict[int, dict[str, Any]] = {}
        for key, v in tensors.items():
            if key == "_empty":
                continue
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        for pid, sc in record["optimizer"]["scalars"].items():
            state.setdefault(int(pid), {}).update(sc)
        optimizer.load_state_dict({"state": state, "param_groups": record["optimizer"]["param_groups"]})
    return record


RESUME_KEYS = ("data", "model", "seed", "batch_size", "val_fraction", "split_seed")


def check_resumable(directory: Path, record: dict[str, Any], cfg: Any, keys: tuple[str, ...] = RESUME_KEYS) -> None:
    """Refuse to resume a run with settings that would make it a different run."""
    saved = record.get("config", {})
    for key in keys:
        if key in saved and saved[key] != getattr(cfg, key):
            raise ModelError(f"{directory}: checkpoint was trained with {key}={saved[key]!r}, "
                             f"asked to resume with {getattr(cfg, key)!r}")


def load_last(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None,
              cfg: Any, keys: tuple[str, ...] = RESUME_KEYS) -> dict[str, Any]:
    """Load a run's ``last`` checkpoint into ``model`` and ``optimizer`` and its ``last_ema`` into ``ema``, refusing a
    run with other settings (``keys``); returns the checkpoint's record."""
    record = load_checkpoint(directory, "last", model, optimizer)
    if ema is not None:
        load_checkpoint(directory, "last_ema", ema)
    check_resumable(directory, record, cfg, keys)
    return record


def init_from(model: nn.Module, src: nn.Module, spec: str, arch: str) -> None:
    """Copy the weights of ``src`` (what ``--init spec`` resolved to) into ``model``, a fresh ``arch``: a user error
    when ``src`` is another architecture or its weights do not fit."""
    name = getattr(src, "edgepure_name", None)
    if name is not None and name != arch and not _same_layout(model, src):
        raise ConfigError(f"--init {spec}: it is a {name}, the run trains a {arch}")
    try:
        model.load_state_dict(src.state_dict())
    except RuntimeError as exc:
        raise ConfigError(f"--init {spec}: its weights do not fit {arch} ({str(exc).splitlines()[0]})") from None


def _same_layout(model: nn.Module, src: nn.Module) -> bool:
    """Whether ``src`` is ``model``'s architecture under another registered name (``signnet_s_cutmix`` is
    ``signnet_s`` with other weights): the same class and the same tensors by name and shape."""
    a, b = model.state_dict(), src.state_dict()
    return type(model) is type(src) and a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
