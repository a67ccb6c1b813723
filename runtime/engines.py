"""The TensorRT engine cache of a model directory.

An engine only loads under the TensorRT version and on the GPU it was built with, so every engine is recorded
in ``manifest["engines"][role]`` with the key it was built for (:class:`EngineKey`: ONNX sha256, TensorRT
version, GPU name and compute capability, precision, batch, DLA core, version compatibility) and stored under
``engines/`` with a name in the jetson-inference spirit::

    engines/pipeline.b1.fp16.trt10.3.0.orin-sm87.3f2a9c01d4.engine

:func:`find_engine` returns the engine for a key (after checking its sha256); :func:`stale_engines` lists the
ones built elsewhere, so the runtime can say what to rebuild. Nothing here imports TensorRT at module level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Optional

from edgepure.runtime.backends.cuda import check_cuda, import_cudart, require_gpu
from edgepure.runtime.errors import ConfigError, ModelError
from edgepure.runtime.manifest import sha256_file

__all__ = [
    "ENGINE_DIR",
    "KEY_FIELDS",
    "PRECISIONS",
    "EngineKey",
    "current_device",
    "current_key",
    "engine_entry",
    "engine_mismatch",
    "find_engine",
    "missing_engine_message",
    "rebuild_command",
    "stale_engines",
]

ENGINE_DIR = "engines"
PRECISIONS = ("fp32", "fp16", "int8")
# fields that decide whether an engine loads at all; the others (precision, DLA, version compatibility) are
# build choices, any of which runs on this device
_LOADABLE = ("onnx_sha256", "tensorrt", "gpu", "compute_capability", "batch")


@dataclasses.dataclass(frozen=True)
class EngineKey:
    """Everything a TensorRT engine depends on; equal keys mean interchangeable engines."""

    onnx_sha256: str
    tensorrt: str  # TensorRT version string, e.g. "10.3.0"
    gpu: str  # CUDA device name, e.g. "Orin"
    compute_capability: str  # "8.7"
    precision: str  # fp32 | fp16 | int8
    batch: int
    dla_core: Optional[int] = None
    version_compatible: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short stable hash (16 hex digits) of all fields."""
        blob = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def filename(self, role: str) -> str:
        """The engine's path relative to the model directory, e.g. ``engines/pipeline.b1.fp16.trt10.3.0.orin-sm87.<digest10>.engine``."""
        parts = [_slug(role), f"b{self.batch}", self.precision]
        if self.dla_core is not None:
            parts.append(f"dla{self.dla_core}")
        if self.version_compatible:
            parts.append("vc")
        version = re.sub(r"[^0-9A-Za-z.]+", "", self.tensorrt) or "unknown"
        cc = re.sub(r"[^0-9]+", "", self.compute_capability) or "0"
        parts += [f"trt{version}", f"{_slug(self.gpu)}-sm{cc}", self.digest()[:10], "engine"]
        return f"{ENGINE_DIR}/" + ".".join(parts)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Optional[EngineKey]:
        """The key recorded in a manifest engine entry; None when the entry lacks fields or holds bad values."""
        try:
            return cls(**{f.name: entry[f.name] for f in dataclasses.fields(cls)})
        except (KeyError, TypeError, ConfigError):
            return None


KEY_FIELDS = tuple(f.name for f in dataclasses.fields(EngineKey))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def current_device(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "8.7") of CUDA device ``device``; probes for a GPU first."""
    require_gpu("reading the GPU's properties", device)
    prop = check_cuda(import_cudart().cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    return str(name).strip("\0 ").strip(), f"{int(prop.major)}.{int(prop.minor)}"


def current_key(manifest: dict[str, Any], role: str, trt: Any, precision: Optional[str] = None,
                dla_core: Optional[int] = None, version_compatible: bool = False, device: int = 0) -> EngineKey:
    """The key of an engine for ``role`` built here with TensorRT module ``trt`` (precision: the manifest's)."""
    gpu, cc = current_device(device)
    return EngineKey(
        onnx_sha256=str(manifest["models"][role]["sha256"]),
        tensorrt=str(trt.__version__),
        gpu=gpu,
        compute_capability=cc,
        precision=precision or str(manifest.get("precision", "fp32")),
        batch=int(manifest.get("batch", 1)),
        dla_core=dla_core,
        version_compatible=bool(version_compatible),
    )


def _entries(manifest: dict[str, Any], role: str) -> list[dict[str, Any]]:
    entries = (manifest.get("engines") or {}).get(role) or []
    return [e for e in entries if isinstance(e, dict)]


def _loadable(entry_key: EngineKey, key: EngineKey) -> bool:
    return all(getattr(entry_key, f) == getattr(key, f) for f in _LOADABLE)


def engine_entry(manifest: dict[str, Any], role: str, key: EngineKey, exact: bool = True) -> Optional[dict[str, Any]]:
    """The manifest entry of the ``role`` engine for ``key`` (no file checks); None when there is none.

    With ``exact=False`` any engine that loads here is accepted: same ONNX, TensorRT version, GPU and batch,
    whatever its precision, DLA core or version compatibility; the closest on those, then the newest, wins.
    """
    candidates: list[tuple[int, str, dict[str, Any]]] = []
    for entry in _entries(manifest, role):
        ek = EngineKey.from_entry(entry)
        if ek is None:
            continue
        if ek == key:
            candidates.append((0, str(entry.get("created", "")), entry))
        elif not exact and _loadable(ek, key):
            misses = sum(getattr(ek, f) != getattr(key, f) for f in ("precision", "dla_core", "version_compatible"))
            candidates.append((misses, str(entry.get("created", "")), entry))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[1], reverse=True)  # newest first ("created" is ISO text) ...
    candidates.sort(key=lambda c: c[0])  # ... within the fewest differences (a stable sort)
    return candidates[0][2]


def find_engine(directory: str | Path, manifest: dict[str, Any], role: str, key: EngineKey,
                exact: bool = True) -> Optional[Path]:
    """The engine file recorded for ``key`` (see :func:`engine_entry`), after checking its sha256; else None.

    :class:`ModelError` when that engine file is missing, outside the directory, or modified.
    """
    entry = engine_entry(manifest, role, key, exact)
    return None if entry is None else _verified(Path(directory), entry, role)


def _verified(directory: Path, entry: dict[str, Any], role: str) -> Path:
    rel = str(entry.get("file", ""))
    path = directory / rel
    fix = f"run '{rebuild_command(directory, role)} --force'"
    if not rel or Path(rel).is_absolute() or directory.resolve() not in path.resolve().parents:
        raise ModelError(f"{directory}: the manifest's {role} engine path {rel!r} is not inside the model directory")
    if not path.is_file():
        raise ModelError(f"{path}: the manifest's {role} engine file is missing; {fix}")
    found = sha256_file(path)
    if found != entry.get("sha256"):
        raise ModelError(f"{path}: sha256 mismatch (manifest {str(entry.get('sha256'))[:16]}…, file {found[:16]}…): "
                         f"the engine was modified or replaced after it was built; {fix}")
    return path


def stale_engines(manifest: dict[str, Any], role: str, key: EngineKey) -> list[dict[str, Any]]:
    """The ``role`` engine entries that cannot load here (another ONNX, TensorRT version, GPU or batch)."""
    out = []
    for entry in _entries(manifest, role):
        ek = EngineKey.from_entry(entry)
        if ek is None or not _loadable(ek, key):
            out.append(entry)
    return out


def _where(tensorrt: Any, gpu: Any, cc: Any) -> str:
    return f"TensorRT {tensorrt} on {gpu} (sm {cc})"


def engine_mismatch(entry: dict[str, Any], key: EngineKey) -> str:
    """Why engine ``entry`` does not fit ``key``, e.g. ``built for TensorRT 10.3.0 on Orin (sm 8.7)``."""
    ek = EngineKey.from_entry(entry)
    if ek is None:
        return f"{entry.get('file', '?')}: an engine entry without a complete key"
    reasons = []
    if (ek.tensorrt, ek.gpu, ek.compute_capability) != (key.tensorrt, key.gpu, key.compute_capability):
        reasons.append(f"built for {_where(ek.tensorrt, ek.gpu, ek.compute_capability)}")
    if ek.onnx_sha256 != key.onnx_sha256:
        reasons.append("built from another ONNX file (the model changed since)")
    if ek.batch != key.batch:
        reasons.append(f"batch {ek.batch} (the model has {key.batch})")
    for name in ("precision", "dla_core", "version_compatible"):
        if getattr(ek, name) != getattr(key, name):
            reasons.append(f"{name} {getattr(ek, name)}")
    return f"{entry.get('file', '?')}: " + ("; ".join(reasons) or "same key")


def rebuild_command(directory: str | Path, role: str) -> str:
    return f"edgepure build {directory} --role {role}"


def missing_engine_message(directory: str | Path, manifest: dict[str, Any], role: str, key: EngineKey) -> str:
    """What to tell a user when no engine fits: which engines exist and were built where, and the command."""
    here = _where(key.tensorrt, key.gpu, key.compute_capability)
    stale = stale_engines(manifest, role, key)
    if stale:
        lines = [f"{directory}: no TensorRT engine for the {role} model fits this device ({here}):"]
        lines += [f"  {engine_mismatch(e, key)}" for e in stale]
        head = "\n".join(lines) + "\nEngines are tied to the TensorRT version and the GPU they were built with."
    else:
        head = f"{directory}: no TensorRT engine for the {role} model (the manifest lists none for {here})."
    return (f"{head} Build one on this device: run '{rebuild_command(directory, role)}' "
            "(or use --backend ort-trt to let ONNX Runtime's TensorRT provider build and cache one)")
