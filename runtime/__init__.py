"""edgepure.runtime: the torch-free side (numpy; onnxruntime and TensorRT imported lazily).

Image decoding, preprocessing, class names, the synthetic sign source and user-facing errors live here so
that a device with no PyTorch can run edgepure models.
"""

from edgepure.runtime.errors import EdgepureError

__all__ = ["EdgepureError"]
