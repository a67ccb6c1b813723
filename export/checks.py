"""The checks every export passes before anything is written: the ONNX checker (full), strict shape
inference, a simplification pass (onnxslim; the smaller graph is kept), and numerical parity against
PyTorch in ONNX Runtime on real images."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from edgepure.export.errors import ExportError, ParityError

__all__ = ["check_model", "parity", "simplify"]


def check_model(model: Any) -> Any:
    """Full checker and strict shape inference; returns the model with inferred shapes."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported graph fails the ONNX checks: {exc}") from None


_DRAWS = ("RandomNormal", "RandomUniform")  # random ops without inputs: onnxslim folds them into fixed constants


def _draws_as_inputs(model: Any, draws: list[Any]) -> Any:
    """A copy of ``model`` whose random draws are graph inputs (so that onnxslim cannot freeze them)."""
    from onnx import TensorProto, helper

    work = type(model)()
    work.CopyFrom(model)
    names = {d.output[0] for d in draws}
    kept = [n for n in work.graph.node if not (n.op_type in _DRAWS and n.output[0] in names)]
    del work.graph.node[:]
    work.graph.node.extend(kept)
    for d in draws:
        attrs = {a.name: helper.get_attribute_value(a) for a in d.attribute}
        work.graph.input.append(helper.make_tensor_value_info(d.output[0], attrs.get("dtype", TensorProto.FLOAT),
                                                              list(attrs["shape"])))
    return work


def _inputs_as_draws(slim: Any, draws: list[Any]) -> Any:
    names = {d.output[0] for d in draws}
    inputs = [i for i in slim.graph.input if i.name not in names]
    used = {i.name for i in slim.graph.input} & names
    del slim.graph.input[:]
    slim.graph.input.extend(inputs)
    for d in reversed([d for d in draws if d.output[0] in used]):
        slim.graph.node.insert(0, d)
    return slim


def _count_draws(model: Any) -> int:
    return sum(n.op_type in (*_DRAWS, "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
               for n in model.graph.node)


def _size(model: Any) -> int:
    """Bytes on disk without the shape annotations (value_info): check_model infers those afresh for either graph,
    and onnxslim writes more of them than it saves in nodes."""
    return int(model.ByteSize()) - sum(v.ByteSize() for v in model.graph.value_info)


def simplify(model: Any) -> tuple[Any, dict[str, int]]:
    """onnxslim pass; keeps whichever of the two graphs is smaller (``_size``). Random draws are held out of the pass
    (onnxslim would fold them into constants: the same noise on every run); a slim graph that lost one is not kept."""
    import onnxslim

    before = len(model.graph.node)
    draws = [n for n in model.graph.node if n.op_type in _DRAWS and not n.input]
    try:
        slim = onnxslim.slim(_draws_as_inputs(model, draws) if draws else model)
    except Exception as exc:  # noqa: BLE001 - a failed optional optimisation keeps the original graph
        return model, {"nodes_before": before, "nodes_after": before, "slim_error": str(exc)[:200]}  # type: ignore[dict-item]
    if slim is not None and draws:
        slim = _inputs_as_draws(slim, draws)
    if slim is None or _size(slim) > _size(model) or _count_draws(slim) < _count_draws(model):
        return model, {"nodes_before": before, "nodes_after": before}
    return slim, {"nodes_before": before, "nodes_after": len(slim.graph.node)}


def _session(model: Any) -> Any:
    from edgepure.runtime.backends import ort_session

    return ort_session(model.SerializeToString())


def parity(
    model: Any,
    reference: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    feeds: list[Mapping[str, np.ndarray]],
    atol: float,
    min_top1: float | None = None,
) -> dict[str, Any]:
    """Run ``model`` in ONNX Runtime on each feed and compare with ``reference(feed)`` (PyTorch).

    Reports max and mean absolute difference and, for logits (``min_top1`` given), the top-1 agreement.
    Raises :class:`ParityError` when ``atol`` or ``min_top1`` is missed.
    """
    sess = _session(model)
    diffs, means, agree, total = [], [], 0, 0
    for feed in feeds:
        got = sess.run(None, dict(feed))[0]
        ref = reference(feed)
        if got.shape != ref.shape:
            raise ParityError(f"output shape {got.shape} differs from PyTorch's {ref.shape}")
        d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        diffs.append(float(d.max()))
        means.append(float(d.mean()))
        if min_top1 is not None:
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            total += got.shape[0]
    report: dict[str, Any] = {"max_abs_diff": max(diffs), "mean_abs_diff": float(np.mean(means)), "atol": atol,
                              "batches": len(feeds)}
    if min_top1 is not None:
        report["top1_agreement"] = agree / max(total, 1)
        report["min_top1"] = min_top1
    # NaN compares false with any tolerance: a graph (or a reference) that gives NaN or inf is a miss
    if not report["max_abs_diff"] <= atol or (min_top1 is not None and report["top1_agreement"] < min_top1):
        raise ParityError(f"ONNX Runtime does not match PyTorch: {report}")
    return report
