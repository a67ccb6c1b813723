"""A TensorRT-compatibility lint for ONNX graphs (pure onnx; no TensorRT needed).

Flags what the TensorRT ONNX parser of 10.x (JetPack 6 ships 10.3) and 11.x refuses or silently runs
differently: ops outside its operator table, GridSample spelled with the opset-20 mode names (parsed as
nearest), MaxPool with an Indices output, ScatterND with a reduction, non-zero Q/DQ zero points,
ConvTranspose quantised per channel on an axis other than 0, Resize with cubic or antialiasing, an opset
above the target's maximum, and external data files. The op table follows onnx-tensorrt's
``docs/operators.md`` for TensorRT 10.15 (opset 9–24); TensorRT 10.0–10.3 parse opset 9–20.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["LintIssue", "TRT_MAX_OPSET", "TRT_SUPPORTED_OPS", "lint_model"]

# Operators the TensorRT 10.x/11.x ONNX parser supports (the "Y" rows of its operator table).
TRT_SUPPORTED_OPS = frozenset(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
    GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
    InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
    LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
    NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
    ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
    RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
    Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor""".split()
)

# Highest ONNX opset each TensorRT line parses.
TRT_MAX_OPSET = {"10.3": 20, "10.15": 24, "11": 24}

_OPSET_20_GRIDSAMPLE = {"linear", "cubic"}


@dataclass(frozen=True)
class LintIssue:
    code: str
    node: str
    message: str
    severity: str = "error"  # "error": TensorRT refuses or silently changes it; "warning": works, with a cost

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _attr(node, name: str):  # type: ignore[no-untyped-def]
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def _initializers(model) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_location != 1}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            value = _attr(n, "value")
            if value is not None:
                out[n.output[0]] = numpy_helper.to_array(value)
    return out


def lint_model(model, target: str = "10.3") -> list[LintIssue]:  # type: ignore[no-untyped-def]
    """Return the TensorRT hazards found in ``model`` (an ``onnx.ModelProto``) for the ``target`` line."""
    issues: list[LintIssue] = []
    max_opset = TRT_MAX_OPSET.get(target, 20)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if imp.version > max_opset:
                issues.append(LintIssue("opset", "", f"opset {imp.version} is above TensorRT {target}'s maximum {max_opset}"))
        else:
            issues.append(LintIssue("domain", "", f"operator domain {imp.domain!r} is not parsed by TensorRT (only ai.onnx)"))
    for init in model.graph.initializer:
        if init.data_location == 1:  # EXTERNAL
            issues.append(LintIssue("external-data", init.name, "weights in an external data file; ship a single .onnx"))
    consts = _initializers(model)
    for node in model.graph.node:
        name = node.name or node.output[0]
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            issues.append(LintIssue("domain", name, f"{node.domain}::{op} is outside the ai.onnx domain"))
            continue
        if op not in TRT_SUPPORTED_OPS:
            issues.append(LintIssue("unsupported-op", name, f"{op} is not in TensorRT's ONNX operator table"))
        if op == "GridSample":
            mode = _attr(node, "mode")
            mode = mode.decode() if isinstance(mode, bytes) else (mode or "bilinear")
            if mode in _OPSET_20_GRIDSAMPLE:
                issues.append(LintIssue("gridsample-mode", name,
                                        f"GridSample mode {mode!r} (opset-20 name): TensorRT's parser runs it as nearest; export at opset 18"))
        elif op == "MaxPool" and len([o for o in node.output if o]) > 1:
            issues.append(LintIssue("maxpool-indices", name, "MaxPool with an Indices output is unsupported"))
        elif op == "ScatterND":
            reduction = _attr(node, "reduction")
            reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
            if reduction not in (None, "none"):
                issues.append(LintIssue("scatternd-reduction", name, f"ScatterND reduction {reduction!r} is unsupported"))
        elif op == "ScatterElements":
            reduction = _attr(node, "reduction")
            reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
            if reduction not in (None, "none"):
                issues.append(LintIssue("scatter-plugin", name, f"ScatterElements reduction {reduction!r} needs TensorRT's plugin library", "warning"))
        elif op in ("QuantizeLinear", "DequantizeLinear"):
            if len(node.input) > 2 and node.input[2]:
                zp = consts.get(node.input[2])
                if zp is None or np.any(zp != 0):
                    issues.append(LintIssue("qdq-zero-point", name, f"{op} zero point must be a constant 0"))
        elif op == "Resize":
            mode = _attr(node, "mode")
            mode = mode.decode() if isinstance(mode, bytes) else (mode or "nearest")
            if mode == "cubic" or (_attr(node, "antialias") or 0):
                issues.append(LintIssue("resize-mode", name, f"Resize mode {mode!r}/antialias is unsupported (nearest/linear only)"))
        elif op in ("Loop", "Scan", "If"):
            issues.append(LintIssue("control-flow", name, f"{op}: edgepure graphs are unrolled; control flow is unexpected", "warning"))
        elif op == "Dropout" and len(node.input) > 2 and node.input[2]:
            train = consts.get(node.input[2])
            if train is None or bool(np.any(train)):
                issues.append(LintIssue("dropout-training", name, "Dropout in training mode is unsupported"))
    _lint_convtranspose_quant(model, issues)
    return issues


def _lint_convtranspose_quant(model, issues: list[LintIssue]) -> None:  # type: ignore[no-untyped-def]
    """TensorRT quantises ConvTranspose weights per channel only on axis 0."""
    consts = _initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type != "ConvTranspose" or len(node.input) < 2:
            continue
        dq = producers.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            axis = _attr(dq, "axis")
            scale = consts.get(dq.input[1])
            per_channel = scale is not None and scale.size > 1
            if per_channel and axis not in (None, 0):
                issues.append(LintIssue("convtranspose-axis", node.name or node.output[0],
                                        f"ConvTranspose weight quantised on axis {axis}; TensorRT supports axis 0 only"))
