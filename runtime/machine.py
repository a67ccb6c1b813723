"""What machine a number was measured on: CPU, cores, memory, library versions, and its measured peak.

numpy only (the runtime's dependency); every field is read, never guessed: what cannot be read is left out.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from typing import Any, Callable

__all__ = ["describe_machine", "int8_saturates", "matmul_peak_gflops"]

_PACKAGES = ("edgepure", "numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "opencv-python-headless")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


_VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_saturates() -> bool | None:
    """Whether ONNX Runtime's x86 INT8 kernels saturate on this CPU: True on an x86 CPU with AVX2 but no VNNI.

    Without VNNI, ONNX Runtime multiplies u8 activations by s8 weights with ``vpmaddubsw``, which adds pairs
    of products into 16 bits and saturates, so a Q/DQ model's accuracy on such a CPU is not its calibration's
    (TensorRT, ARM and VNNI CPUs accumulate in 32 bits). False where the flags show VNNI or no AVX2 (an ARM
    CPU: a Jetson), None where the flags cannot be read.
    """
    flags = _cpu_flags()
    if flags is None:
        return None
    return "avx2" in flags and not any(f in flags for f in _VNNI)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def describe_machine() -> dict[str, Any]:
    """CPU model, logical CPUs this process may use, memory, OS, Python and the installed packages."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    info: dict[str, Any] = {"cpu": _cpu_model(), "logical_cpus": _usable_cpus(), "memory_gib": _memory_gib(),
                            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
                            "packages": versions}
    return {k: v for k, v in info.items() if v is not None}


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_gflops(sizes: tuple[int, ...] = (256, 512, 1024, 2048), repeats: int = 5) -> float:
    """The best float32 matrix-product rate numpy reaches here (GFLOP/s, 2 per multiply-add), with the
    thread count the BLAS was started with (set ``OMP_NUM_THREADS`` before importing numpy)."""
    import numpy as np

    best = 0.0
    for n in sizes:
        a = np.random.default_rng(0).random((n, n), dtype=np.float32)
        a @ a  # warm-up
        best = max(best, 2 * n**3 / _best_seconds(lambda: a @ a, repeats) / 1e9)
    return round(best, 1)
