"""Bring your own classifier as ONNX: check it, and merge an edgepure purifier graph in front of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepure.calibration.merge import merge_graphs
from edgepure.export.graph import OPSET
from edgepure.runtime.errors import ModelError

__all__ = ["load_onnx_classifier", "merge_graphs"]


def load_onnx_classifier(path: str | Path, batch: int, size: tuple[int, int]) -> Any:
    """Load a classifier ONNX file with one float input ``[batch, 3, H, W]`` and one logits output; convert
    it to opset 18 when it is older."""
    import onnx
    from onnx import version_converter

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such ONNX classifier file")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others for a bad file
        raise ModelError(f"{p}: not a readable ONNX model ({type(exc).__name__})") from None
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ModelError(f"{p}: expected one image input and one logits output, found {len(inputs)} inputs "
                         f"and {len(model.graph.output)} outputs")
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    expected = [batch, 3, size[0], size[1]]
    if dims != expected:
        raise ModelError(f"{p}: input {inputs[0].name!r} has shape {dims}, expected the static shape {expected} "
                         "(re-export it with a fixed batch, or pass a matching --batch)")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"{p}: the input must be float32 RGB in [0, 1]")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError(f"{p}: no ai.onnx opset import")
    if opset != OPSET:
        try:
            model = version_converter.convert_version(model, OPSET)
        except Exception as exc:  # noqa: BLE001 - the converter raises plain RuntimeErrors
            raise ModelError(f"{p}: opset {opset} cannot be converted to {OPSET} ({exc})") from None
    return model
