"""The TensorRT backend and the CUDA probe.

Most tests run on the CPU with fake ``tensorrt`` and fake ``cuda.bindings.runtime`` modules injected into
``sys.modules``. Those fakes prove which calls are made and in which order, and that data flows through the
host/device buffers to the right outputs; they are no evidence that a real engine loads or runs. Only the
``gpu``-marked test, which needs an NVIDIA GPU, cuda-python and TensorRT, checks real TensorRT.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.util
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import blocked_imports

from edgepure.runtime.backends.base import Backend
from edgepure.runtime.backends.cuda import (
    CudaError,
    NoGPUError,
    check_cuda,
    cuda_device_count,
    has_gpu,
    import_cudart,
    require_gpu,
)
from edgepure.runtime.backends.tensorrt import TensorRTBackend, import_tensorrt, numpy_dtype, trt_major
from edgepure.runtime.errors import ConfigError, EdgepureError, MissingDependencyError, ModelError

HAS_GPU = has_gpu()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


class Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


class FakeCudart:
    """cuda-python's runtime module: host memory stands in for device memory, calls go to ``log``."""

    def __init__(self, log: list[str], count: int = 1, err: Err = Err.cudaSuccess) -> None:
        self.log, self.count, self.err = log, count, err
        self.live: dict[int, Any] = {}  # allocated "device" and pinned buffers by address
        self.streams: list[int] = []
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h")

    def _ok(self, entry: str, *values: int) -> tuple:
        self.log.append(entry)
        return (Err.cudaSuccess, *values)

    def _alloc(self, n: int, what: str) -> tuple:
        buf = ctypes.create_string_buffer(n)
        self.live[ctypes.addressof(buf)] = buf
        return self._ok(what, ctypes.addressof(buf))

    def cudaGetDeviceCount(self) -> tuple:
        self.log.append("cudaGetDeviceCount")
        return self.err, (self.count if self.err == 0 else 0)

    def cudaSetDevice(self, device: int) -> tuple:
        return (Err.cudaSuccess,)

    def cudaMalloc(self, n: int) -> tuple:
        return self._alloc(n, "cudaMalloc")

    def cudaMallocHost(self, n: int) -> tuple:
        return self._alloc(n, "cudaMallocHost")

    def cudaFree(self, ptr: int) -> tuple:
        self.live.pop(ptr)
        return self._ok("cudaFree")

    cudaFreeHost = cudaFree

    def cudaStreamCreate(self) -> tuple:
        self.streams.append(1000 + len(self.streams))
        return self._ok("cudaStreamCreate", self.streams[-1])

    def cudaStreamDestroy(self, stream: int) -> tuple:
        self.streams.remove(stream)
        return self._ok("cudaStreamDestroy")

    def cudaStreamSynchronize(self, stream: int) -> tuple:
        assert stream in self.streams
        return self._ok("cudaStreamSynchronize")

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: str, stream: int) -> tuple:
        assert stream in self.streams
        ctypes.memmove(dst, src, n)
        return self._ok(f"memcpy_{kind}")


def install_cudart(monkeypatch: pytest.MonkeyPatch, fake: Any) -> None:
    """Make ``from cuda.bindings import runtime`` return ``fake`` (None: cuda-python is not installed)."""
    if fake is None:
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
            monkeypatch.setitem(sys.modules, name, None)
        return
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = fake  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake)


DT_FLOAT = types.SimpleNamespace(name="FLOAT")
DT_INT32 = types.SimpleNamespace(name="INT32")
INPUT, OUTPUT = "INPUT", "OUTPUT"
# engine order interleaves inputs and outputs: outputs must come back in engine order (y, count)
TENSORS = [("y", OUTPUT, (1, 4), DT_FLOAT), ("x", INPUT, (1, 4), DT_FLOAT), ("count", OUTPUT, (1,), DT_INT32)]


def _view(addr: int, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.ctypeslib.as_array((ctypes.c_ubyte * n).from_address(addr)).view(dtype).reshape(shape)


class FakeContext:
    def __init__(self, log: list[str]) -> None:
        self.log, self.addr = log, {}

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.log.append(f"set_tensor_address:{name}")
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        """The "kernel": y = 2x + 1, count = number of positive x, read from and written to "device" memory."""
        self.log.append(f"execute_async_v3:{stream}")
        x = _view(self.addr["x"], (1, 4), np.float32)
        _view(self.addr["y"], (1, 4), np.float32)[...] = 2 * x + 1
        _view(self.addr["count"], (1,), np.int32)[...] = (x > 0).sum()
        return True


class FakeEngine:
    def __init__(self, log: list[str], tensors: list[tuple[str, str, tuple[int, ...], Any]]) -> None:
        self.log, by_name = log, {t[0]: t for t in tensors}
        self.num_io_tensors = len(tensors)
        self.get_tensor_name = lambda i: tensors[i][0]
        self.get_tensor_mode = lambda name: by_name[name][1]
        self.get_tensor_shape = lambda name: by_name[name][2]
        self.get_tensor_dtype = lambda name: by_name[name][3]

    def create_execution_context(self) -> FakeContext:
        self.log.append("create_execution_context")
        return FakeContext(self.log)


def fake_tensorrt(log: list[str], tensors: list | None = TENSORS, version: str = "10.3.0",
                  name: str = "tensorrt") -> types.ModuleType:
    """A ``tensorrt`` module whose Runtime deserializes any bytes into a FakeEngine (None: a bad plan)."""
    trt = types.ModuleType(name)
    trt.__version__ = version  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            log.append("Runtime")

        def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
            log.append("deserialize_cuda_engine")
            return None if tensors is None else FakeEngine(log, tensors)

    trt.Logger, trt.Runtime = Logger, Runtime  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT=INPUT, OUTPUT=OUTPUT)  # type: ignore[attr-defined]
    trt.nptype = lambda dt: {"FLOAT": np.float32, "INT32": np.int32}[dt.name]  # type: ignore[attr-defined]
    return trt


class TripwireTensorRT(types.ModuleType):
    """A ``tensorrt`` module that fails the test as soon as anything in it is used."""

    def __init__(self) -> None:
        super().__init__("tensorrt")

    def Runtime(self, *args: Any) -> None:  # noqa: N802 - mirrors the TensorRT name
        raise AssertionError("trt.Runtime constructed although there is no GPU")

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"tensorrt.{name} used although there is no GPU")


@pytest.fixture
def engine_file(tmp_path: Path) -> Path:
    p = tmp_path / "model.plan"
    p.write_bytes(b"not a real engine")
    return p


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], FakeCudart]:
    """A fake GPU (1 device) and a fake TensorRT 10.3 with the TENSORS engine; returns (call log, cudart)."""
    log: list[str] = []
    cudart = FakeCudart(log)
    install_cudart(monkeypatch, cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(log))
    return log, cudart


@pytest.mark.parametrize("err", [Err.cudaErrorInsufficientDriver, Err.cudaErrorNoDevice])
def test_probe_returns_zero_devices_on_cudart_error(monkeypatch: pytest.MonkeyPatch, err: Err) -> None:
    install_cudart(monkeypatch, FakeCudart([], count=2, err=err))
    assert cuda_device_count() == 0
    assert has_gpu() is False
    with pytest.raises(NoGPUError, match=f"{err.name} \\({int(err)}\\)") as info:
        require_gpu("running X")
    assert "Jetson" in str(info.value) and "driver" in str(info.value)


def test_probe_counts_devices_and_checks_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cudart(monkeypatch, FakeCudart([], count=2))
    assert cuda_device_count() == 2 and has_gpu()
    require_gpu("running X", device=1)
    with pytest.raises(NoGPUError, match="device 2 does not exist"):
        require_gpu("running X", device=2)


def test_probe_survives_a_cudart_that_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    cudart = FakeCudart([])
    cudart.cudaGetDeviceCount = lambda: (_ for _ in ()).throw(RuntimeError("libcuda.so: cannot open"))  # type: ignore[method-assign]
    install_cudart(monkeypatch, cudart)
    assert cuda_device_count() == 0


def test_missing_cuda_python_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cudart(monkeypatch, None)
    with pytest.raises(MissingDependencyError, match="cuda-python") as info:
        cuda_device_count()
    assert info.value.package == "cuda-python"
    assert has_gpu() is False


def test_old_cuda_python_layout_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    old = FakeCudart([])
    cuda = types.ModuleType("cuda")
    cuda.cudart = old  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    assert import_cudart() is old


def test_check_cuda_unpacks_and_raises_with_the_call_name() -> None:
    assert check_cuda((Err.cudaSuccess, 5), "a") == 5
    assert check_cuda((Err.cudaSuccess,), "b") is None
    assert check_cuda(Err.cudaSuccess, "c") is None
    assert check_cuda((0, 1, 2), "d") == (1, 2)
    with pytest.raises(CudaError, match=r"cudaMalloc\(64\) failed: cudaErrorMemoryAllocation \(2\)"):
        check_cuda((Err.cudaErrorMemoryAllocation, 0), "cudaMalloc(64)")


def test_no_gpu_raises_before_tensorrt_is_touched(monkeypatch: pytest.MonkeyPatch, engine_file: Path) -> None:
    install_cudart(monkeypatch, FakeCudart([], err=Err.cudaErrorInsufficientDriver))
    monkeypatch.setitem(sys.modules, "tensorrt", TripwireTensorRT())
    with pytest.raises(NoGPUError, match="NVIDIA GPU") as info:
        TensorRTBackend(engine_file)
    assert str(engine_file) in str(info.value)


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU path of this machine")
def test_this_machine_without_gpu_gets_a_clear_error(engine_file: Path) -> None:
    with pytest.raises(EdgepureError, match="cuda-python|NVIDIA GPU"):
        TensorRTBackend(engine_file)


def test_missing_engine_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.plan"
    with pytest.raises(ModelError, match="nope.plan"):
        TensorRTBackend(missing)


def test_missing_tensorrt_is_named(monkeypatch: pytest.MonkeyPatch, engine_file: Path) -> None:
    install_cudart(monkeypatch, FakeCudart([]))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    with pytest.raises(MissingDependencyError, match="'tensorrt'") as info:
        TensorRTBackend(engine_file)
    assert info.value.package == "tensorrt"
    assert "pypi.nvidia.com" in str(info.value) and "python3-libnvinfer" in str(info.value)


def test_lean_runtime_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    lean = fake_tensorrt([], version="11.4.0", name="tensorrt_lean")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", lean)
    assert import_tensorrt() is lean
    assert trt_major(lean) == 11


def test_numpy_dtype_mapping() -> None:
    trt = types.SimpleNamespace()  # no nptype: the name table is used
    assert numpy_dtype(trt, types.SimpleNamespace(name="HALF"), "w") == "float16"
    assert numpy_dtype(trt, "DataType.INT64", "w") == "int64"
    with pytest.raises(ModelError, match="BF16"):
        numpy_dtype(trt, types.SimpleNamespace(name="BF16"), "w")


def test_call_order_and_output_order_with_fakes(fakes: tuple[list[str], FakeCudart], engine_file: Path) -> None:
    log, cudart = fakes
    be = TensorRTBackend(engine_file)
    assert isinstance(be, Backend) and be.name == "tensorrt" and be.trt_version == "10.3.0"
    assert [s.name for s in be.inputs] == ["x"]
    assert [(s.name, s.shape, s.dtype) for s in be.outputs] == [("y", (1, 4), "float32"), ("count", (1,), "int32")]
    x = np.array([[-1.0, 0.5, 2.0, 3.0]], np.float32)
    y, count = be.run({"x": x})
    np.testing.assert_array_equal(y, 2 * x + 1)
    assert count.dtype == np.int32 and count.tolist() == [3]
    stream = cudart.streams[0]
    order = ["cudaGetDeviceCount", "Runtime", "deserialize_cuda_engine", "create_execution_context",
             "set_tensor_address:x", "set_tensor_address:y", "set_tensor_address:count", "memcpy_h2d",
             f"execute_async_v3:{stream}", "memcpy_d2h", "memcpy_d2h", "cudaStreamSynchronize"]
    assert [e for e in log if e in order] == order
    y2, _ = be.run({"x": x + 1})  # buffers are reused; outputs returned earlier are copies
    np.testing.assert_array_equal(y, 2 * x + 1)
    np.testing.assert_array_equal(y2, 2 * x + 3)
    assert log.count("cudaMalloc") == 3 and log.count("set_tensor_address:x") == 1


def test_close_frees_everything_once_with_fakes(fakes: tuple[list[str], FakeCudart], engine_file: Path) -> None:
    log, cudart = fakes
    with TensorRTBackend(engine_file) as be:
        assert len(cudart.live) == 6  # 3 device + 3 pinned buffers
    assert cudart.live == {} and cudart.streams == []
    be.close()
    assert log.count("cudaFree") == 6 and log.count("cudaStreamDestroy") == 1
    with pytest.raises(RuntimeError, match="closed"):
        be.run({"x": np.zeros((1, 4), np.float32)})


def test_bad_feed_is_refused_with_fakes(fakes: tuple[list[str], FakeCudart], engine_file: Path) -> None:
    be = TensorRTBackend(engine_file)
    with pytest.raises(ConfigError, match="shape"):
        be.run({"x": np.zeros((2, 4), np.float32)})
    with pytest.raises(ConfigError, match="dtype"):
        be.run({"x": np.zeros((1, 4), np.float64)})
    with pytest.raises(ConfigError, match="expected inputs"):
        be.run({"z": np.zeros((1, 4), np.float32)})
    be.close()


def test_unloadable_engine_asks_for_a_rebuild_with_fakes(monkeypatch: pytest.MonkeyPatch, engine_file: Path) -> None:
    log: list[str] = []
    cudart = FakeCudart(log)
    install_cudart(monkeypatch, cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(log, tensors=None, version="11.4.0"))
    with pytest.raises(ModelError, match="11.4.0") as info:
        TensorRTBackend(engine_file)
    assert "edgepure build" in str(info.value) and str(engine_file) in str(info.value)
    assert cudart.live == {} and cudart.streams == []


def test_dynamic_shape_is_refused_with_fakes(monkeypatch: pytest.MonkeyPatch, engine_file: Path) -> None:
    log: list[str] = []
    cudart = FakeCudart(log)
    install_cudart(monkeypatch, cudart)
    tensors = [("x", INPUT, (-1, 4), DT_FLOAT), ("y", OUTPUT, (-1, 4), DT_FLOAT)]
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(log, tensors=tensors))
    with pytest.raises(ModelError, match="dynamic shape"):
        TensorRTBackend(engine_file)
    assert cudart.live == {}


# --- torch-free imports -------------------------------------------------------------------------------------

BLOCKED_IMPORT = blocked_imports("torch", "onnx", "tensorrt", "tensorrt_lean", "cuda") + textwrap.dedent(
    """
    import edgepure.runtime.backends.cuda as c
    import edgepure.runtime.backends.tensorrt as t
    assert c.has_gpu() is False
    loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "tensorrt", "cuda")]
    assert not loaded, loaded
    print("ok")
    """
)


def test_backend_modules_import_without_torch() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _tiny_onnx() -> bytes:
    """Conv(3->4, 3x3) + Relu as output ``y`` and 2*x as output ``z``: a 1x3x8x8 float32 model, opset 18."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"]), helper.make_node("Mul", ["x", "two"], ["z"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 8, 8])],
                              initializer=[w, two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_GPU and HAS_TRT), reason="needs an NVIDIA GPU, cuda-python and tensorrt")
def test_real_engine_matches_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    import tensorrt as trt

    model = _tiny_onnx()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 28)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "TensorRT could not build the tiny engine"
    engine = tmp_path / "tiny.plan"
    engine.write_bytes(bytes(plan))

    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["y", "z"], {"x": x})
    with TensorRTBackend(engine) as be:
        assert [s.name for s in be.outputs] == ["y", "z"]
        got = be.run({"x": x})
        again = be.run({"x": x})
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=5e-3, atol=5e-3)  # TF32 convolutions on Ampere+
    for g, a in zip(got, again):
        np.testing.assert_array_equal(g, a)
