"""Build TensorRT engines for a model directory (``edgepure build``), on TensorRT 10.x and 11.x.

Networks are strongly typed: the precision is the one baked into the ONNX graph (``export --precision fp16``,
Q/DQ nodes from ``edgepure calibrate`` for int8). TensorRT 11 knows nothing else; on TensorRT 10 an fp32 graph
may still be built with the deprecated weakly typed FP16 flag. The engine and the manifest entry are written
atomically (temporary file + ``os.replace``); a failed build leaves the model directory as it was.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from edgepure.runtime.backends.cuda import missing_dependency, require_gpu
from edgepure.runtime.backends.tensorrt import import_tensorrt, trt_major
from edgepure.runtime.engines import ENGINE_DIR, KEY_FIELDS, PRECISIONS, current_key, engine_entry, find_engine
from edgepure.runtime.errors import ConfigError, ModelError
from edgepure.runtime.manifest import MANIFEST_NAME, load_manifest, make_public

__all__ = ["TIMING_CACHE_NAME", "build_engine", "check_precision", "describe_engine"]

TIMING_CACHE_NAME = "timing.cache"


def check_precision(graph: str, precision: str, dla_core: Optional[int]) -> None:
    """Refuse precision / DLA requests that no TensorRT version can build from a ``graph``-precision model."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and graph != "int8":
        raise ConfigError(f"an int8 engine needs a Q/DQ (quantized) graph and this model directory is {graph}: "
                          "run 'edgepure calibrate' first")
    if graph == "int8" and precision != "int8":
        raise ConfigError(f"this model directory holds a quantized (Q/DQ) graph: build it as int8, not {precision}")
    if graph == "fp16" and precision == "fp32":
        raise ConfigError("this model directory's graph is fp16; export with --precision fp32 for an fp32 engine")
    if dla_core is not None:
        if dla_core < 0:
            raise ConfigError(f"--dla-core must be 0 or more, got {dla_core}")
        if precision == "fp32":
            raise ConfigError("the DLA runs fp16 and int8 only: export with --precision fp16 (or calibrate to int8)")


def _weak_fp16(trt: Any) -> bool:
    """Whether this TensorRT still has the weakly typed FP16 builder flag (10.x; removed in 11)."""
    return trt_major(trt) < 11 and hasattr(trt.BuilderFlag, "FP16")


def _network_flags(trt: Any, weak: bool) -> int:
    if weak:
        return 0
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # opt-in on 10.x, implied on 11.x
    return 0 if flag is None else 1 << int(flag)


def _atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` (synced); the caller moves it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        make_public(tmp)  # mkstemp's 0600 would hide the engine, manifest and timing cache from other users
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _read_timing_cache(path: Path) -> bytes:
    try:
        return path.read_bytes() if path.is_file() else b""
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the timing cache ({exc.strerror})") from None


def _set_timing_cache(config: Any, data: bytes) -> bool:
    """Attach a timing cache made from ``data``; False when ``data`` was unusable (another TensorRT version or
    device) and an empty cache is used instead (the file is overwritten after the build)."""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False) is not False:
        return True
    if not data:
        raise ModelError("TensorRT could not create an empty timing cache")
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return False


def build_engine(
    directory: str | Path,
    role: str = "pipeline",
    precision: Optional[str] = None,
    workspace_bytes: int = 1 << 30,
    dla_core: Optional[int] = None,
    timing_cache: Optional[str | Path] = None,
    version_compatible: bool = False,
    force: bool = False,
    logger: Any = None,
) -> dict[str, Any]:
    """Build (or find cached) the TensorRT engine of ``role`` in a model directory; returns its manifest entry.

    The returned dict is the entry written to ``manifest["engines"][role]`` plus ``cached`` (True when an engine
    with the same key was already there and ``force`` is off). ``precision`` defaults to the directory's.
    """
    d = Path(directory)
    manifest = load_manifest(d)  # checks every ONNX file's sha256
    if role not in manifest["models"]:
        raise ConfigError(f"{d}: no {role} model (has {', '.join(manifest['models'])}); pick one with --role")
    graph = str(manifest.get("precision", "fp32"))
    precision = precision or graph
    check_precision(graph, precision, dla_core)
    if workspace_bytes <= 0:
        raise ConfigError(f"the workspace must be positive, got {workspace_bytes} bytes")
    cache_path = Path(timing_cache) if timing_cache is not None else d / ENGINE_DIR / TIMING_CACHE_NAME

    require_gpu(f"building a TensorRT engine for {d}")  # a Builder made without a GPU segfaults on use
    trt = import_tensorrt()
    if not hasattr(trt, "Builder"):
        raise missing_dependency("tensorrt", f"building engines (TensorRT {trt.__version__}'s lean runtime "
                                             f"'{trt.__name__}' only runs them)")
    weak = precision == "fp16" and graph == "fp32"
    if weak and not _weak_fp16(trt):
        raise ConfigError(f"TensorRT {trt.__version__} builds strongly typed networks only: the precision comes "
                          f"from the graph. Export with --precision fp16 for an fp16 engine")
    key = current_key(manifest, role, trt, precision, dla_core, version_compatible)
    if not force:
        if find_engine(d, manifest, role, key) is not None:  # ModelError if that engine file was tampered with
            return {**(engine_entry(manifest, role, key) or {}), "cached": True}

    onnx_path = d / manifest["models"][role]["file"]
    logger = logger if logger is not None else trt.Logger(trt.Logger.WARNING)
    init_plugins = getattr(trt, "init_libnvinfer_plugins", None)
    if init_plugins is not None:  # plugin-backed ops (e.g. ScatterElements with a reduction) need the registry
        init_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, weak))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse the graph:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    _set_timing_cache(config, _read_timing_cache(cache_path))
    if weak:
        config.set_flag(trt.BuilderFlag.FP16)
    if dla_core is not None:
        cores = getattr(builder, "num_DLA_cores", None)
        if cores is not None and dla_core >= int(cores):
            raise ConfigError(f"--dla-core {dla_core}: this device has {cores} DLA core(s)"
                              f"{'' if cores else ' (Orin AGX/NX have DLAs; Orin Nano and Thor do not)'}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise ModelError(f"{onnx_path}: TensorRT {trt.__version__} could not build the {role} engine; the reason "
                         "is in the TensorRT log above (pass a trt.Logger(trt.Logger.VERBOSE) for more)")
    data = bytes(plan)
    entry: dict[str, Any] = {
        "file": key.filename(role),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **key.as_dict(),
        "workspace": int(workspace_bytes),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
    }
    _commit(d, manifest, role, entry, data)
    try:
        _save_timing_cache(config, cache_path)
    except OSError as exc:  # the engine is built and recorded; a timing cache only speeds up the next build
        warnings.warn(f"{cache_path}: could not save the TensorRT timing cache ({exc})", RuntimeWarning, stacklevel=2)
    return {**entry, "cached": False}


def _commit(d: Path, manifest: dict[str, Any], role: str, entry: dict[str, Any], data: bytes) -> None:
    """Write the engine and the updated manifest to temporary files, then move both into place."""
    engine = d / entry["file"]
    engine.parent.mkdir(parents=True, exist_ok=True)
    entries = [e for e in (manifest.setdefault("engines", {}).get(role) or [])
               if not (isinstance(e, dict) and (e.get("file") == entry["file"]
                                                or all(e.get(k) == entry[k] for k in KEY_FIELDS)))]
    manifest["engines"][role] = [*entries, entry]
    tmp_engine = _atomic_write(engine, data)
    try:
        tmp_manifest = _atomic_write(d / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    except BaseException:
        os.unlink(tmp_engine)
        raise
    try:
        os.replace(tmp_engine, engine)
    except BaseException:
        os.unlink(tmp_engine)
        os.unlink(tmp_manifest)
        raise
    os.replace(tmp_manifest, d / MANIFEST_NAME)


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(_atomic_write(path, bytes(cache.serialize())), path)


def describe_engine(entry: dict[str, Any]) -> str:
    """One line about an engine entry, for logs and the CLI."""
    extra = "".join([f", DLA core {entry['dla_core']}" if entry.get("dla_core") is not None else "",
                     ", version-compatible" if entry.get("version_compatible") else ""])
    return (f"{entry['file']} (TensorRT {entry['tensorrt']} on {entry['gpu']} sm {entry['compute_capability']}, "
            f"{entry['precision']}, batch {entry['batch']}{extra}, {entry['size'] / 1e6:.2f} MB)")
