"""Checks of a model directory's manifest: its structure once on load, and each graph against its entry.

A manifest is JSON a user can edit, copy or damage, so nothing downstream indexes it before
:func:`check_structure` has said that every field the runtime reads is there with the right type. A graph
that loads is then compared with its entry by :func:`check_graph`: a graph swapped for another one (another
class count, input size, batch or role) must be refused, not run with wrong answers.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Optional, Sequence

from edgepure.runtime.errors import ModelError

__all__ = ["ROLES", "check_graph", "check_structure", "inside"]

ROLES = ("classifier", "purifier", "pipeline")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _kind(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
                                         int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def inside(rel: str) -> bool:
    """Whether the relative path ``rel`` stays inside the directory it is relative to (no ``..``, not absolute)."""
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    return bool(parts) and not PurePosixPath(rel).is_absolute() and not PureWindowsPath(rel).is_absolute() \
        and ".." not in parts and not PureWindowsPath(rel).drive


def _tensors(value: Any, where: str) -> None:
    if not isinstance(value, list) or not value:
        raise ModelError(f"{where}: expected a non-empty list of {{name, shape, dtype}}, found {_kind(value)}")
    for i, t in enumerate(value):
        ok = (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
              and isinstance(t.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in t["shape"]))
        if not ok:
            raise ModelError(f"{where}[{i}]: expected {{'name': str, 'shape': [ints ≥ 0], 'dtype': str}}, "
                             f"found {str(t)[:120]}")


def _model_entry(role: str, entry: Any, where: str) -> None:
    if role not in ROLES:
        raise ModelError(f"{where}: unknown graph role {role!r} (expected {', '.join(ROLES)})")
    here = f"{where}['{role}']"
    if not isinstance(entry, dict):
        raise ModelError(f"{here}: expected an object, found {_kind(entry)}")
    file = entry.get("file")
    if not isinstance(file, str) or not file:
        raise ModelError(f"{here}: 'file' must be a file name, found {_kind(file)}")
    if not inside(file):
        raise ModelError(f"{here}: file {file!r} is not inside the model directory")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ModelError(f"{here}: 'sha256' must be 64 lower-case hex digits, found {str(sha)[:70]!r}")
    _tensors(entry.get("inputs"), f"{here}['inputs']")
    _tensors(entry.get("outputs"), f"{here}['outputs']")


def check_structure(manifest: dict[str, Any], path: Path) -> None:
    """Refuse a manifest any of whose fields the runtime reads is missing or of the wrong type (one clear
    :class:`ModelError` naming the field), so that no ``KeyError`` or ``TypeError`` can come later."""
    models = manifest.get("models")
    if not isinstance(models, dict) or not models:
        raise ModelError(f"{path}: 'models' must be an object mapping {', '.join(ROLES)} to graph entries, "
                         f"found {_kind(models)}")
    for role, entry in models.items():
        _model_entry(role, entry, f"{path}: models")
    if "classifier" not in models and "pipeline" not in models:
        raise ModelError(f"{path}: 'models' has neither a classifier nor a pipeline entry (has {', '.join(models)})")
    names = manifest.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelError(f"{path}: 'class_names' must be a list of strings, found {_kind(names)}")
    _preprocessing(manifest.get("preprocessing"), path)
    for key in ("purifier", "classifier", "calibration"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise ModelError(f"{path}: '{key}' must be an object or null, found {_kind(manifest[key])}")
    batch = manifest.get("batch", 1)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ModelError(f"{path}: 'batch' must be a positive integer, found {batch!r}")
    if not isinstance(manifest.get("precision", "fp32"), str):
        raise ModelError(f"{path}: 'precision' must be a string, found {_kind(manifest['precision'])}")
    _engines(manifest.get("engines"), path)


def _preprocessing(pre: Any, path: Path) -> None:
    if not isinstance(pre, dict):
        raise ModelError(f"{path}: 'preprocessing' must be an object, found {_kind(pre)}")
    if "input" in pre and not isinstance(pre["input"], str):
        raise ModelError(f"{path}: preprocessing 'input' must be a string, found {_kind(pre['input'])}")
    size = pre.get("size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size)):
        raise ModelError(f"{path}: preprocessing 'size' must be [height, width] in pixels, found {str(size)[:60]}")


def _engines(engines: Any, path: Path) -> None:
    if engines is None:
        return
    if not isinstance(engines, dict):
        raise ModelError(f"{path}: 'engines' must be an object mapping roles to lists, found {_kind(engines)}")
    for role, entries in engines.items():
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ModelError(f"{path}: engines['{role}'] must be a list of objects, found {_kind(entries)}")


def _describe(specs: Sequence[Any]) -> str:
    return ", ".join(f"{s['name']}{s['shape']} {s['dtype']}" for s in specs)


def _known(shape: Sequence[Any]) -> list[int]:
    """A shape with every unknown dimension (symbolic, -1, None) as 0, as export writes them in a manifest."""
    return [d if isinstance(d, int) and d > 0 else 0 for d in shape]


def _same(graph: list[dict[str, Any]], listed: list[dict[str, Any]]) -> bool:
    """Names and dtypes equal; shapes equal wherever both sides know the dimension (an output's shape may be
    unknown to the graph: a user's ONNX classifier can leave it out)."""
    if [(g["name"], g["dtype"]) for g in graph] != [(m["name"], m["dtype"]) for m in listed]:
        return False
    for g, m in zip(graph, listed):
        if g["shape"] and m["shape"]:
            if len(g["shape"]) != len(m["shape"]) or any(a and b and a != b for a, b in zip(g["shape"], m["shape"])):
                return False
    return True


def check_graph(where: str, role: str, entry: dict[str, Any], inputs: Sequence[Any], outputs: Sequence[Any],
                class_names: Sequence[str], batch: Optional[int] = None) -> None:
    """Compare a loaded graph's inputs and outputs (``TensorSpec``-like: name, shape, dtype) with its manifest
    ``entry`` and with what the runtime feeds and reads for ``role``; :class:`ModelError` on any mismatch."""
    for what, found, listed in (("inputs", inputs, entry["inputs"]), ("outputs", outputs, entry["outputs"])):
        graph = [{"name": s.name, "shape": _known(s.shape), "dtype": s.dtype} for s in found]
        if not _same(graph, listed):
            raise ModelError(f"{where}: the {role} graph's {what} are {_describe(graph)}, but the manifest lists "
                             f"{_describe(listed)}: the graph was replaced or the manifest edited after export")
    image = inputs[0]
    if image.dtype != "float32" or len(image.shape) != 4 or image.shape[1] != 3:
        raise ModelError(f"{where}: the {role} graph takes {image.name}{list(image.shape)} {image.dtype}; this "
                         "runtime feeds float32 RGB images N×3×H×W in [0, 1]")
    if batch is not None and image.shape[0] != batch:
        raise ModelError(f"{where}: the {role} graph has batch {image.shape[0]}, the manifest says {batch}")
    out = outputs[0]
    if not out.shape or not all(_known(out.shape)):
        return  # nothing more to compare than the manifest's entry
    if role == "purifier":
        if list(out.shape) != list(image.shape) or out.dtype != "float32":
            raise ModelError(f"{where}: the purifier graph returns {out.name}{list(out.shape)} {out.dtype}; expected "
                             f"images of its input's shape {list(image.shape)} float32")
        return
    if len(out.shape) != 2 or out.shape[0] != image.shape[0] or out.dtype != "float32":
        raise ModelError(f"{where}: the {role} graph returns {out.name}{list(out.shape)} {out.dtype}; expected "
                         f"float32 logits [{image.shape[0]}, classes] (is it another role's graph?)")
    if class_names and out.shape[1] != len(class_names):
        raise ModelError(f"{where}: the {role} graph scores {out.shape[1]} classes, the manifest names "
                         f"{len(class_names)}")
