"""PyTorch module → ONNX ModelProto (opset 18, a single file, static shapes).

Modules whose forward takes gradients (NAPPure's unrolled steps, COUP's guidance) are traced with
``make_fx`` first, which records autograd's backward as explicit ATen ops; the decomposition table turns
the backward ops into forward ops, so the exported graph has no training ops and no autograd.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from edgepure.export.errors import ExportError

__all__ = ["OPSET", "to_onnx"]

OPSET = 18  # opset 20 renames GridSample modes, which TensorRT's parser then runs as nearest


def _trace_autograd(module: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.fx.GraphModule:
    from torch.fx.experimental.proxy_tensor import make_fx

    from edgepure.export.decompositions import decomposition_table

    gm = make_fx(module, decomposition_table=decomposition_table(), tracing_mode="real")(*inputs)
    leftovers = sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "backward" in str(n.target)})
    if leftovers:
        raise ExportError(f"backward ops left after decomposition: {', '.join(leftovers)}")
    return gm


def to_onnx(
    module: nn.Module,
    inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    trace_autograd: bool = False,
) -> Any:
    """Export ``module(*inputs)`` to an ``onnx.ModelProto``; exporter chatter goes nowhere."""
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    target: nn.Module = _trace_autograd(module, inputs) if trace_autograd else module
    # the exporter's registry logs one line per optional torchvision op it skips; not news for edgepure users
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                target, tuple(inputs), None, dynamo=True, opset_version=OPSET, external_data=False,
                input_names=list(input_names), output_names=list(output_names), verbose=False,
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; report them as one export failure
            raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {type(exc).__name__}: {exc}\n"
                              f"{sink.getvalue()[-2000:]}") from exc
    if program is None:
        raise ExportError(f"torch.onnx.export returned nothing for {type(module).__name__}")
    return program.model_proto
