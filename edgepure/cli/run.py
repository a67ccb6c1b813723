"""``edgepure run`` (the camera loop) and ``edgepure bench`` (latency and throughput); torch-free.

Only ``synth://?attack=…`` needs torch (the attacks differentiate the classifier); everything else runs
on a device with numpy, onnxruntime or TensorRT, and OpenCV for video, cameras and the display.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgepure.cli.common import echo_json, user_errors, warnings_as_lines


class BackendName(str, Enum):
    ort_cpu = "ort-cpu"
    ort_cuda = "ort-cuda"
    ort_trt = "ort-trt"
    tensorrt = "tensorrt"


class Mode(str, Enum):
    fused = "fused"
    split = "split"


def _roi(text: Optional[str]) -> Optional[tuple[float, float, float, float]]:
    """``x,y,w,h`` → the inclusive ``(x1, y1, x2, y2)`` the runtime crops."""
    from edgepure.runtime.errors import ConfigError

    if text is None:
        return None
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--roi expects x,y,w,h (four numbers), got {text!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ConfigError(f"--roi needs finite numbers, got {text!r}")
    if w < 1 or h < 1 or x < 0 or y < 0:
        raise ConfigError(f"--roi needs x, y ≥ 0 and w, h ≥ 1 (pixels), got {text!r}")
    return x, y, x + w - 1, y + h - 1


def _attack_transform(uri: str, runner: Any) -> Any:
    """The adversarial transform ``synth://?attack=NAME[&attack_steps=N]`` asks for (needs torch)."""
    from urllib.parse import parse_qsl, urlsplit

    from edgepure.runtime.errors import ConfigError, MissingDependencyError

    params = dict(parse_qsl(urlsplit(uri).query))
    name = params.get("attack")
    if not name or not uri.startswith("synth://"):
        return None
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError("torch", f"synth://?attack={name} (the attacks differentiate the classifier)",
                                     extra="torch") from None
    from edgepure.attacks.frames import frame_attack
    from edgepure.models.registry import list_classifiers, load_classifier

    info = runner.model.manifest.get("classifier") or {}
    cname = info.get("name")
    if cname not in list_classifiers():
        raise ConfigError(f"synth://?attack needs the model's classifier in PyTorch; {cname!r} is not a registered "
                          "classifier (attack frames from another source instead)")
    try:
        steps = int(params.get("attack_steps", 20))
    except ValueError:
        raise ConfigError(f"attack_steps must be an integer, got {params['attack_steps']!r}") from None
    size = int(params.get("size", 32))
    return frame_attack(name, load_classifier(cname), steps=steps, size=size)


def run(
    input: Annotated[str, typer.Argument(help="synth://, file://dir/ (or a folder), a video file, /dev/videoN, "
                                              "csi://N or rtsp://…")],
    output: Annotated[Optional[str], typer.Argument(
        help="display://0, a video file (.mp4/.avi) or a .jsonl results file (default: display://0 "
             "unless --headless).")] = None,
    model: Annotated[Path, typer.Option(help="Model directory from 'edgepure export' (or a variant set).")] = ...,  # type: ignore[assignment]
    backend: Annotated[BackendName, typer.Option(help="Inference backend.")] = BackendName.ort_cpu,
    mode: Annotated[Mode, typer.Option(help="fused: the one pipeline graph; split: purifier, then classifier.")] = Mode.fused,
    roi: Annotated[Optional[str], typer.Option(help="Region of the frame holding the sign: x,y,w,h in pixels.")] = None,
    headless: Annotated[bool, typer.Option(help="No display window.")] = False,
    max_frames: Annotated[Optional[int], typer.Option(help="Stop after this many processed frames.")] = None,
    budget_ms: Annotated[Optional[float], typer.Option(
        help="Latency budget per frame: use the strongest variant that fits, switching as the load changes.")] = None,
    variant: Annotated[Optional[str], typer.Option(help="Run only this variant of a variant set.")] = None,
    smoothing: Annotated[float, typer.Option(help="Temporal smoothing α in (0, 1] (1: none).")] = 1.0,
    topk: Annotated[int, typer.Option(help="Classes reported per frame.")] = 3,
    results: Annotated[Optional[Path], typer.Option(help="Also write one JSON line per frame here (.jsonl).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads (1 to the cores).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the purifier's noise (≥ 0).")] = 0,
    fps: Annotated[float, typer.Option(help="Frame rate written into an output video.")] = 30.0,
    reconnect_timeout: Annotated[float, typer.Option(
        help="Seconds to keep retrying a camera or stream that cannot be opened or has dropped, with capped "
             "exponential backoff (0: never give up).")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="Log only warnings and errors.")] = False,
) -> None:
    """Run purify → classify over a camera, video, folder or the synthetic sign source."""
    from edgepure.runtime.errors import ConfigError, DataError, PrecisionWarning
    from edgepure.runtime.stream import Capture, Runner, open_output, open_source, run_stream
    from edgepure.runtime.stream.outputs import OutputError

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames must be ≥ 1, got {max_frames}")
    _check_run_options(threads, budget_ms, seed, reconnect_timeout, results)
    if not (math.isfinite(fps) and fps > 0):
        raise ConfigError(f"--fps must be a positive frame rate, got {fps}")
    if output is None and not headless:
        output = "display://0"
    if headless and output and output.startswith("display://"):
        raise ConfigError("--headless and a display:// output contradict each other")
    if backend is BackendName.tensorrt:
        _ensure_engines(model, mode.value, variant)
    with warnings_as_lines(PrecisionWarning):
        runner = Runner.from_directory(model, backend=backend.value, mode=mode.value, threads=threads, seed=seed,
                                       variant=variant, roi=_roi(roi), smoothing=smoothing, k=topk,
                                       budget_ms=budget_ms)
    try:
        source = open_source(input, _attack_transform(input, runner))
        outputs = [open_output(output, fps)]
        if results is not None:
            outputs.append(open_output(str(results)))
        summary = run_stream(Capture(source, reconnect_timeout=reconnect_timeout), runner, outputs,
                             max_frames=max_frames)
    finally:
        runner.close()
    if as_json:
        echo_json(summary)
    else:
        typer.echo(_summary_text(summary), err=True)
    if summary["output_error"]:
        raise OutputError(summary["output_error"])
    if summary["failure"]:
        raise typer.Exit(1)
    if summary["frames"] == 0 and summary["stop"] == "end of stream":
        raise DataError(_nothing_read(summary))


def _nothing_read(s: dict[str, Any]) -> str:
    """Why a run that ended by itself processed no frame, for the ``error:`` line after its summary."""
    why = []
    if s["bad_frames"]:
        why.append(f"{s['bad_frames']} unreadable")
    if s["errors"]:
        why.append(f"{s['errors']} could not be processed")
    if not why:
        return f"{s['source']}: no frame was processed: the input holds no frames"
    return f"{s['source']}: no frame was processed ({', '.join(why)}; the warnings above say why)"


def _check_threads(threads: Optional[int]) -> None:
    """More intra-op threads than cores only makes them wait on each other (a thousand stall the run)."""
    from edgepure.runtime.errors import ConfigError

    cores = os.cpu_count()
    if threads is not None and (threads < 1 or (cores is not None and threads > cores)):
        bound = f"between 1 and the {cores} cores of this machine" if cores else "≥ 1"
        raise ConfigError(f"--threads must be {bound}, got {threads}")


def _check_run_options(threads: Optional[int], budget_ms: Optional[float], seed: int, reconnect_timeout: float,
                       results: Optional[Path]) -> None:
    """Refuse what ``edgepure run`` cannot honour before the models load."""
    from edgepure.runtime.errors import ConfigError

    _check_threads(threads)
    if budget_ms is not None and not (math.isfinite(budget_ms) and budget_ms > 0):
        raise ConfigError(f"--budget-ms must be a positive number of milliseconds, got {budget_ms}")
    if seed < 0:
        raise ConfigError(f"--seed must be ≥ 0 (numpy's generators take no negative seed), got {seed}")
    if not (math.isfinite(reconnect_timeout) and reconnect_timeout >= 0):
        raise ConfigError(f"--reconnect-timeout must be a number of seconds ≥ 0 (0: never give up), "
                          f"got {reconnect_timeout}")
    if results is not None and results.is_dir():
        raise ConfigError(f"--results {results}: is a folder (expected a .jsonl file to write)")
    if results is not None and results.suffix.lower() not in (".jsonl", ".ndjson"):
        raise ConfigError(f"--results {results}: expected a .jsonl or .ndjson file")


def _ensure_engines(model: Path, mode: str, variant: Optional[str]) -> None:
    """Build the TensorRT engines this run needs and this device lacks (cached ones load as they are), as
    jetson-inference does on a first run."""
    from edgepure.calibration.build import build_engine
    from edgepure.runtime.manifest import load_manifest
    from edgepure.runtime.variants import list_variants

    log = logging.getLogger("edgepure.run")
    for v in list_variants(model):
        if variant is not None and v.name != variant:
            continue
        models = load_manifest(v.path)["models"]
        roles = (["purifier", "classifier"] if mode == "split" and "purifier" in models
                 else ["pipeline" if "pipeline" in models else "classifier"])
        for role in roles:
            entry = build_engine(v.path, role=role)
            if not entry["cached"]:
                log.info("built the TensorRT engine %s (%.0f s); later runs load it", entry["file"],
                         entry.get("build_seconds", 0))


def _summary_text(s: dict[str, Any]) -> str:
    lines = [f"{s['source']}: {s['frames']} frames in {s['seconds']:.1f} s ({s['fps'] or 0:.1f} FPS), stopped: "
             f"{s['stop']}; dropped {s['dropped']}, bad frames {s['bad_frames']}, errors {s['errors']}, "
             f"reopens {s['reopens']}"]
    if s["accuracy"] is not None:
        lines.append(f"  accuracy {100 * s['accuracy']:.2f} % on {s['labelled']} labelled frames")
    for stage, h in s["latency_ms"].items():
        if h["n"]:
            lines.append(f"  {stage:<12} p50 {h['p50_ms']:8.3f}  p95 {h['p95_ms']:8.3f}  p99 {h['p99_ms']:8.3f} ms")
    if s["budget"]:
        lines.append(f"  budget {s['budget']['budget_ms']} ms; start-up {s['budget']['startup_ms']}; "
                     f"frames per variant {s['variants']}; {len(s['switches'])} switches")
    if s["failure"]:
        lines.append(f"  source failed: {s['failure']}")
    return "\n".join(lines)


def bench(
    model: Annotated[Path, typer.Option(help="Model directory from 'edgepure export' (or a variant set).")],
    backend: Annotated[Optional[list[BackendName]], typer.Option(help="Backend (repeatable).")] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1",
    role: Annotated[Optional[list[str]], typer.Option(help="Graphs to time (default: classifier and pipeline).")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 10,
    iters: Annotated[int, typer.Option(help="Timed calls.")] = 100,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Latency percentiles, throughput and the runtime's overhead over a bare session.run."""
    from edgepure.runtime.bench import bench_directory
    from edgepure.runtime.errors import ConfigError, PrecisionWarning

    _check_threads(threads)
    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--batch expects comma-separated integers, got {batch!r}") from None
    backends = [b.value for b in (backend or [BackendName.ort_cpu])]
    with warnings_as_lines(PrecisionWarning):
        report = bench_directory(model, backends, batches, warmup=warmup, iters=iters, threads=threads, roles=role,
                                 progress=lambda m: typer.echo(f"timing {m} …", err=True))
    if as_json:
        echo_json(report)
        return
    typer.echo(f"{'variant':<10} {'graph':<11} {'backend':<8} {'batch':>5} {'bare p50':>9} {'runtime p50':>12} "
               f"{'p95':>8} {'p99':>8} {'crops/s':>9} {'overhead':>9}")
    for r in report["results"]:
        typer.echo(f"{r['variant']:<10} {r['role']:<11} {r['backend']:<8} {r['batch']:>5} "
                   f"{r['bare']['p50_ms']:>9.3f} {r['runtime_step']['p50_ms']:>12.3f} {r['runtime_step']['p95_ms']:>8.3f} "
                   f"{r['runtime_step']['p99_ms']:>8.3f} {r['throughput_per_s']:>9.1f} {100 * r['overhead_step']:>8.1f}%")
    typer.echo("times in ms; runtime = numpy preprocessing + inference + top-k; overhead vs the bare backend call",
               err=True)


run_cmd = user_errors(run)
bench_cmd = user_errors(bench)
