"""Fake ``tensorrt`` (10.x and 11.x API surfaces) and ``cuda.bindings.runtime`` modules for the CPU tests.

They record which calls are made in which order; they are no evidence that TensorRT accepts those calls.
"""

from __future__ import annotations

import enum
import sys
import types
from pathlib import Path
from typing import Any, Optional

import pytest

# --------------------------------------------------------------------------------------------------

class Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorNoDevice = 100


class FakeCudart:
    """cuda-python's runtime module, as far as the GPU probe and the device properties go."""

    def __init__(self, log: list[str], name: bytes = b"Orin", cc: tuple[int, int] = (8, 7),
                 err: Err = Err.cudaSuccess) -> None:
        self.log, self.name, self.cc, self.err = log, name, cc, err

    def cudaGetDeviceCount(self) -> tuple:
        self.log.append("cudaGetDeviceCount")
        return self.err, (1 if self.err == 0 else 0)

    def cudaGetDeviceProperties(self, device: int) -> tuple:
        self.log.append(f"cudaGetDeviceProperties:{device}")
        name = self.name + b"\0" * (32 - len(self.name))  # a fixed-size char array, as cuda-python returns it
        return Err.cudaSuccess, types.SimpleNamespace(name=name, major=self.cc[0], minor=self.cc[1])


def install_cudart(monkeypatch: pytest.MonkeyPatch, fake: Any) -> None:
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = fake  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake)


def fake_tensorrt(log: list[str], version: str = "10.3.0", weak_flags: bool = True, strongly_typed: bool = True,
                  plan: Optional[bytes] = b"PLAN", parse_errors: tuple[str, ...] = (), dla_cores: int = 2,
                  builder: bool = True) -> types.ModuleType:
    """A builder-side ``tensorrt``: 10.x has ``BuilderFlag.FP16/INT8`` (``weak_flags``), 11.x does not.

    Like TensorRT 10, the fake builder returns None when a precision flag meets a strongly typed network.
    ``set_timing_cache`` refuses a cache whose bytes start with ``other``; each build appends ``t`` to the cache.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    flags = ["GPU_FALLBACK", "VERSION_COMPATIBLE", "REFIT"] + (["FP16", "INT8"] if weak_flags else [])
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)  # type: ignore[attr-defined]
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(  # type: ignore[attr-defined]
        "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1} if strongly_typed else {"PREFER_JIT_PYTHON_PLUGINS": 3})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})  # type: ignore[attr-defined]
    trt.DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return self.data

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags

    class Config:
        def __init__(self) -> None:
            object.__setattr__(self, "cache", None)
            object.__setattr__(self, "flags", [])

        def __setattr__(self, name: str, value: Any) -> None:
            log.append(f"config.{name}={getattr(value, 'name', value)}")
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            log.append(f"set_memory_pool_limit:{pool.name}:{size}")

        def create_timing_cache(self, data: bytes) -> TimingCache:
            log.append(f"create_timing_cache:{bytes(data)!r}")
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            log.append(f"set_timing_cache:{cache.data!r}:ignore_mismatch={ignore_mismatch}")
            if cache.data.startswith(b"other"):
                return False
            object.__setattr__(self, "cache", cache)
            return True

        def get_timing_cache(self) -> Optional[TimingCache]:
            return self.cache

        def set_flag(self, flag: Any) -> None:
            log.append(f"set_flag:{flag.name}")
            self.flags.append(flag.name)

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger: Logger) -> None:
            assert isinstance(logger, Logger)
            log.append("Builder")

        def create_network(self, flags: int) -> Network:
            log.append(f"create_network:{flags}")
            return Network(flags)

        def create_builder_config(self) -> Config:
            log.append("create_builder_config")
            return Config()

        def build_serialized_network(self, network: Network, config: Config) -> Optional[bytes]:
            log.append("build_serialized_network")
            if network.flags and {"FP16", "INT8"} & set(config.flags):
                return None  # TensorRT 10 refuses precision flags on a strongly typed network
            if config.cache is not None:
                config.cache.data += b"t"
            return None if plan is None else plan + f"|{version}|{network.flags}|{sorted(config.flags)}".encode()

    class OnnxParser:
        num_errors = len(parse_errors)

        def __init__(self, network: Network, logger: Logger) -> None:
            log.append("OnnxParser")

        def parse_from_file(self, path: str) -> bool:
            log.append(f"parse_from_file:{Path(path).name}")
            return not parse_errors

        def get_error(self, i: int) -> str:
            return parse_errors[i]

    trt.Logger, trt.OnnxParser = Logger, OnnxParser  # type: ignore[attr-defined]
    trt.init_libnvinfer_plugins = lambda logger, namespace: log.append("init_libnvinfer_plugins")  # type: ignore[attr-defined]
    if builder:
        trt.Builder = Builder  # type: ignore[attr-defined]
    return trt


TRT11 = {"version": "11.4.0", "weak_flags": False}


class TripwireTensorRT(types.ModuleType):
    """A ``tensorrt`` module that fails the test as soon as anything in it is used."""

    def __init__(self) -> None:
        super().__init__("tensorrt")

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"tensorrt.{name} used although there is no GPU")
