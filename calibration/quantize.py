"""INT8 Q/DQ graphs that TensorRT accepts, from a model directory and calibration images.

Symmetric INT8 (every zero point 0), per-tensor activation scales, per-channel weight scales on the
output-channel axis (axis 0, ConvTranspose included), in the explicit Q/DQ format that both TensorRT
10.x (JetPack 6) and 11.x build from; ONNX Runtime runs the same graphs on the CPU.

Scopes: ``forward`` (default) quantizes the classifier, calibrated on *purified* images, and the
purifier's forward convolutions, keeping gradient paths (ConvTranspose, MatMul) and noise inputs in full
precision; ``classifier`` leaves the whole purifier in FP32; ``all`` quantizes every compute op of the
purifier (Conv, ConvTranspose, Gemm: gradient paths included), to measure what that costs.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from edgepure.runtime.errors import ConfigError, MissingDependencyError, ModelError

__all__ = ["METHODS", "SCOPES", "check_qdq", "quantize_model"]

METHODS = ("entropy", "minmax", "percentile")
SCOPES = ("classifier", "forward", "all")
# op types quantized in the *purifier* per scope (the classifier is always quantized whole)
SCOPE_OPS: dict[str, list[str]] = {"classifier": [], "forward": ["Conv"],
                                   # MatMul stays out: ORT's CPU QLinearMatMul cannot run per-channel weights
                                   "all": ["Conv", "ConvTranspose", "Gemm"]}


def _imports() -> tuple[Any, Any]:
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError as exc:
        missing = exc.name or "onnxruntime"
        hint = ("pip install onnx, or pip install 'edgepure[torch]' for the whole export side" if missing == "onnx"
                else "pip install 'edgepure[ort]' (or onnxruntime-gpu)")
        raise MissingDependencyError(missing, "INT8 calibration", hint=hint) from None
    return onnx, quantization


def quantize_model(src: Path, dst: Path, reader: Any, method: str = "entropy",
                   op_types: Optional[Sequence[str]] = None, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Calibrate ``src`` on ``reader`` and write the Q/DQ model to ``dst``; return what was quantized.

    ``exclude`` holds node names or op types kept in full precision."""
    onnx, q = _imports()
    if method not in METHODS:
        raise ConfigError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    model = onnx.load(str(src))
    present = {n.op_type for n in model.graph.node}
    names = {n.name for n in model.graph.node}
    unknown = [e for e in exclude if e not in present and e not in names]
    excluded_nodes = [n.name for n in model.graph.node if n.name in exclude or n.op_type in exclude]
    types = [t for t in (op_types if op_types is not None else sorted(present)) if t not in exclude]
    if not set(types) & present:  # nothing of these types here (e.g. a median filter has no convolution)
        shutil.copyfile(src, dst)
        return {"op_types": types, "excluded_nodes": len(excluded_nodes), "unmatched_exclude": unknown,
                "quantize_nodes": 0, "nodes": len(model.graph.node), "note": "no op of these types: kept FP32"}
    # TensorRT wants per-channel weight scales on axis 0 for ConvTranspose too (ONNX Runtime's default is 1)
    inits = {t.name for t in model.graph.initializer}
    overrides = {n.input[1]: [{"axis": 0}] for n in model.graph.node
                 if n.op_type == "ConvTranspose" and len(n.input) > 1 and n.input[1] in inits}
    calib = {"entropy": q.CalibrationMethod.Entropy, "minmax": q.CalibrationMethod.MinMax,
             "percentile": q.CalibrationMethod.Percentile}[method]
    with contextlib.redirect_stdout(sys.stderr), _quantizer_errors(src):
        q.quantize_static(
            str(src), str(dst), reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
            activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8, calibrate_method=calib,
            op_types_to_quantize=types, nodes_to_exclude=excluded_nodes,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "QDQOpTypePerChannelSupportToAxis": {"ConvTranspose": 0},
                           "TensorQuantOverrides": overrides, "CalibPercentile": 99.99},
        )
    out = onnx.load(str(dst))
    quantized = sum(1 for n in out.graph.node if n.op_type == "QuantizeLinear")
    return {"op_types": types, "excluded_nodes": len(excluded_nodes), "unmatched_exclude": unknown,
            "quantize_nodes": quantized, "nodes": len(out.graph.node)}


@contextlib.contextmanager
def _quantizer_errors(src: Path) -> Iterator[None]:
    """ONNX Runtime's quantizer refuses some graphs with plain ValueErrors: say which graph, and what to do."""
    try:
        yield
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{src}: ONNX Runtime's quantizer cannot quantize this graph ({exc}); choose a smaller "
                         "--scope or --exclude the op types involved") from None


def check_qdq(model: Any) -> list[str]:
    """What TensorRT would refuse in a Q/DQ graph: non-zero zero points, per-channel scales off axis 0."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    problems = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) > 2 and n.input[2]:
            zp = inits.get(n.input[2])
            if zp is None or np.any(numpy_helper.to_array(zp) != 0):
                problems.append(f"{n.name}: zero point {n.input[2]!r} is not a constant 0")
        scale = inits.get(n.input[1])
        if n.op_type == "DequantizeLinear" and scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            for c in consumers.get(n.output[0], []):
                if c.op_type in ("Conv", "ConvTranspose", "Gemm") and len(c.input) > 1 and c.input[1] == n.output[0]:
                    want = 0
                    if c.op_type == "Gemm" and any(a.name == "transB" and a.i == 0 for a in c.attribute):
                        want = 1
                    if axis != want:
                        problems.append(f"{n.name}: per-channel weight scales of {c.op_type} {c.name} on axis {axis},"
                                        f" TensorRT wants {want}")
    return problems
