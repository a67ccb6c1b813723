"""Multiply-accumulates per inference of an ONNX graph, from its (static) shapes.

Counts the ops that dominate: Conv, ConvTranspose, Gemm and MatMul (2 FLOPs per MAC). Elementwise ops,
reductions and resampling are left out — for a pipeline they add memory traffic more than arithmetic —
and are listed by count so that nothing is silently ignored.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from edgepure.runtime.errors import ModelError

__all__ = ["count_macs"]


def _shapes(model: Any) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes: dict[str, list[int]] = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        shapes[v.name] = dims
    for t in inferred.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def count_macs(model: Any) -> dict[str, Any]:
    """``{"macs": total, "by_op": {op: macs}, "uncounted": {op: nodes}}`` for one call of ``model``."""
    shapes = _shapes(model)
    by_op: Counter[str] = Counter()
    uncounted: Counter[str] = Counter()
    for n in model.graph.node:
        def shape(i: int, out: bool = False) -> list[int]:
            name = (n.output if out else n.input)[i]
            s = shapes.get(name)
            if s is None or any(d < 0 for d in s):
                raise ModelError(f"node {n.name} ({n.op_type}): no static shape for {name!r}")
            return s
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Conv":
            w, y = shape(1), shape(0, out=True)
            by_op["Conv"] += math.prod(y) * w[1] * math.prod(w[2:])  # w: Cout × Cin/groups × k…
        elif n.op_type == "ConvTranspose":
            x, w = shape(0), shape(1)
            by_op["ConvTranspose"] += math.prod(x) * w[1] * math.prod(w[2:])  # w: Cin × Cout/groups × k…
        elif n.op_type == "Gemm":
            a, y = shape(0), shape(0, out=True)
            k = a[0] if "transA" in attrs and attrs["transA"].i else a[1]
            by_op["Gemm"] += math.prod(y) * k
        elif n.op_type == "MatMul":
            a, y = shape(0), shape(0, out=True)
            by_op["MatMul"] += math.prod(y) * a[-1]
        else:
            uncounted[n.op_type] += 1
    return {"macs": int(sum(by_op.values())), "by_op": dict(by_op), "uncounted": dict(uncounted)}
