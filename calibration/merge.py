"""Join two ONNX graphs: a purifier's ``purified`` output feeds a classifier's image input.

Used by export (a classifier brought as ONNX) and by calibration (an FP32 purifier in front of an INT8
classifier). The merged graph's output is called ``logits``, as in edgepure's own pipelines.
"""

from __future__ import annotations

from typing import Any

from edgepure.runtime.errors import ModelError

__all__ = ["merge_graphs"]

_PREFIX = "classifier/"


def merge_graphs(purifier: Any, classifier: Any) -> Any:
    """One ``onnx.ModelProto``: ``purifier`` (first output) → ``classifier`` (its one non-initializer input)."""
    import onnx
    from onnx import compose

    cls = compose.add_prefix(classifier, prefix=_PREFIX)
    cls_input = next(i.name for i in cls.graph.input if i.name not in {t.name for t in cls.graph.initializer})
    out = purifier.graph.output[0].name
    ir = max(purifier.ir_version, cls.ir_version)
    purifier.ir_version = cls.ir_version = ir
    # opset imports must agree: take the union (a quantized graph adds domains the other lacks)
    versions: dict[str, int] = {}
    for m in (purifier, cls):
        for o in m.opset_import:
            versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    for m in (purifier, cls):
        del m.opset_import[:]
        m.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(versions.items()))
    try:
        merged = compose.merge_models(purifier, cls, io_map=[(out, cls_input)])
    except (ValueError, onnx.checker.ValidationError) as exc:
        raise ModelError(f"cannot merge the purifier graph with the classifier graph: {exc}") from None
    old = merged.graph.output[0].name  # the classifier's prefixed output
    for node in merged.graph.node:
        node.output[:] = ["logits" if o == old else o for o in node.output]
        node.input[:] = ["logits" if i == old else i for i in node.input]
    merged.graph.output[0].name = "logits"
    return merged
