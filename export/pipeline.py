"""Export a classifier, a purifier and the fused pipeline purifier → classifier to a model directory.

Every model goes through the same steps: ONNX export (opset 18, one file, static shapes; gradient
steps traced with make_fx), the ONNX checker and strict shape inference, onnxslim, numerical parity
against PyTorch in ONNX Runtime on real images, and the TensorRT lint. Files are written into a
temporary directory that replaces ``out`` only when every model passed, so a failed export leaves
nothing behind and never half-overwrites an earlier one.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgepure.export.checks import check_model, parity, simplify
from edgepure.export.compose import compose_module
from edgepure.export.graph import OPSET, to_onnx
from edgepure.export.lint import lint_model
from edgepure.export.voting import FusedPipeline, pipeline_module
from edgepure.export.wrappers import GraphNoise, HalfPrecision
from edgepure.runtime.errors import ConfigError
from edgepure.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION, sha256_file
from edgepure.runtime.staging import check_replaceable, replace_dir, staging_dir

__all__ = ["FusedPipeline", "GraphNoise", "HalfPrecision", "PRECISIONS", "export_pipeline"]

PRECISIONS = ("fp32", "fp16")
# parity tolerance on any output when none is given: float32 graphs reproduce PyTorch to rounding,
# float16 graphs are compared with the float32 PyTorch model
DEFAULT_ATOL = {"fp32": 1e-3, "fp16": 5e-2}
Progress = Callable[[str], None]


class _ImageOnly(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.inner(image)


def _io(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnx

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append({"name": v.name, "shape": [d.dim_value for d in t.shape.dim],
                        "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    return describe(model.graph.input), describe(model.graph.output)


def _batches(images: np.ndarray, batch: int, max_batches: int) -> list[np.ndarray]:
    n = (len(images) // batch) * batch
    if n == 0:
        raise ConfigError(f"parity needs at least {batch} images (one batch), got {len(images)}")
    return [images[i : i + batch] for i in range(0, n, batch)][:max_batches]


def _feeds(image_batches: list[np.ndarray], noise_fn: Optional[Callable[[np.ndarray, int], np.ndarray]]) -> list[dict[str, np.ndarray]]:
    feeds = []
    for i, b in enumerate(image_batches):
        feed = {"image": b}
        if noise_fn is not None:
            feed["noise"] = noise_fn(b, i)
        feeds.append(feed)
    return feeds


def _finish(role: str, model: Any, reference: Callable[[Mapping[str, np.ndarray]], np.ndarray],
            feeds: list[dict[str, np.ndarray]], atol: float, min_top1: Optional[float], directory: Path,
            lint_target: str, slim_report: dict[str, Any], progress: Optional[Progress] = None) -> dict[str, Any]:
    """Parity, lint and writing of one checked model; returns its manifest entry."""
    say = _says(progress, role)
    say(f"parity against PyTorch on {len(feeds)} batch{'es' if len(feeds) != 1 else ''}")
    report = parity(model, reference, feeds, atol=atol, min_top1=min_top1)
    say(f"TensorRT {lint_target} lint")
    issues = [i.as_dict() for i in lint_model(model, lint_target)]
    path = directory / f"{role}.onnx"
    path.write_bytes(model.SerializeToString())
    inputs, outputs = _io(model)
    return {
        "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "nodes": len(model.graph.node),
        "inputs": inputs, "outputs": outputs, "parity": report, "simplify": slim_report,
        "lint": {"target": f"TensorRT {lint_target}", "errors": sum(i["severity"] == "error" for i in issues),
                 "issues": issues},
    }


def _torch_reference(module: nn.Module, names: Sequence[str], trace_autograd: bool) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    @torch.no_grad()
    def run(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        args = [torch.from_numpy(feed[n]) for n in names]
        if trace_autograd:
            with torch.enable_grad():
                return module(*args).detach().numpy()
        return module(*args).numpy()

    return run


def _says(progress: Optional[Progress], role: str) -> Progress:
    return (lambda m: progress(f"{role}: {m}")) if progress is not None else (lambda m: None)


def _export_one(
    role: str,
    module: nn.Module,
    image_batches: list[np.ndarray],
    noise_fn: Optional[Callable[[np.ndarray, int], np.ndarray]],
    trace_autograd: bool,
    atol: float,
    min_top1: Optional[float],
    directory: Path,
    lint_target: str,
    reference: Optional[nn.Module] = None,
    progress: Optional[Progress] = None,
) -> dict[str, Any]:
    """Export one model into ``directory`` and return its manifest entry. Parity compares the graph with
    ``reference`` (default: ``module`` itself; the float32 original of a float16 export). A module that unrolls
    gradient steps through ``unrolled`` has its K-step graph composed from one exported step
    (``edgepure.export.compose``); any other is exported whole."""
    say = _says(progress, role)
    names = ["image"] + (["noise"] if noise_fn is not None else [])
    example = [torch.from_numpy(image_batches[0])]
    if noise_fn is not None:
        example.append(torch.from_numpy(noise_fn(image_batches[0], 0)))
    output = "logits" if min_top1 is not None else "purified"
    model = compose_module(module, example, say) if trace_autograd else None
    composed = model is not None
    if model is None:
        say("exporting" + (" (gradient steps traced with make_fx)" if trace_autograd else ""))
        model = to_onnx(module, example, names, [output], trace_autograd=trace_autograd)
    say("ONNX checker and shape inference")
    model = check_model(model)
    if composed:  # its pieces went through onnxslim before composing (edgepure.export.compose._slim)
        nodes = len(model.graph.node)
        slim_report: dict[str, Any] = {"nodes_before": nodes, "nodes_after": nodes, "pieces": "onnxslim"}
    else:
        say(f"onnxslim ({len(model.graph.node)} nodes)")
        model, slim_report = simplify(model)
        model = check_model(model)
    ref = _torch_reference(reference if reference is not None else module, names, trace_autograd)
    return _finish(role, model, ref, _feeds(image_batches, noise_fn), atol, min_top1, directory, lint_target,
                   slim_report, progress)


def _merged_pipeline(
    purifier: nn.Module, purifier_file: Path, classifier_model: Any, image_batches: list[np.ndarray],
    noise_fn: Optional[Callable[[np.ndarray, int], np.ndarray]], graph_noise: bool, atol: float, min_top1: float,
    directory: Path, lint_target: str, progress: Optional[Progress] = None,
) -> dict[str, Any]:
    """The pipeline of an edgepure purifier graph and a user's ONNX classifier, merged into one graph; its
    parity reference is the classifier graph in ONNX Runtime on the PyTorch purifier's output."""
    import onnx

    from edgepure.export.merge import merge_graphs
    from edgepure.runtime.backends import ort_session

    _says(progress, "pipeline")("the purifier graph merged in front of the classifier graph")
    merged = check_model(merge_graphs(onnx.load(str(purifier_file)), classifier_model))
    sess = ort_session(classifier_model.SerializeToString())
    cls_input = sess.get_inputs()[0].name
    purify = _torch_reference(purifier, ["image", "noise"] if noise_fn is not None else ["image"],
                              bool(getattr(purifier, "needs_autograd", False)))
    if graph_noise:
        def purify_fresh(feed: Mapping[str, np.ndarray]) -> np.ndarray:
            x = torch.from_numpy(feed["image"])
            return purifier(x, purifier.sample_noise(x)).detach().numpy()  # type: ignore[operator]
        purify = purify_fresh

    def reference(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return sess.run(None, {cls_input: purify(feed).astype(np.float32)})[0]

    tol, top1 = (float("inf"), 0.9) if graph_noise else (atol, min_top1)
    return _finish("pipeline", merged, reference, _feeds(image_batches, None if graph_noise else noise_fn), tol, top1,
                   directory, lint_target, {"merged": True}, progress)


def _adopt_classifier(model: Any, directory: Path, lint_target: str) -> dict[str, Any]:
    """A user's ONNX classifier, checked and linted, copied in as it is."""
    model = check_model(model)
    issues = [i.as_dict() for i in lint_model(model, lint_target)]
    path = directory / "classifier.onnx"
    path.write_bytes(model.SerializeToString())
    inputs, outputs = _io(model)
    return {
        "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "nodes": len(model.graph.node),
        "inputs": inputs, "outputs": outputs, "parity": {"note": "given as ONNX: used as it is, no PyTorch reference"},
        "simplify": {}, "lint": {"target": f"TensorRT {lint_target}",
                                 "errors": sum(i["severity"] == "error" for i in issues), "issues": issues},
    }


def _purifier_and_merged(purifier: nn.Module, classifier_model: Any, batches: list[np.ndarray],
                         noise_fn: Optional[Callable[[np.ndarray, int], np.ndarray]], graph_noise: bool, trace: bool,
                         tol: float, min_top1: float, directory: Path, lint_target: str,
                         progress: Optional[Progress] = None) -> dict[str, Any]:
    if graph_noise:
        shape = purifier.sample_noise(torch.from_numpy(batches[0]))  # type: ignore[operator]
        _export_one("purifier", purifier, batches, noise_fn, trace, tol, None, directory, lint_target,
                    progress=progress)  # exact twin
        entry = _export_one("purifier", GraphNoise(purifier, shape.shape), batches, None, trace, float("inf"), None,
                            directory, lint_target, progress=progress)
    else:
        entry = _export_one("purifier", purifier, batches, noise_fn, trace, tol, None, directory, lint_target,
                            progress=progress)
    pipeline = _merged_pipeline(purifier, directory / "purifier.onnx", classifier_model, batches, noise_fn, graph_noise,
                                tol, min_top1, directory, lint_target, progress)
    return {"purifier": entry, "pipeline": pipeline}


def _seeded_noise(module: Any) -> Callable[[np.ndarray, int], np.ndarray]:
    """Noise for parity batch ``i`` of ``module`` (a purifier or a pipeline), from a generator seeded by ``i``."""
    def noise_fn(b: np.ndarray, i: int) -> np.ndarray:
        return module.sample_noise(torch.from_numpy(b), torch.Generator().manual_seed(1000 + i)).numpy()

    return noise_fn


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    import edgepure

    out = {"edgepure": edgepure.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__}
    try:
        import onnxslim

        out["onnxslim"] = onnxslim.__version__
    except (ImportError, AttributeError):
        pass
    return out


def _fused_pipeline(purifier: nn.Module, classifier: nn.Module, cast: Callable[[nn.Module], nn.Module],
                    batches: list[np.ndarray], noise_mode: Optional[str], trace: bool, tol: float, min_top1: float,
                    tmp: Path, lint_target: str, progress: Optional[Callable[[str], None]]) -> dict[str, Any]:
    """The purifier and the fused purifier → classifier module exported each as a whole (fp16, graph noise, votes)."""
    stochastic = noise_mode is not None
    noise_fn = _seeded_noise(purifier) if stochastic else None
    models: dict[str, Any] = {}
    pipe = pipeline_module(purifier, classifier)  # type: ignore[arg-type]
    pipe_noise_fn = _seeded_noise(pipe) if stochastic else None
    if noise_mode == "graph":
        # exact parity on the noise-input twin of the pipeline, then the graph-noise models themselves
        twin = _export_one("pipeline", cast(pipe), batches, pipe_noise_fn, trace, tol, min_top1, tmp,
                           lint_target, reference=pipe, progress=progress)
        x0 = torch.from_numpy(batches[0])
        shape, pipe_shape = purifier.noise_shape(x0), pipe.noise_shape(x0)  # type: ignore[operator]
        assert shape is not None and pipe_shape is not None
        models["purifier"] = _export_one("purifier", cast(GraphNoise(purifier, shape)), batches, None,
                                         trace, float("inf"), None, tmp, lint_target, progress=progress)
        models["pipeline"] = _export_one("pipeline", cast(GraphNoise(pipe, pipe_shape)), batches, None,
                                         trace, float("inf"), 0.9, tmp, lint_target, progress=progress)
        models["pipeline"]["parity"]["noise_input_twin"] = twin["parity"]
    else:
        models["purifier"] = _export_one("purifier", cast(purifier), batches, noise_fn, trace, tol, None,
                                         tmp, lint_target, reference=purifier, progress=progress)
        models["pipeline"] = _export_one("pipeline", cast(pipe), batches, pipe_noise_fn, trace, tol,
                                         min_top1, tmp, lint_target, reference=pipe, progress=progress)
    return models


def _manifest(models: dict[str, Any], batch: int, precision: str, preprocessing: Optional[dict[str, Any]],
              size: Sequence[int], class_names: Sequence[str], classifier_info: dict[str, Any],
              purifier: Optional[nn.Module], purifier_info: Optional[dict[str, Any]], stochastic: bool,
              noise_mode: Optional[str]) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "opset": OPSET,
        "batch": batch,
        "precision": precision,
        "models": models,
        "preprocessing": preprocessing or {"input": "float32 RGB NCHW in [0, 1]", "size": list(size)},
        "class_names": list(class_names),
        "classifier": classifier_info,
        "purifier": ({"name": getattr(purifier, "edgepure_name", type(purifier).__name__),
                      "config": purifier.config() if callable(getattr(purifier, "config", None)) else {},
                      **(purifier_info or {}), "stochastic": stochastic, "noise": noise_mode}
                     if purifier is not None else None),
        "versions": _versions(),
    }


def _checked_images(precision: str, noise: str, batch: int, images: np.ndarray) -> np.ndarray:
    """``images`` as contiguous float32 after checking the export settings; a bad one is a ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if noise not in ("input", "graph"):
        raise ConfigError(f"noise must be 'input' or 'graph', got {noise!r}")
    if batch < 1:
        raise ConfigError(f"batch must be ≥ 1, got {batch}")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"parity images must be N×3×H×W float32 in [0, 1], got shape {images.shape}")
    return images


def _onnx_classifier(path: str | Path, precision: str, batch: int, images: np.ndarray) -> Any:
    from edgepure.export.merge import load_onnx_classifier

    if precision != "fp32":
        raise ConfigError("a classifier given as ONNX is used as it is: export it in the precision you want")
    return load_onnx_classifier(path, batch, (images.shape[2], images.shape[3]))


def export_pipeline(
    purifier: Optional[nn.Module],
    classifier: nn.Module | str | Path,
    out: str | Path,
    images: np.ndarray,
    batch: int = 1,
    noise: str = "input",
    precision: str = "fp32",
    class_names: Sequence[str] = (),
    preprocessing: Optional[dict[str, Any]] = None,
    classifier_info: Optional[dict[str, Any]] = None,
    purifier_info: Optional[dict[str, Any]] = None,
    atol: Optional[float] = None,
    min_top1: float = 0.99,
    parity_batches: int = 8,
    lint_target: str = "10.3",
    overwrite: bool = False,
    progress: Optional[Progress] = None,
) -> dict[str, Any]:
    """Export ``classifier`` (and ``purifier`` and the fused pipeline) to the model directory ``out``.

    ``classifier``: a torch module (float RGB NCHW in [0, 1] → logits) or an ONNX file of one (static input; the
    purifier graph is merged in front of it, parity against that file in ONNX Runtime); ``purifier``: a module
    ``(image, noise=None) -> image`` or None. ``images`` (float32 NCHW in [0, 1]) feed the parity check.
    ``noise='graph'`` draws a stochastic purifier's noise inside the graph (parity on the noise-input twin, then
    top-1 agreement). ``overwrite`` replaces an ``out`` edgepure wrote (or an empty one); ``progress`` is told
    which model and step or check the export is at. Returns the manifest, also written to ``out/manifest.json``."""
    images = _checked_images(precision, noise, batch, images)
    out = Path(out)
    check_replaceable(out, overwrite)
    batches = _batches(images, batch, parity_batches)
    onnx_classifier = None
    if isinstance(classifier, (str, Path)):
        onnx_classifier = _onnx_classifier(classifier, precision, batch, images)
    else:
        classifier = classifier.eval()
    tol = atol if atol is not None else DEFAULT_ATOL[precision]
    cast: Callable[[nn.Module], nn.Module] = HalfPrecision if precision == "fp16" else (lambda m: m)
    tmp = staging_dir(out)
    try:
        if onnx_classifier is not None:
            models = {"classifier": _adopt_classifier(onnx_classifier, tmp, lint_target)}
        else:
            models = {"classifier": _export_one("classifier", cast(_ImageOnly(classifier)), batches, None, False, tol,
                                                min_top1, tmp, lint_target, reference=_ImageOnly(classifier),
                                                progress=progress)}
        stochastic = bool(purifier is not None and getattr(purifier, "stochastic", False))
        noise_mode = (noise if stochastic else None)
        if purifier is not None:
            purifier = purifier.eval()
            trace = bool(getattr(purifier, "needs_autograd", False))
            votes = int(getattr(purifier, "votes", 1))
            if votes > 1 and onnx_classifier is not None:
                raise ConfigError(f"the purifier votes (votes = {votes}): the pipeline classifies {votes}·batch images "
                                  "at once, which a classifier given as ONNX (static batch) cannot; export it from "
                                  "a torch classifier, or set votes=1")
            noise_fn = _seeded_noise(purifier) if stochastic else None
            if onnx_classifier is not None:
                models.update(_purifier_and_merged(purifier, onnx_classifier, batches, noise_fn, noise_mode == "graph",
                                                   trace, tol, min_top1, tmp, lint_target, progress))
            elif precision == "fp32" and noise_mode != "graph" and votes == 1:
                import onnx

                # the pipeline is the exported purifier graph merged into the classifier graph: the same
                # operators as exporting the fused module again, at half the export time (NAPPure's graph
                # dominates both); parity against the PyTorch purifier → classifier graph
                models.update(_purifier_and_merged(purifier, onnx.load(str(tmp / "classifier.onnx")), batches, noise_fn,
                                                   False, trace, tol, min_top1, tmp, lint_target, progress))
            else:
                models.update(_fused_pipeline(purifier, classifier, cast, batches, noise_mode, trace, tol, min_top1,  # type: ignore[arg-type]
                                              tmp, lint_target, progress))
        manifest = _manifest(models, batch, precision, preprocessing, images.shape[2:], class_names,
                             classifier_info or {"name": type(classifier).__name__}, purifier, purifier_info,
                             stochastic, noise_mode)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


