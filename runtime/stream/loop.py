"""The camera loop: a one-frame step (:class:`Runner`) and the loop around it (:func:`run_stream`).

    runner = Runner.from_directory("models/nappure", budget_ms=40)
    summary = run_stream(open_source("csi://0"), runner, [open_output("display://0")])

:class:`Runner.step` takes one :class:`Frame` through preprocess → (purify →) classify on the current
variant, applies temporal smoothing and feeds the latency budget; :func:`run_stream` runs capture in its
own thread, writes every result to the outputs and returns the summary: frames, dropped, errors,
p50/p95/p99 latency per stage, accuracy where the source knows the labels, and the variant switches.
Ctrl-C (or q in the window) stops it cleanly and the summary is still returned.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from edgepure.runtime.budget import BudgetController, measure
from edgepure.runtime.errors import ConfigError, EdgepureError
from edgepure.runtime.model import EdgeModel, softmax
from edgepure.runtime.smoothing import TemporalSmoother
from edgepure.runtime.stream.capture import Capture
from edgepure.runtime.stream.outputs import Output, StopRequested
from edgepure.runtime.stream.sources import Frame, Source
from edgepure.runtime.stream.stats import StageStats
from edgepure.runtime.variants import list_variants

__all__ = ["Runner", "run_stream"]

log = logging.getLogger("edgepure.runtime.loop")


class Runner:
    """Classifies frames with one of several variants (weakest first), within an optional latency budget."""

    def __init__(self, variants: Sequence[tuple[str, EdgeModel]], roi: Optional[Sequence[float]] = None,
                 smoothing: float = 1.0, k: int = 3, budget_ms: Optional[float] = None, window: int = 20,
                 seed: int = 0) -> None:
        if not variants:
            raise ConfigError("no model variants to run")
        if k < 1:
            raise ConfigError(f"top-k must be ≥ 1, got {k}")
        self.names = [n for n, _ in variants]
        self.models = [m for _, m in variants]
        self.roi = tuple(roi) if roi is not None else None
        self.k = k
        self.smoother = TemporalSmoother(smoothing)
        self.scene: Optional[int] = None
        self.controller: Optional[BudgetController] = None
        self.costs: Optional[list[float]] = None
        if budget_ms is not None:
            rng = np.random.default_rng(seed)
            self.costs = []
            for m in self.models:
                dummy = rng.integers(0, 256, (m.height * 2, m.width * 2, 3), dtype=np.uint8)
                self.costs.append(measure(lambda m=m, d=dummy: m.predict(m.preprocess(d, self.roi)[None], self.k)))
            self.controller = BudgetController(self.names, self.costs, budget_ms, window=window)
        self.current = self.controller.current if self.controller else len(self.models) - 1

    @classmethod
    def from_directory(cls, directory: str | Path, backend: str = "ort-cpu", mode: Optional[str] = None,
                       threads: Optional[int] = None, seed: int = 0, variant: Optional[str] = None,
                       **kw: Any) -> "Runner":
        """A runner over every variant of a model directory (or only ``variant``)."""
        found = list_variants(directory)
        if variant is not None:
            match = [v for v in found if v.name == variant]
            if not match:
                raise ConfigError(f"{directory}: no variant {variant!r} (has {', '.join(v.name for v in found)})")
            found = match
        variants = [(v.name, EdgeModel(v.path, backend=backend, mode=mode, threads=threads, seed=seed))
                    for v in found]
        classes = {tuple(m.class_names) for _, m in variants}
        if len(classes) > 1:
            raise ConfigError(f"{directory}: the variants disagree on the class names")
        return cls(variants, seed=seed, **kw)

    @property
    def model(self) -> EdgeModel:
        return self.models[self.current]

    @property
    def variant(self) -> str:
        return self.names[self.current]

    def step(self, frame: Frame) -> dict[str, Any]:
        """One frame through the current variant: the result record (prediction, latencies, variant)."""
        model, name = self.model, self.variant
        t0 = time.perf_counter()
        x = model.preprocess(frame.image, self.roi)
        t1 = time.perf_counter()
        probs = softmax(model.infer(x[None]))[0]  # preprocessed uint8: finite by construction
        t2 = time.perf_counter()
        if frame.scene != self.scene:
            self.smoother.reset()
            self.scene = frame.scene
        pred = model.decode(self.smoother(probs)[None], self.k)[0]
        t3 = time.perf_counter()
        latency = {"preprocess": (t1 - t0) * 1e3, **model.last_timings, "postprocess": (t3 - t2) * 1e3,
                   "total": (t3 - t0) * 1e3}
        record: dict[str, Any] = {"frame": frame.index, "time": round(frame.timestamp, 4), "source": frame.name,
                                  "prediction": pred.as_dict(),
                                  "truth": frame.label, "variant": name,
                                  "latency_ms": {k: round(v, 4) for k, v in latency.items()}}
        if self.controller is not None:
            switch = self.controller.observe(latency["total"])
            if switch is not None:
                self.current = self.controller.current
                record["switch"] = {"from": switch.old, "to": switch.new, "reason": switch.reason}
        return record

    def close(self) -> None:
        for m in self.models:
            m.close()


def run_stream(source: Source | Capture, runner: Runner, outputs: Sequence[Optional[Output]] = (),
               max_frames: Optional[int] = None, on_record: Optional[Callable[[dict[str, Any]], None]] = None,
               max_consecutive_errors: int = 50) -> dict[str, Any]:
    """Run the loop until the source ends, ``max_frames`` are processed, Ctrl-C or q; return the summary."""
    capture = source if isinstance(source, Capture) else Capture(source)
    outs = [o for o in outputs if o is not None]
    stats = StageStats()
    frames = errors = correct = labelled = consecutive = 0
    per_variant: dict[str, int] = {}
    switches: list[dict[str, Any]] = []
    stop = "end of stream"
    fps = 0.0
    last: Optional[float] = None
    t_start = time.perf_counter()
    capture.start()
    try:
        while max_frames is None or frames < max_frames:
            frame = capture.get()
            if frame is None:
                if capture.stats.failure:
                    stop = "source failed"
                break
            try:
                record = runner.step(frame)
            except EdgepureError as exc:
                errors += 1
                consecutive += 1
                log.warning("frame %d (%s): %s", frame.index, frame.name, exc)
                if consecutive >= max_consecutive_errors:
                    raise EdgepureError(f"{consecutive} frames in a row failed; the last: {exc}") from None
                continue
            consecutive = 0
            now = time.perf_counter()
            if last is not None:
                inst = 1.0 / max(now - last, 1e-9)
                fps = inst if fps == 0 else 0.9 * fps + 0.1 * inst
            last = now
            record["fps"] = round(fps, 2)
            frames += 1
            stats.add(record["latency_ms"])
            per_variant[record["variant"]] = per_variant.get(record["variant"], 0) + 1
            if "switch" in record:
                switches.append({"frame": record["frame"], **record["switch"]})
            if frame.label is not None:
                labelled += 1
                correct += int(record["prediction"]["label"] == frame.label)
            for o in outs:
                o.write(frame, record)
            if on_record is not None:
                on_record(record)
        else:
            stop = "max frames"
    except KeyboardInterrupt:
        stop = "interrupted"
    except StopRequested:
        stop = "stopped from the window"
    finally:
        capture.stop()
        for o in outs:
            o.close()
    wall = time.perf_counter() - t_start
    cs = capture.stats
    return {
        "source": capture.source.uri, "stop": stop, "frames": frames, "captured": cs.captured,
        "dropped": cs.dropped, "bad_frames": cs.bad_frames, "errors": errors, "reopens": cs.reopens,
        "failure": cs.failure, "seconds": round(wall, 3), "fps": round(frames / wall, 2) if wall > 0 else None,
        "accuracy": round(correct / labelled, 6) if labelled else None, "labelled": labelled,
        "latency_ms": stats.summary(), "variants": per_variant, "switches": switches,
        "budget": ({"budget_ms": runner.controller.budget,
                    "startup_ms": dict(zip(runner.names, [round(c, 3) for c in runner.costs or []]))}
                   if runner.controller is not None else None),
    }
