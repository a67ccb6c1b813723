"""ONNX Runtime backend: CPU, CUDA or the TensorRT execution provider, chosen by provider list.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install the same Python package and cannot coexist; which
providers exist is read from ``get_available_providers()`` and a request for a missing one is a clear
error, never a silent fall-back to the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from edgepure.runtime.backends.base import TensorSpec, check_feed
from edgepure.runtime.errors import MissingDependencyError, ModelError

__all__ = ["OrtBackend", "PROVIDERS", "import_onnxruntime", "ort_session"]

# backend name -> ONNX Runtime providers, in priority order (the CPU provider backs up unsupported nodes)
PROVIDERS: dict[str, tuple[str, ...]] = {
    "ort-cpu": ("CPUExecutionProvider",),
    "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "running ONNX models", extra="ort") from None
    return onnxruntime


def ort_session(model: bytes | str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                threads: int | None = None, provider_options: Optional[Sequence[dict[str, Any]]] = None,
                fuse_quantized: bool = True) -> Any:
    """An InferenceSession on ``model`` (bytes or a path) with the given providers and intra-op threads.

    ``fuse_quantized=False`` keeps ONNX Runtime's graph optimisations at the basic level, where Q/DQ pairs
    stay separate nodes around float operators: INT8 rounding and clipping computed exactly in float (what
    TensorRT's 32-bit accumulation gives), instead of the fused integer kernels of the CPU at hand."""
    ort = import_onnxruntime()
    available = set(ort.get_available_providers())
    missing = [p for p in providers if p not in available]
    if missing:
        hint = ("pip uninstall onnxruntime && pip install 'edgepure[ort-gpu]' "
                "(on a Jetson, NVIDIA's onnxruntime-gpu build)")
        raise MissingDependencyError("onnxruntime-gpu", "", message=(
            f"this ONNX Runtime has no {', '.join(missing)} (it has {', '.join(sorted(available))}): {hint}"))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not fuse_quantized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads is not None:
        opts.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=list(providers),
                                    provider_options=list(provider_options) if provider_options else None)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types; a bad model file is a user error
        where = "the model" if isinstance(model, bytes) else str(model)
        raise ModelError(f"{where}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc)[:300]})") from None


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(int(d) if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


class OrtBackend:
    """One ONNX file in an ONNX Runtime session (``kind`` one of :data:`PROVIDERS`)."""

    def __init__(self, path: str | Path, kind: str = "ort-cpu", threads: Optional[int] = None,
                 cache_dir: Optional[Path] = None) -> None:
        self.name = kind
        self.path = Path(path)
        options = None
        if kind == "ort-trt" and cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            trt = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
                   "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir)}
            options = [trt, {}, {}]
        self.session = ort_session(self.path, PROVIDERS[kind], threads, options)
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        dynamic = [s.name for s in self.inputs if any(d < 0 for d in s.shape)]
        if dynamic:
            raise ModelError(f"{self.path}: inputs {dynamic} have dynamic dimensions; edgepure graphs are static")
        self._names = [s.name for s in self.outputs]

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        check_feed(self.inputs, feed, self.path.name)
        return self.session.run(self._names, feed)  # type: ignore[no-any-return]

    def run_trusted(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """:meth:`run` for feeds built to :attr:`inputs` by the caller (the runtime's hot path): no checks."""
        return self.session.run(self._names, feed)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.session = None

    def __repr__(self) -> str:
        return f"OrtBackend({self.path.name!r}, {self.name})"
