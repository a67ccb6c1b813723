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


def simplify(model: Any) -> tuple[Any, dict[str, int]]:
    """onnxslim pass; keeps whichever of the two graphs is smaller on disk."""
    import onnxslim

    before = len(model.graph.node)
    try:
        slim = onnxslim.slim(model)
    except Exception as exc:  # noqa: BLE001 - a failed optional optimisation keeps the original graph
        return model, {"nodes_before": before, "nodes_after": before, "slim_error": str(exc)[:200]}  # type: ignore[dict-item]
    if slim is None or slim.ByteSize() > model.ByteSize():
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
