"""CUDA runtime access through cuda-python: a safe GPU probe and error checking.

``cuda_device_count()`` asks ``cudaGetDeviceCount()``, which returns an error code (35 = insufficient driver,
100 = no device) instead of crashing when there is no GPU. It must be called before anything constructs a
TensorRT ``Runtime`` or ``Builder``: those only log a CUDA error without a GPU, and the first use of the broken
object segfaults.

cuda-python >= 12.6 (and 13.x) is imported as ``cuda.bindings.runtime``; older 12.x as ``cuda.cudart``.
"""

from __future__ import annotations

from typing import Any

from edgepure.runtime.errors import EdgepureError, MissingDependencyError

__all__ = [
    "CudaError",
    "NoGPUError",
    "GPU_INSTALL_HINT",
    "missing_dependency",
    "import_cudart",
    "cuda_device_count",
    "has_gpu",
    "require_gpu",
    "check_cuda",
    "error_name",
]

GPU_INSTALL_HINT = (
    "On a Jetson: flash JetPack (it ships CUDA and TensorRT; 'sudo apt install python3-libnvinfer' if the Python "
    "bindings are missing), create the virtual environment with --system-site-packages so it sees them, and "
    "'pip install cuda-python' ('cuda-python<13' on JetPack 6 / CUDA 12). On a desktop: install the NVIDIA driver, "
    "then 'pip install cuda-python tensorrt' (the tensorrt wheels come from NVIDIA's index, pypi.nvidia.com; "
    "match the CUDA major: tensorrt-cu12 / cuda-python<13 for CUDA 12)."
)


class NoGPUError(EdgepureError):
    """No usable NVIDIA GPU (no driver, no device, or the requested device index does not exist)."""


class CudaError(EdgepureError):
    """A CUDA runtime call failed (out of memory, a driver error, ...)."""


def missing_dependency(package: str, purpose: str) -> MissingDependencyError:
    """A :class:`MissingDependencyError` for ``package`` whose message ends with the GPU install hints."""
    return MissingDependencyError(package, purpose, hint=GPU_INSTALL_HINT)


def import_cudart() -> Any:
    """The cuda-python runtime module (``cudart``); :class:`MissingDependencyError` if cuda-python is absent."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6, 13.x
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6 (gone in 13.x)
        except ImportError:
            raise missing_dependency("cuda-python", "running TensorRT engines (GPU memory and streams)") from None
    return cudart


def error_name(err: Any) -> str:
    """``cudaErrorNoDevice (100)`` for a cudart error enum (or a plain int)."""
    name = getattr(err, "name", None)
    code = _code(err)
    return f"{name} ({code})" if name else f"CUDA error {code}"


def _code(err: Any) -> int:
    try:
        return int(err)
    except TypeError:
        return int(err.value)


def _probe() -> tuple[int, str]:
    """(device count, why it is 0); raises MissingDependencyError without cuda-python."""
    cudart = import_cudart()
    try:
        result = cudart.cudaGetDeviceCount()
    except (RuntimeError, OSError) as exc:  # a broken driver/library install reports here, not via a code
        return 0, f"cudaGetDeviceCount raised {type(exc).__name__}: {exc}"
    err, count = result[0], result[1]
    if _code(err) != 0:
        return 0, f"cudaGetDeviceCount returned {error_name(err)}"
    if int(count) == 0:
        return 0, "cudaGetDeviceCount found no device"
    return int(count), ""


def cuda_device_count() -> int:
    """Number of CUDA devices; 0 when the driver or the device is missing. Never crashes without a GPU.

    Raises :class:`MissingDependencyError` when cuda-python itself is not installed (use :func:`has_gpu` for a
    plain yes/no, e.g. in a test skip marker).
    """
    return _probe()[0]


def has_gpu() -> bool:
    """True when cuda-python is installed and sees at least one CUDA device."""
    try:
        return cuda_device_count() > 0
    except MissingDependencyError:
        return False


def require_gpu(purpose: str, device: int = 0) -> None:
    """Raise a clear error unless cuda-python is installed and CUDA device ``device`` exists.

    :class:`MissingDependencyError` names cuda-python when it is missing; :class:`NoGPUError` says why no device
    is usable (the cudart error) and how to install the driver / TensorRT.
    """
    count, why = _probe()
    if count == 0:
        raise NoGPUError(f"{purpose} needs an NVIDIA GPU with a working driver, and none was found ({why}). "
                         f"{GPU_INSTALL_HINT}")
    if not 0 <= device < count:
        raise NoGPUError(f"{purpose}: CUDA device {device} does not exist; found {count} device(s), "
                         f"valid indices 0..{count - 1}")


def check_cuda(result: Any, what: str) -> Any:
    """Check a cudart call's result and return its value(s).

    cuda-python calls return ``(err, *values)`` or a bare ``err``. A non-zero ``err`` raises :class:`CudaError`
    naming the call ``what``; otherwise this returns None, the single value, or the tuple of values.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if _code(err) != 0:
        raise CudaError(f"{what} failed: {error_name(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values
