"""The model directory's ``manifest.json``: the contract between export and the runtime.

A model directory holds single-file ONNX models (and later TensorRT engines) and one ``manifest.json``
describing each: file, sha256, inputs and outputs (names, shapes, dtypes), plus the preprocessing, class
names, purifier configuration, parity figures, lint result and the versions used. Loading verifies every
file's sha256, so a tampered or swapped model is refused before anything runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edgepure.runtime.errors import ModelError
from edgepure.runtime.manifest_check import check_structure

__all__ = ["MANIFEST_NAME", "SCHEMA_VERSION", "load_manifest", "make_public", "sha256_file", "verify_files"]

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
_REQUIRED = ("schema", "models", "preprocessing", "class_names")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(directory: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read and check ``directory/manifest.json``; with ``verify`` also every model file's sha256."""
    d = Path(directory)
    path = d / MANIFEST_NAME if d.is_dir() else d
    if not path.is_file():
        raise ModelError(f"{path}: no manifest (expected a model directory written by 'edgepure export')")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{path}: expected a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ModelError(f"{path}: manifest lacks {', '.join(missing)}")
    if manifest["schema"] != SCHEMA_VERSION:
        raise ModelError(f"{path}: manifest schema {manifest['schema']!r}, this edgepure reads schema {SCHEMA_VERSION}")
    check_structure(manifest, path)
    if verify:
        verify_files(manifest, path.parent)
    return manifest


def verify_files(manifest: dict[str, Any], directory: Path) -> None:
    for role, entry in manifest["models"].items():
        file = directory / entry["file"]
        if not file.is_file():
            raise ModelError(f"{file}: the manifest's {role} model file is missing")
        try:
            found = sha256_file(file)
        except OSError as exc:
            raise ModelError(f"{file}: cannot read the manifest's {role} model file ({exc.strerror})") from None
        if found != entry["sha256"]:
            raise ModelError(
                f"{file}: sha256 mismatch (manifest {entry['sha256'][:16]}…, file {found[:16]}…): "
                "the model was modified or replaced after export"
            )


def make_public(path: str | Path) -> None:
    """Give a file or directory made by ``tempfile`` (0600 / 0700) the mode an ordinary ``open``/``mkdir``
    would have (0666 / 0777 less the umask), before it is moved into place as an artifact: a model directory,
    engine or manifest must be readable by the service that runs it, not only by whoever built it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)
