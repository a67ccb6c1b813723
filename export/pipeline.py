"""Export a classifier, a purifier and the fused pipeline purifier → classifier to a model directory.

Every model goes through the same steps: ONNX export (opset 18, one file, static shapes; gradient
steps traced with make_fx), the ONNX checker and strict shape inference, onnxslim, numerical parity
against PyTorch in ONNX Runtime on real images, and the TensorRT lint. Files are written into a
temporary directory that replaces ``out`` only when every model passed, so a failed export leaves
nothing behind and never half-overwrites an earlier one.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgepure.export.checks import check_model, parity, simplify
from edgepure.export.graph import OPSET, to_onnx
from edgepure.export.lint import lint_model
from edgepure.runtime.errors import ConfigError
from edgepure.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION, sha256_file

__all__ = ["FusedPipeline", "GraphNoise", "HalfPrecision", "PRECISIONS", "export_pipeline"]

PRECISIONS = ("fp32", "fp16")
# parity tolerance on any output when none is given: float32 graphs reproduce PyTorch to rounding,
# float16 graphs are compared with the float32 PyTorch model
DEFAULT_ATOL = {"fp32": 1e-3, "fp16": 5e-2}


class FusedPipeline(nn.Module):
    """``classifier(purifier(image, noise))`` as one module: image (and noise) in, logits out."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.purifier, self.classifier = purifier, classifier

    def forward(self, image: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        return self.classifier(self.purifier(image, noise))


class GraphNoise(nn.Module):
    """Draws the noise inside the graph (exported as RandomNormal): the model's only input is the image.
    ONNX Runtime draws fresh noise on every run and TensorRT ignores the seed, so results vary run to run."""

    def __init__(self, inner: nn.Module, noise_shape: Sequence[int]) -> None:
        super().__init__()
        self.inner = inner
        self.noise_shape = tuple(noise_shape)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.inner(image, torch.randn(self.noise_shape, dtype=image.dtype))


class HalfPrecision(nn.Module):
    """A copy of ``inner`` computing in float16, with float32 inputs and outputs (casts at the edges)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(inner).half()

    def forward(self, *args: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.inner(*(a.half() if a is not None else None for a in args)).float()


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
) -> dict[str, Any]:
    """Export one model into ``directory`` and return its manifest entry. Parity compares the graph with
    ``reference`` (default: ``module`` itself; the float32 original of a float16 export)."""
    names = ["image"] + (["noise"] if noise_fn is not None else [])
    example = [torch.from_numpy(image_batches[0])]
    if noise_fn is not None:
        example.append(torch.from_numpy(noise_fn(image_batches[0], 0)))
    output = "logits" if min_top1 is not None else "purified"
    model = check_model(to_onnx(module, example, names, [output], trace_autograd=trace_autograd))
    model, slim_report = simplify(model)
    model = check_model(model)
    feeds = []
    for i, b in enumerate(image_batches):
        feed = {"image": b}
        if noise_fn is not None:
            feed["noise"] = noise_fn(b, i)
        feeds.append(feed)

    ref_module = reference if reference is not None else module

    @torch.no_grad()
    def run_reference(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        args = [torch.from_numpy(feed[n]) for n in names]
        if trace_autograd:
            with torch.enable_grad():
                return ref_module(*args).detach().numpy()
        return ref_module(*args).numpy()

    report = parity(model, run_reference, feeds, atol=atol, min_top1=min_top1)
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


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise ConfigError(f"{out}: exists; pass --force to replace it")
        old = out.with_name(out.name + ".old-" + str(os.getpid()))
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_pipeline(
    purifier: Optional[nn.Module],
    classifier: nn.Module,
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
) -> dict[str, Any]:
    """Export ``classifier`` (and ``purifier`` and the fused pipeline) to the model directory ``out``.

    ``classifier`` is any torch module mapping float RGB NCHW in [0, 1] to logits; ``purifier`` any
    module ``(image, noise=None) -> image`` (an edgepure Purifier, or None). ``images`` (float32 NCHW in
    [0, 1]) feed the parity check. ``noise='graph'`` draws a stochastic purifier's noise inside the graph
    (its parity is then checked on the noise-input twin, and by top-1 agreement on the graph itself).
    Returns the manifest, also written to ``out/manifest.json``.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if noise not in ("input", "graph"):
        raise ConfigError(f"noise must be 'input' or 'graph', got {noise!r}")
    if batch < 1:
        raise ConfigError(f"batch must be ≥ 1, got {batch}")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"parity images must be N×3×H×W float32 in [0, 1], got shape {images.shape}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: exists; pass --force to replace it")
    batches = _batches(images, batch, parity_batches)
    classifier = classifier.eval()
    tol = atol if atol is not None else DEFAULT_ATOL[precision]
    cast: Callable[[nn.Module], nn.Module] = HalfPrecision if precision == "fp16" else (lambda m: m)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the shipped directory private
    try:
        models = {"classifier": _export_one("classifier", cast(_ImageOnly(classifier)), batches, None, False, tol,
                                            min_top1, tmp, lint_target, reference=_ImageOnly(classifier))}
        stochastic = bool(purifier is not None and getattr(purifier, "stochastic", False))
        noise_mode = (noise if stochastic else None)
        if purifier is not None:
            purifier = purifier.eval()
            trace = bool(getattr(purifier, "needs_autograd", False))
            noise_fn = None
            if stochastic:
                def noise_fn(b: np.ndarray, i: int) -> np.ndarray:
                    g = torch.Generator().manual_seed(1000 + i)
                    return purifier.sample_noise(torch.from_numpy(b), g).numpy()  # type: ignore[union-attr]
            fused = FusedPipeline(purifier, classifier)
            if noise_mode == "graph":
                # exact parity on the noise-input twin, then the graph-noise model itself
                _export_one("purifier", cast(purifier), batches, noise_fn, trace, tol, None, tmp, lint_target,
                            reference=purifier)
                twin = _export_one("pipeline", cast(fused), batches, noise_fn, trace, tol, min_top1, tmp, lint_target,
                                   reference=fused)
                shape = purifier.sample_noise(torch.from_numpy(batches[0]))  # type: ignore[union-attr]
                assert shape is not None
                models["purifier"] = _export_one("purifier", cast(GraphNoise(purifier, shape.shape)), batches, None,
                                                 trace, float("inf"), None, tmp, lint_target)
                models["pipeline"] = _export_one("pipeline", cast(GraphNoise(fused, shape.shape)), batches, None, trace,
                                                 float("inf"), 0.9, tmp, lint_target)
                models["pipeline"]["parity"]["noise_input_twin"] = twin["parity"]
            else:
                models["purifier"] = _export_one("purifier", cast(purifier), batches, noise_fn, trace, tol, None, tmp,
                                                 lint_target, reference=purifier)
                models["pipeline"] = _export_one("pipeline", cast(fused), batches, noise_fn, trace, tol, min_top1, tmp,
                                                 lint_target, reference=fused)
        manifest = {
            "schema": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "opset": OPSET,
            "batch": batch,
            "precision": precision,
            "models": models,
            "preprocessing": preprocessing or {"input": "float32 RGB NCHW in [0, 1]", "size": list(images.shape[2:])},
            "class_names": list(class_names),
            "classifier": classifier_info or {"name": type(classifier).__name__},
            "purifier": ({**(purifier_info or {}), "stochastic": stochastic, "noise": noise_mode}
                         if purifier is not None else None),
            "versions": _versions(),
        }
        import json

        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


