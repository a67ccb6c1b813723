"""``edgepure bench``: latency percentiles and throughput per backend and batch size, torch-free.

For every variant and graph of a model directory, on each backend and batch size: warm-up, then timed
calls of (a) the bare backend (ONNX Runtime's ``session.run`` on a ready float32 batch), (b) the runtime's inference
(:meth:`EdgeModel.logits`: validation, static-batch filling, noise), and (c) the runtime's whole frame
step (numpy preprocessing of uint8 frames, inference, softmax and top-k). The overheads of (b) and (c)
over (a) are what the runtime itself costs.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from edgepure.runtime.errors import ConfigError
from edgepure.runtime.model import EdgeModel
from edgepure.runtime.variants import list_variants

__all__ = ["bench_directory", "time_calls"]


def time_calls(fns: Sequence[Callable[[], object]], warmup: int, iters: int, block: int = 10) -> np.ndarray:
    """Wall times (ms) of ``iters`` calls of each function (``len(fns) × iters``), after ``warmup`` calls each.

    The functions take turns in blocks of ``block`` calls: within a block each runs back to back as it
    would in a loop, and the turns spread drift (clock boost, a neighbour process) evenly over them."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    out = np.empty((len(fns), iters))
    for start in range(0, iters, block):
        for j, fn in enumerate(fns):
            for i in range(start, min(start + block, iters)):
                t0 = time.perf_counter()
                fn()
                out[j, i] = (time.perf_counter() - t0) * 1e3
    return out


def _pct(t: np.ndarray) -> dict[str, float]:
    return {f"p{q}_ms": round(float(np.percentile(t, q)), 4) for q in (50, 95, 99)} | {
        "mean_ms": round(float(t.mean()), 4)}


def _bench_model(model: EdgeModel, batch: int, warmup: int, iters: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (model.height, model.width, 3), dtype=np.uint8) for _ in range(batch)]
    x = np.stack([model.preprocess(f) for f in frames])
    stage = model.stages[0]
    feeds = []
    for s in range(0, -(-batch // model.batch) * model.batch, model.batch):
        chunk = x[s : s + model.batch]
        if chunk.shape[0] < model.batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], model.batch - chunk.shape[0], axis=0)])
        feed = {stage.input_name: np.ascontiguousarray(chunk)}
        if stage.noise is not None:
            feed["noise"] = rng.standard_normal(stage.noise.shape, dtype=np.float32)
        feeds.append(feed)
    session = getattr(stage.backend, "session", None)  # ONNX Runtime: time the bare session.run itself
    if len(model.stages) == 1 and session is not None:
        def bare() -> None:
            for f in feeds:
                session.run(None, f)
    elif len(model.stages) == 1:
        def bare() -> None:
            for f in feeds:
                stage.backend.run(f)
    else:  # split mode: the bare baseline runs the same two graphs back to back
        def bare() -> None:
            model.logits(x)
    t_bare, t_infer, t_step = time_calls([bare, lambda: model.logits(x), lambda: model.classify(frames)],
                                         warmup, iters)
    p50 = float(np.percentile(t_bare, 50))
    return {
        "batch": batch, "graph_batch": model.batch, "calls_per_batch": len(feeds),
        "bare": _pct(t_bare), "runtime_infer": _pct(t_infer), "runtime_step": _pct(t_step),
        "throughput_per_s": round(batch / (float(np.percentile(t_step, 50)) / 1e3), 1),
        "overhead_infer": round(float(np.percentile(t_infer, 50)) / p50 - 1, 4),
        "overhead_step": round(float(np.percentile(t_step, 50)) / p50 - 1, 4),
    }


def bench_directory(directory: str | Path, backends: Sequence[str] = ("ort-cpu",), batches: Sequence[int] = (1,),
                    warmup: int = 10, iters: int = 100, threads: Optional[int] = None,
                    roles: Optional[Sequence[str]] = None, seed: int = 0,
                    progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Benchmark every variant's graphs (``classifier``, ``pipeline``; or ``roles``) of ``directory``."""
    if warmup < 0 or iters < 1:
        raise ConfigError(f"warm-up must be ≥ 0 and iterations ≥ 1, got {warmup} and {iters}")
    if not batches or min(batches) < 1:
        raise ConfigError(f"batch sizes must be ≥ 1, got {list(batches)}")
    rows = []
    for variant in list_variants(directory):
        from edgepure.runtime.manifest import load_manifest

        manifest = load_manifest(variant.path)
        wanted = roles or [r for r in ("classifier", "pipeline") if r in manifest["models"]]
        for backend in backends:
            for role in wanted:
                model = EdgeModel(variant.path, backend=backend, threads=threads, seed=seed, role=role)
                try:
                    for b in batches:
                        if progress:
                            progress(f"{variant.name} {role} {backend} batch {b}")
                        rows.append({"variant": variant.name, "role": role, "backend": backend,
                                     **_bench_model(model, b, warmup, iters, seed)})
                finally:
                    model.close()
    return {"model": str(directory), "threads": threads, "warmup": warmup, "iters": iters,
            "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                        "system": platform.platform()},
            "results": rows}
