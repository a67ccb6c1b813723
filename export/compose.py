"""Graph-level unrolling: a K-step purifier's ONNX graph composed from ONE exported step.

A purifier that unrolls K gradient steps (NAPPure, COUP) offers ``unrolled(x)``
(:class:`edgepure.purifiers.unroll.Unrolled`): its start, one step and its finish as modules on flat tensors,
and each step's constants. Each piece is traced (make_fx + ``decompositions``), exported and slimmed once; the
K-step graph is then built in ONNX — the step's nodes repeated with the prefix ``step{t}/``, wired from one
step's state outputs to the next step's state inputs, its weights shared (one initialiser each, whatever K),
step t's constants an initialiser ``step{t}/consts`` and its noise ``Gather(noise, t − 1, axis=1)``. The cost
of tracing and exporting grows with the graph, that of copying nodes barely: the export no longer grows with K
at the exporter's rate (docs/export.md has the measurements).

:func:`compose_module` recognises the wrappers the export pipeline puts around a purifier (float16,
noise drawn in the graph, purify → classify and R-vote pipelines) and composes those too; for a module with no
unrolled purifier inside it returns None (export it whole).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgepure.export.errors import ExportError
from edgepure.export.graph import to_onnx
from edgepure.export.voting import FusedPipeline, Voting, repeat_draws, vote_logits
from edgepure.export.wrappers import GraphNoise, HalfPrecision

__all__ = ["Pieces", "assemble", "compose_module", "compose_steps", "export_pieces"]

Progress = Callable[[str], None]


class _Cast(nn.Module):
    """``inner`` on inputs cast to ``dtype`` (the float16 copy of a piece); with ``out_float`` a float32 output."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype, out_float: bool = False) -> None:
        super().__init__()
        self.inner, self.dtype, self.out_float = inner, dtype, out_float

    def forward(self, *args: torch.Tensor) -> Any:  # type: ignore[override]
        out = self.inner(*(a.to(self.dtype) for a in args))
        return out.float() if self.out_float else out


def _tensor_key(t: Any) -> tuple[Any, ...]:
    from onnx import numpy_helper

    a = numpy_helper.to_array(t)
    return (t.data_type, tuple(t.dims), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())


class _Builder:
    """Collects nodes and initialisers; initialisers with equal contents are stored once."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: dict[str, Any] = {}
        self._by_key: dict[tuple[Any, ...], str] = {}

    def initializer(self, tensor: Any, name: str) -> str:
        key = _tensor_key(tensor)
        if key not in self._by_key:
            t = type(tensor)()
            t.CopyFrom(tensor)
            t.name = name
            self.inits[name] = t
            self._by_key[key] = name
        return self._by_key[key]

    def constant(self, array: np.ndarray, name: str) -> str:
        from onnx import numpy_helper

        return self.initializer(numpy_helper.from_array(array, name), name)

    def add(self, model: Any, prefix: str, inputs: dict[str, str], shared: str) -> dict[str, str]:
        """Copy ``model``'s nodes with values renamed ``prefix + name``; its graph inputs read ``inputs[name]``,
        its initialisers are stored once under ``shared + name`` (shared by every copy). Returns its outputs'
        new names."""
        from onnx import AttributeProto

        graph = model.graph
        if model.functions:
            raise ExportError(f"the exported {shared.rstrip('/')} graph has local functions, which the composer "
                              "does not copy")
        names: dict[str, str] = {"": ""}
        for i in graph.input:
            if i.name not in inputs:
                raise ExportError(f"the exported {shared.rstrip('/')} graph has an unexpected input {i.name!r}")
            names[i.name] = inputs[i.name]
        for t in graph.initializer:
            names[t.name] = self.initializer(t, shared + t.name)
        for node in graph.node:
            if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
                raise ExportError(f"{node.op_type} with a sub-graph in the exported step: the composer copies flat "
                                  "graphs only")
            new = type(node)()
            new.CopyFrom(node)
            # the exporter's per-node provenance (torch stack traces, module paths): most of the file, K times over
            del new.metadata_props[:]
            new.doc_string = ""
            new.name = prefix + node.name if node.name else ""
            for o in node.output:
                names[o] = prefix + o if o else ""
            new.input[:] = [names[i] for i in node.input]
            new.output[:] = [names[o] for o in node.output]
            self.nodes.append(new)
        return {o.name: names[o.name] for o in graph.output}


@dataclass
class Pieces:
    """The start, step and finish of an ``Unrolled`` as ONNX models (none depends on K)."""

    start: Any
    step: Any
    finish: Any
    n_context: int
    n_state: int


def export_pieces(u: Any, x: torch.Tensor, noise_1: torch.Tensor, dtype: torch.dtype = torch.float32,
                  progress: Optional[Progress] = None) -> Pieces:
    """Trace and export ``u``'s start, step and finish once each, for inputs like ``x`` and step 1's noise
    ``noise_1`` (float32), computing in ``dtype``."""
    say = progress or (lambda m: None)
    ctx = [f"context{i}" for i in range(u.n_context)]
    state = [f"state{i}" for i in range(u.n_state)]
    start = _Cast(u.start, dtype)
    say("exporting the start")
    m_start = to_onnx(start, [x, noise_1], ["image", "noise_1"], ctx + state, trace_autograd=True)
    with torch.no_grad():
        out = start(x, noise_1)
        first = [t.detach() for t in ((out,) if isinstance(out, torch.Tensor) else out)]  # one state tensor: COUP
    say(f"exporting one step (of {u.steps})")
    m_step = to_onnx(_Cast(u.step, dtype), [*first, noise_1, u.constants[0]], ctx + state + ["noise_t", "consts"],
                     [f"next{i}" for i in range(u.n_state)], trace_autograd=True)
    say("exporting the finish")
    m_finish = to_onnx(_Cast(u.finish, dtype, out_float=True), first, ctx + state, ["purified"], trace_autograd=True)
    say("onnxslim on the start, the step and the finish")
    return Pieces(*(_slim(m) for m in (m_start, m_step, m_finish)), u.n_context, u.n_state)


def _slim(model: Any) -> Any:
    """onnxslim on one piece, before it is repeated: subgraphs of weights alone fold into initialisers once (the
    step's K copies share them). onnxslim on the composed graph instead folds each copy into its own constants, a
    larger graph than the composed one, at a cost that grows with K (docs/export.md)."""
    import onnxslim

    try:
        slim = onnxslim.slim(model)
    except Exception:  # noqa: BLE001 - a failed optional optimisation keeps the piece as exported
        return model
    return model if slim is None else slim


def assemble(pieces: Pieces, constants: Sequence[torch.Tensor], image_shape: Sequence[int],
             noise_shape: Sequence[int]) -> Any:
    """The K-step graph ``(image, noise) → purified``, K = ``len(constants)``: the start on noise[:, 0], the step
    K times (step t on noise[:, t − 1] and ``constants[t − 1]``), the finish."""
    import onnx
    from onnx import TensorProto, helper

    b = _Builder()
    first = b.constant(np.array(0, dtype=np.int64), "start/index")
    b.nodes.append(helper.make_node("Gather", ["noise", first], ["start/noise"], name="start/noise", axis=1))
    outs = b.add(pieces.start, "start/", {"image": "image", "noise_1": "start/noise"}, "start/")
    ctx = {f"context{i}": outs[f"context{i}"] for i in range(pieces.n_context)}
    state = [outs[f"state{i}"] for i in range(pieces.n_state)]
    for t in range(1, len(constants) + 1):
        p = f"step{t}/"
        index = b.constant(np.array(t - 1, dtype=np.int64), p + "index")
        b.nodes.append(helper.make_node("Gather", ["noise", index], [p + "noise"], name=p + "noise", axis=1))
        consts = b.constant(constants[t - 1].numpy().astype(np.float32), p + "consts")
        feeds = ctx | {f"state{i}": v for i, v in enumerate(state)} | {"noise_t": p + "noise", "consts": consts}
        outs = b.add(pieces.step, p, feeds, "step/")
        state = [outs[f"next{i}"] for i in range(pieces.n_state)]
    outs = b.add(pieces.finish, "finish/", ctx | {f"state{i}": v for i, v in enumerate(state)}, "finish/")
    b.nodes.append(helper.make_node("Identity", [outs["purified"]], ["purified"], name="purified"))
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(image_shape)),
              helper.make_tensor_value_info("noise", TensorProto.FLOAT, list(noise_shape))]
    output = helper.make_tensor_value_info("purified", TensorProto.FLOAT, list(image_shape))
    graph = helper.make_graph(b.nodes, "purifier", inputs, [output], list(b.inits.values()))
    model = helper.make_model(graph, opset_imports=list(pieces.step.opset_import), ir_version=pieces.step.ir_version,
                              producer_name="edgepure.export.compose")
    onnx.checker.check_model(model)
    return model


# the pieces of the last purifiers exported: one export writes up to three graphs around the same purifier
# (the noise-input twin, the purifier and the pipeline with graph noise; float16 purifier and pipeline)
_PIECES: "OrderedDict[tuple[Any, ...], Pieces]" = OrderedDict()
_PIECES_KEPT = 2


def _fingerprint(module: nn.Module, dtype: torch.dtype, x: torch.Tensor, noise: torch.Tensor) -> tuple[Any, ...]:
    """Equal for purifiers that export to the same pieces: type, settings, weights, dtype and input shapes."""
    h = hashlib.sha256()
    for name, t in [*module.state_dict().items()]:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    config = getattr(module, "config", None)
    settings = repr(sorted(config().items())) if callable(config) else ""
    settings += repr(getattr(module, "hyper", None))  # NAPPure's hyper-parameters while they are learned
    return type(module).__qualname__, settings, h.hexdigest(), str(dtype), tuple(x.shape), tuple(noise.shape)


def compose_steps(u: Any, x: torch.Tensor, noise: torch.Tensor, dtype: torch.dtype = torch.float32,
                  progress: Optional[Progress] = None, purifier: Optional[nn.Module] = None) -> Any:
    """The K-step purifier graph ``(image, noise) → purified`` of ``u`` (an ``Unrolled``) for inputs like ``x``
    and ``noise`` (float32), computing in ``dtype``. With ``purifier`` (the module ``u`` came from) its pieces
    are reused when the same purifier is composed again."""
    key = _fingerprint(purifier, dtype, x, noise) if purifier is not None else None
    pieces = _PIECES.get(key) if key is not None else None
    if pieces is None:
        pieces = export_pieces(u, x, noise[:, 0], dtype, progress)
        if key is not None:
            _PIECES[key] = pieces
            while len(_PIECES) > _PIECES_KEPT:
                _PIECES.popitem(last=False)
    elif progress is not None:
        progress("the start, step and finish exported a moment ago")
    if progress is not None:
        progress(f"composing {u.steps} steps")
    return assemble(pieces, u.constants, x.shape, noise.shape)


def _noise_in_graph(model: Any) -> Any:
    """``model`` with its ``noise`` input drawn inside the graph (RandomNormal, fresh on every run)."""
    from onnx import TensorProto, helper

    inp = next(i for i in model.graph.input if i.name == "noise")
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    model.graph.input.remove(inp)
    draw = helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=shape, dtype=TensorProto.FLOAT)
    model.graph.node.insert(0, draw)
    return model


class _VoteInputs(nn.Module):
    """R copies of the batch and its R noise draws (holding no weights: an exported module keeps even unused ones)."""

    def __init__(self, votes: int) -> None:
        super().__init__()
        self.votes = votes

    def forward(self, image: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return repeat_draws(image, noise, self.votes)


class _Classify(nn.Module):
    """The pipeline after its purifier: classify (and with R > 1 votes count them)."""

    def __init__(self, classifier: nn.Module, votes: int) -> None:
        super().__init__()
        self.classifier, self.votes = classifier, votes

    def forward(self, purified: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logits = self.classifier(purified)
        return vote_logits(logits, self.votes) if self.votes > 1 else logits


def _unwrap(module: nn.Module) -> tuple[torch.dtype, Optional[nn.Module], Optional[nn.Module], bool]:
    """(compute dtype, the pipeline around the purifier or None, the purifier, noise drawn in the graph)."""
    dtype, graph_noise, pipe = torch.float32, False, None
    if isinstance(module, HalfPrecision):
        dtype, module = torch.float16, module.inner
    if isinstance(module, GraphNoise):
        graph_noise, module = True, module.inner
    if isinstance(module, (FusedPipeline, Voting)):
        pipe, module = module, module.purifier
    return dtype, pipe, module, graph_noise


def compose_module(module: nn.Module, example: Sequence[torch.Tensor], progress: Optional[Progress] = None) -> Any:
    """``module`` (a purifier, or a pipeline the export builds around one) as an ONNX model with its purifier's
    steps composed from one exported step; None when no purifier inside offers ``unrolled``."""
    from edgepure.calibration.merge import merge_graphs

    dtype, pipe, purifier, graph_noise = _unwrap(module)
    if not callable(getattr(purifier, "unrolled", None)):
        return None
    image = example[0]
    if graph_noise:
        shape = (pipe if pipe is not None else purifier).noise_shape(image)  # type: ignore[operator]
        noise = torch.randn(shape, dtype=torch.float32)
    else:
        noise = example[1]
    x, nz = image, noise
    pre = None
    if isinstance(pipe, Voting):
        pre = to_onnx(_VoteInputs(pipe.votes), [image, noise], ["image", "noise"], ["image_r", "noise_r"])
        x, nz = repeat_draws(image, noise, pipe.votes)
    model = compose_steps(purifier.unrolled(x.to(dtype)), x, nz, dtype, progress, purifier)  # type: ignore[operator]
    if pre is not None:
        from onnx import compose

        model = compose.merge_models(pre, compose.add_prefix(model, "purifier/"),
                                     io_map=[("image_r", "purifier/image"), ("noise_r", "purifier/noise")])
    if pipe is not None:
        if progress is not None:
            progress("exporting the classifier")
        # the purified images' shape is the input's: the classifier is exported on the input itself
        votes = pipe.votes if isinstance(pipe, Voting) else 1
        post = to_onnx(_Cast(_Classify(pipe.classifier, votes), dtype, out_float=True), [x], ["purified"], ["logits"])
        model = merge_graphs(model, post)
    return _noise_in_graph(model) if graph_noise else model
