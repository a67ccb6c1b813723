"""The legacy TensorRT (≤ 10) implicit-INT8 calibration cache, from ONNX Runtime's calibration ranges.

TensorRT 10.x can still build INT8 engines from an FP32 graph plus a calibration cache (deprecated since
10.1, removed in 11): a text file whose first line names the calibrator, then one ``tensor: scale`` line
per tensor, the scale being ``amax / 127`` as the big-endian hex of its float32 bits. Tensor names are
the ONNX value names, which the ONNX parser keeps. The header's version field follows TensorRT's
``NV_TENSORRT_VERSION`` (``major·10000 + minor·100 + patch`` from 10.0 on; unverified on a device).
"""

from __future__ import annotations

import contextlib
import struct
import sys
from pathlib import Path
from typing import Any, Mapping

__all__ = ["cache_header", "ort_ranges", "write_calibration_cache"]


def cache_header(trt_version: str = "10.3.0", algorithm: str = "EntropyCalibration2") -> str:
    parts = [int(p) for p in (trt_version.split(".") + ["0", "0"])[:3]]
    major, minor, patch = parts
    number = major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch
    return f"TRT-{number}-{algorithm}"


def write_calibration_cache(ranges: Mapping[str, tuple[float, float]], path: Path,
                            trt_version: str = "10.3.0", algorithm: str = "EntropyCalibration2") -> int:
    """Write ``{tensor: (low, high)}`` as a TensorRT calibration cache; return the number of tensors."""
    lines = [cache_header(trt_version, algorithm)]
    for name in sorted(ranges):
        lo, hi = ranges[name]
        amax = max(abs(float(lo)), abs(float(hi)), 1e-8)
        bits = struct.unpack(">I", struct.pack(">f", amax / 127.0))[0]
        lines.append(f"{name}: {bits:08x}")
    Path(path).write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def ort_ranges(model_path: Path, reader: Any, method: Any, workdir: Path) -> dict[str, tuple[float, float]]:
    """Activation ranges of every tensor of ``model_path`` over ``reader`` (ONNX Runtime's calibrator)."""
    from onnxruntime.quantization import create_calibrator

    calibrator = create_calibrator(str(model_path), None, augmented_model_path=str(workdir / "augmented.onnx"),
                                   calibrate_method=method, extra_options={"symmetric": True})
    with contextlib.redirect_stdout(sys.stderr):  # the calibrator prints progress; stdout is for results
        calibrator.collect_data(reader)
        data = calibrator.compute_data()
    out = {}
    for name, tensor in data.data.items():
        lo, hi = tensor.range_value
        out[name] = (float(lo), float(hi))
    return out
