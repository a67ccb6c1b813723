"""Inference backends, each in its own module with its heavy import done lazily."""

from edgepure.runtime.backends.ort import import_onnxruntime, ort_session

__all__ = ["import_onnxruntime", "ort_session"]
