"""TensorRT: run a serialized engine (``.plan``/``.engine``) on host numpy arrays.

Works with the TensorRT 10.x and 11.x Python API (name-based IO tensors, ``execute_async_v3``) and with the
lean runtime (``tensorrt_lean``), which only runs version-compatible plans. GPU memory and the stream come from
cuda-python. The GPU is probed with ``cudaGetDeviceCount`` before TensorRT is imported, because a TensorRT
``Runtime`` built without a GPU segfaults on first use.

Engines have static shapes (one fixed shape per IO tensor); buffers are allocated once, at load time. A
backend is not thread-safe: use one per thread.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from edgepure.runtime.backends.base import TensorSpec, check_feed
from edgepure.runtime.backends.cuda import (
    CudaError,
    check_cuda,
    import_cudart,
    missing_dependency,
    require_gpu,
)
from edgepure.runtime.errors import ModelError

__all__ = ["TensorRTBackend", "import_tensorrt", "trt_major", "numpy_dtype"]

# TensorRT DataType names -> numpy dtype names, for when ``trt.nptype`` is missing
_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "UINT8": "uint8", "INT32": "int32",
           "INT64": "int64", "BOOL": "bool"}


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, else ``tensorrt_lean``; :class:`MissingDependencyError` naming 'tensorrt'."""
    try:
        import tensorrt
    except ImportError as exc:
        first = exc
    else:
        return tensorrt
    try:
        import tensorrt_lean
    except ImportError:
        err = missing_dependency("tensorrt", "running TensorRT engines")
        if not (isinstance(first, ModuleNotFoundError) and first.name == "tensorrt"):
            # installed but broken, e.g. the pip stub without NVIDIA's libraries
            err.args = (f"{err.args[0]} (import tensorrt failed: {first})",)
        raise err from None
    return tensorrt_lean


def trt_major(trt: Any) -> int:
    """The major version of a TensorRT module (10, 11, ...)."""
    return int(str(trt.__version__).split(".")[0])


def numpy_dtype(trt: Any, dtype: Any, where: str) -> str:
    """The numpy dtype name of a TensorRT DataType; :class:`ModelError` for types numpy lacks (bf16, fp8, ...)."""
    nptype = getattr(trt, "nptype", None)
    if nptype is not None:
        try:
            return np.dtype(nptype(dtype)).name
        except TypeError:
            pass
    name = str(getattr(dtype, "name", dtype)).split(".")[-1]
    if name in _DTYPES:
        return _DTYPES[name]
    raise ModelError(f"{where}: TensorRT data type {name} has no numpy equivalent; "
                     f"keep the engine's inputs and outputs float32/float16/int")


class TensorRTBackend:
    """One deserialized TensorRT engine with its execution context, device/pinned buffers and CUDA stream."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: int = 0, dla_core: Optional[int] = None,
                 version_compatible: bool = False) -> None:
        self.path = Path(engine_path)
        self.device = device
        self.dla_core, self.version_compatible = dla_core, version_compatible
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.trt_version = ""
        self._closed = True  # nothing to free until _load has started
        self._cudart: Any = None
        self._logger: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._dev: dict[str, int] = {}
        self._pinned: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        if not self.path.is_file():
            raise ModelError(f"{self.path}: TensorRT engine file not found")
        require_gpu(f"running the TensorRT engine {self.path}", device)  # before TensorRT is even imported
        self._cudart = import_cudart()
        trt = import_tensorrt()
        self.trt_version = str(trt.__version__)
        self._closed = False
        try:
            self._load(trt)
        except BaseException:
            self.close()
            raise

    def _load(self, trt: Any) -> None:
        cudart = self._cudart
        check_cuda(cudart.cudaSetDevice(self.device), "cudaSetDevice")
        try:
            plan = self.path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{self.path}: cannot read the engine ({exc.strerror})") from None
        self._logger = trt.Logger(trt.Logger.WARNING)  # must outlive the runtime
        self._runtime = trt.Runtime(self._logger)
        if self.version_compatible:  # the plan carries its own lean runtime code
            self._runtime.engine_host_code_allowed = True
        if self.dla_core is not None:
            self._runtime.DLA_core = self.dla_core
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            lean = ""
            if str(trt.__name__).startswith("tensorrt_lean"):
                lean = " The lean runtime (tensorrt_lean) only runs version-compatible plans."
            raise ModelError(f"{self.path}: TensorRT {self.trt_version} cannot load this engine. Engines are tied "
                             f"to the TensorRT version and the GPU they were built with (or the file is not an "
                             f"engine): rebuild it on this device with 'edgepure build'.{lean}")
        self._list_tensors(trt)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise CudaError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        self._stream = check_cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        for spec in [*self.inputs, *self.outputs]:
            self._allocate(spec)

    def _list_tensors(self, trt: Any) -> None:
        engine = self._engine
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            where = f"{self.path}: tensor {name!r}"
            if any(d < 0 for d in shape):
                raise ModelError(f"{where} has a dynamic shape {list(shape)}; edgepure runs static engines only: "
                                 f"export and build with fixed shapes")
            spec = TensorSpec(name, shape, numpy_dtype(trt, engine.get_tensor_dtype(name), where))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(spec)

    def _allocate(self, spec: TensorSpec) -> None:
        """Device buffer + pinned host buffer (as a numpy view) for one tensor, bound to the context."""
        cudart = self._cudart
        dtype = np.dtype(spec.dtype)
        nbytes = max(int(np.prod(spec.shape, dtype=np.int64)) * dtype.itemsize, 1)
        self._dev[spec.name] = int(check_cuda(cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes}) for {spec.name!r}"))
        host = int(check_cuda(cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes}) for {spec.name!r}"))
        self._pinned[spec.name] = host
        raw = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(host))
        count = int(np.prod(spec.shape, dtype=np.int64))
        self._host[spec.name] = raw[: count * dtype.itemsize].view(dtype).reshape(spec.shape)
        if self._context.set_tensor_address(spec.name, self._dev[spec.name]) is False:
            raise ModelError(f"{self.path}: TensorRT refused the device address of tensor {spec.name!r}")

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the engine on ``feed`` ({input name: array}); the outputs, copied, in ``outputs`` order."""
        if self._closed:
            raise RuntimeError(f"{self.path}: the TensorRT backend is closed")
        check_feed(self.inputs, feed, str(self.path))
        cudart = self._cudart
        check_cuda(cudart.cudaSetDevice(self.device), "cudaSetDevice")
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self.inputs:
            host = self._host[spec.name]
            np.copyto(host, feed[spec.name])
            check_cuda(cudart.cudaMemcpyAsync(self._dev[spec.name], self._pinned[spec.name], host.nbytes, h2d,
                                              self._stream), f"cudaMemcpyAsync (host to device) for {spec.name!r}")
        if not self._context.execute_async_v3(int(self._stream)):
            raise CudaError(f"{self.path}: TensorRT execute_async_v3 failed (see the TensorRT log above)")
        for spec in self.outputs:
            check_cuda(cudart.cudaMemcpyAsync(self._pinned[spec.name], self._dev[spec.name],
                                              self._host[spec.name].nbytes, d2h, self._stream),
                       f"cudaMemcpyAsync (device to host) for {spec.name!r}")
        check_cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return [self._host[spec.name].copy() for spec in self.outputs]

    def close(self) -> None:
        """Free the buffers, the stream, the context and the engine. Idempotent; errors on teardown are ignored."""
        if self._closed:
            return
        self._closed = True
        cudart = self._cudart
        if self._stream is not None:
            cudart.cudaStreamSynchronize(self._stream)
        self._host.clear()  # the numpy views must not outlive the pinned memory
        self._context = None  # TensorRT objects go in reverse order of creation
        for ptr in self._dev.values():
            cudart.cudaFree(ptr)
        for ptr in self._pinned.values():
            cudart.cudaFreeHost(ptr)
        self._dev.clear()
        self._pinned.clear()
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._engine = None
        self._runtime = None
        self._logger = None

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"device {self.device}"
        return f"TensorRTBackend({str(self.path)!r}, TensorRT {self.trt_version or '?'}, {state})"
