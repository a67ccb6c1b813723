"""The camera loop: a one-frame step (:class:`Runner`) and the loop around it (:func:`run_stream`).

    runner = Runner.from_directory("models/nappure", budget_ms=40)
    summary = run_stream(open_source("csi://0"), runner, [open_output("display://0")])

:class:`Runner.step` takes one :class:`Frame` through preprocess → (purify →) classify on the current
variant, applies temporal smoothing and feeds the latency budget; :func:`run_stream` runs capture in its
own thread, writes every result to the outputs and returns the summary: frames, dropped, errors,
p50/p95/p99 latency per stage, accuracy where the source knows the labels, and the variant switches.
Ctrl-C, SIGTERM (or q in the window) stop it cleanly and the summary is still returned; so does an output
that cannot be written any more (``stop: "output failed"``, the reason in ``output_error``).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from edgepure.runtime.budget import BudgetController, measure
from edgepure.runtime.errors import ConfigError, EdgepureError
from edgepure.runtime.model import EdgeModel, softmax
from edgepure.runtime.preprocess import check_roi
from edgepure.runtime.smoothing import TemporalSmoother
from edgepure.runtime.stream.capture import Capture
from edgepure.runtime.stream.outputs import Output, OutputError, StopRequested
from edgepure.runtime.stream.sources import Frame, Source
from edgepure.runtime.stream.stats import StageStats
from edgepure.runtime.variants import list_variants

__all__ = ["Runner", "Terminated", "run_stream"]

log = logging.getLogger("edgepure.runtime.loop")


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while :func:`run_stream` was running: it stops the loop as Ctrl-C does."""


class _SigtermAsInterrupt:
    """While the loop runs, SIGTERM (``kill``, a service manager stopping it) raises :class:`Terminated` as
    Ctrl-C raises KeyboardInterrupt, so that the video file is finished and the summary returned. Once the
    loop is finishing its outputs (``cleaning``), a SIGTERM is only logged: raising there would cut the
    video file short. :meth:`restore` puts the previous handler back. Only the main thread may set
    handlers; elsewhere this does nothing."""

    def __init__(self) -> None:
        self.cleaning = False
        self.installed = False
        self.previous: Any = None

    def install(self) -> "_SigtermAsInterrupt":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
            self.installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.cleaning:
            log.warning("SIGTERM: finishing the outputs first")
            return
        raise Terminated()

    def restore(self) -> None:
        if self.installed:  # None: the handler was set outside Python; the default is the closest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)


def _close(outputs: Sequence[Output], error: Optional[str]) -> Optional[str]:
    """Close every output; the first that cannot be finished (its last flush on a full disk) becomes the
    run's output error, unless there is one already."""
    for o in outputs:
        try:
            o.close()
        except OutputError as exc:
            error = error or str(exc)
    return error


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
            roi = self.roi
            if roi is not None and all(math.isfinite(v) for v in roi):  # its crop size, moved into the dummy frame
                ox, oy = math.floor(roi[0]), math.floor(roi[1])
                roi = (roi[0] - ox, roi[1] - oy, roi[2] - ox, roi[3] - oy)
            for m in self.models:
                dummy = rng.integers(0, 256, (m.height * 2, m.width * 2, 3), dtype=np.uint8)
                self.costs.append(measure(lambda m=m, d=dummy: m.predict(m.preprocess(d, roi)[None], self.k)))
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


class _Tally:
    """What the loop counts over a run, in constant memory: frames, errors, accuracy, variants, latency, FPS."""

    def __init__(self) -> None:
        self.stats = StageStats()
        self.frames = self.errors = self.correct = self.labelled = self.consecutive = 0
        self.per_variant: dict[str, int] = {}
        self.switches: list[dict[str, Any]] = []
        self.fps = 0.0
        self.last: Optional[float] = None

    def error(self, frame: Frame, exc: EdgepureError, limit: int) -> None:
        self.errors += 1
        self.consecutive += 1
        log.warning("frame %d (%s): %s", frame.index, frame.name, exc)
        if self.consecutive >= limit:
            raise EdgepureError(f"{self.consecutive} frames in a row failed; the last: {exc}") from None

    def add(self, frame: Frame, record: dict[str, Any]) -> None:
        """Count a processed frame and stamp its record with the running FPS."""
        self.consecutive = 0
        now = time.perf_counter()
        if self.last is not None:
            inst = 1.0 / max(now - self.last, 1e-9)
            self.fps = inst if self.fps == 0 else 0.9 * self.fps + 0.1 * inst
        self.last = now
        record["fps"] = round(self.fps, 2)
        self.frames += 1
        self.stats.add(record["latency_ms"])
        self.per_variant[record["variant"]] = self.per_variant.get(record["variant"], 0) + 1
        if "switch" in record:
            self.switches.append({"frame": record["frame"], **record["switch"]})
        if frame.label is not None:
            self.labelled += 1
            self.correct += int(record["prediction"]["label"] == frame.label)

    def summary(self, capture: Capture, runner: Runner, stop: str, output_error: Optional[str],
                wall: float) -> dict[str, Any]:
        cs = capture.stats
        return {
            "source": capture.source.uri, "stop": stop, "frames": self.frames, "captured": cs.captured,
            "dropped": cs.dropped, "bad_frames": cs.bad_frames, "errors": self.errors, "reopens": cs.reopens,
            "failure": cs.failure, "output_error": output_error, "seconds": round(wall, 3),
            "fps": round(self.frames / wall, 2) if wall > 0 else None,
            "accuracy": round(self.correct / self.labelled, 6) if self.labelled else None,
            "labelled": self.labelled, "latency_ms": self.stats.summary(), "variants": self.per_variant,
            "switches": self.switches,
            "budget": ({"budget_ms": runner.controller.budget,
                        "startup_ms": dict(zip(runner.names, [round(c, 3) for c in runner.costs or []]))}
                       if runner.controller is not None else None),
        }


def run_stream(source: Source | Capture, runner: Runner, outputs: Sequence[Optional[Output]] = (),
               max_frames: Optional[int] = None, on_record: Optional[Callable[[dict[str, Any]], None]] = None,
               max_consecutive_errors: int = 50) -> dict[str, Any]:
    """Run the loop until the source ends, ``max_frames`` are processed, Ctrl-C, SIGTERM, q or an output fails;
    return the summary."""
    capture = source if isinstance(source, Capture) else Capture(source)
    outs = [o for o in outputs if o is not None]
    tally = _Tally()
    stop = "end of stream"
    output_error: Optional[str] = None
    t_start = time.perf_counter()
    guard = _SigtermAsInterrupt().install()
    try:
        capture.start()
        size = capture.source.frame_size
        if runner.roi is not None and size is not None:  # every frame has this size: fail now, not per frame
            check_roi(runner.roi, *size)
        while max_frames is None or tally.frames < max_frames:
            frame = capture.get()
            if frame is None:
                if capture.stats.failure:
                    stop = "source failed"
                break
            try:
                record = runner.step(frame)
            except EdgepureError as exc:
                tally.error(frame, exc, max_consecutive_errors)
                continue
            tally.add(frame, record)
            for o in outs:
                o.write(frame, record)
            if on_record is not None:
                on_record(record)
        else:
            stop = "max frames"
    except KeyboardInterrupt as exc:
        stop = "terminated" if isinstance(exc, Terminated) else "interrupted"
    except StopRequested:
        stop = "stopped from the window"
    except OutputError as exc:
        stop, output_error = "output failed", str(exc)
    finally:
        guard.cleaning = True
        try:
            capture.stop()
            output_error = _close(outs, output_error)
        finally:
            guard.restore()
    return tally.summary(capture, runner, stop, output_error, time.perf_counter() - t_start)
