"""Inference backends, each in its own module with its heavy import done lazily.

=============  =====================================================================
``ort-cpu``    ONNX Runtime on the CPU (the default; what CI and laptops run)
``ort-cuda``   ONNX Runtime's CUDA provider (``onnxruntime-gpu``)
``ort-trt``    ONNX Runtime's TensorRT provider (engines cached beside the model)
``tensorrt``   native TensorRT on a prebuilt engine (buffers and stream via cuda-python)
=============  =====================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from edgepure.runtime.backends.base import Backend, TensorSpec, check_feed
from edgepure.runtime.backends.ort import PROVIDERS, OrtBackend, import_onnxruntime, ort_session
from edgepure.runtime.errors import ConfigError, ModelError

__all__ = ["BACKENDS", "Backend", "TensorSpec", "check_feed", "import_onnxruntime", "open_backend", "ort_session"]

BACKENDS = (*PROVIDERS, "tensorrt")


def open_backend(kind: str, directory: Path, role: str, manifest: dict[str, Any],
                 threads: Optional[int] = None) -> Backend:
    """Load the ``role`` model of a model directory on backend ``kind`` (one of :data:`BACKENDS`)."""
    if kind not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    entry = manifest["models"][role]
    if kind == "tensorrt":
        from edgepure.runtime.backends.cuda import require_gpu
        from edgepure.runtime.backends.tensorrt import TensorRTBackend, import_tensorrt
        from edgepure.runtime.engines import current_key, find_engine, missing_engine_message

        require_gpu(f"running the {role} model of {directory} on TensorRT")  # before TensorRT is imported
        key = current_key(manifest, role, import_tensorrt())
        path = find_engine(directory, manifest, role, key, exact=False)
        if path is None:
            raise ModelError(missing_engine_message(directory, manifest, role, key))
        used = next((e for e in (manifest.get("engines") or {}).get(role, []) if directory / e["file"] == path), {})
        return TensorRTBackend(path, dla_core=used.get("dla_core"), version_compatible=bool(used.get("version_compatible")))
    cache = directory / "trt_cache" if kind == "ort-trt" else None
    return OrtBackend(directory / entry["file"], kind, threads=threads, cache_dir=cache)
