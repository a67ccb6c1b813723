"""ONNX Runtime: session creation with a clear message when onnxruntime is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgepure.runtime.errors import MissingDependencyError, ModelError

__all__ = ["import_onnxruntime", "ort_session"]


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "running ONNX models", extra="ort") from None
    return onnxruntime


def ort_session(model: bytes | str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                threads: int | None = None) -> Any:
    """An InferenceSession on ``model`` (bytes or a path) with the given providers and intra-op threads."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types; a bad model file is a user error
        where = "the model" if isinstance(model, bytes) else str(model)
        raise ModelError(f"{where}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc)[:300]})") from None
