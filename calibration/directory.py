"""``edgepure calibrate``: an INT8 model directory from an exported one.

The result is a new model directory (the source stays untouched) with the quantized graphs, the FP32
graphs that stay FP32 copied over, ``precision: "int8"`` and a ``calibration`` record in its manifest
(data, image count, method, scope, exclusions, Q/DQ check, FP32-vs-INT8 agreement and accuracy on held-in
images, in exact Q/DQ arithmetic and on this CPU's ONNX Runtime INT8 kernels), ready for ``edgepure run``
(ONNX Runtime runs Q/DQ graphs on the CPU) and ``edgepure build``.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from edgepure.calibration.data import FeedReader
from edgepure.calibration.quantize import METHODS, SCOPE_OPS, SCOPES, check_qdq, quantize_model
from edgepure.runtime.errors import ConfigError, ModelError
from edgepure.runtime.manifest import MANIFEST_NAME, load_manifest, sha256_file
from edgepure.runtime.staging import check_replaceable, replace_dir, staging_dir

__all__ = ["calibrate_directory"]


def _run(path: Path, images: np.ndarray, inputs: Sequence[dict[str, Any]], seed: int,
         fuse_quantized: bool = True) -> np.ndarray:
    from edgepure.runtime.backends import ort_session

    sess = ort_session(path, threads=None, fuse_quantized=fuse_quantized)
    reader = FeedReader(images, inputs, seed)
    return np.concatenate([sess.run(None, feed)[0] for feed in reader.feeds()])


def _smoke(path: Path, inputs: Sequence[dict[str, Any]], images: np.ndarray) -> None:
    """The quantized graph must run in ONNX Runtime: one batch, finite outputs (else nothing is written)."""
    from edgepure.runtime.backends import ort_session

    feed = next(FeedReader(images, inputs).feeds())
    try:
        out = ort_session(path).run(None, feed)[0]
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/RuntimeException types
        raise ModelError(f"{path.name}: the quantized graph does not run in ONNX Runtime ({str(exc)[:300]}); "
                         "choose a smaller --scope or --exclude the op types involved") from None
    if not np.isfinite(out).all():
        raise ModelError(f"{path.name}: the quantized graph produces NaN or infinity")


def _entry(old: dict[str, Any], path: Path, quantize: Optional[dict[str, Any]],
           images: Optional[np.ndarray] = None) -> dict[str, Any]:
    import onnx

    if quantize and images is not None:
        _smoke(path, old["inputs"], images)

    model = onnx.load(str(path))
    entry = {**old, "sha256": sha256_file(path), "bytes": path.stat().st_size, "nodes": len(model.graph.node)}
    problems = check_qdq(model)
    if problems:
        raise ModelError(f"{path.name}: the quantized graph breaks TensorRT's Q/DQ rules: {problems[:3]}")
    count = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    entry["precision"] = "int8" if count else "fp32"
    if quantize:
        entry["quantization"] = {**quantize, "quantize_nodes": count}
    for stale in ("parity", "lint"):
        entry.pop(stale, None)
    return entry


def calibrate_directory(directory: str | Path, out: str | Path, images: np.ndarray,
                        eval_images: Optional[np.ndarray] = None, eval_labels: Optional[np.ndarray] = None,
                        method: str = "entropy", scope: str = "forward", exclude: Sequence[str] = (),
                        purifier_n: int = 64,
                        data: str = "", trt_cache: bool = False, trt_version: str = "10.3.0", seed: int = 0,
                        overwrite: bool = False, progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Write the INT8 twin of the model directory ``directory`` to ``out``; return its manifest.

    ``images``: calibration images, float32 ``N×3×H×W`` in [0, 1] (see :func:`calibration.data.preprocess`);
    ``eval_images``/``eval_labels``: held-in images for the FP32-vs-INT8 report (disjoint from ``images``);
    ``purifier_n``: how many of ``images`` calibrate the purifier (scopes ``forward`` and ``all``): ONNX
    Runtime's calibrator keeps every activation of every unrolled step of every image in memory. ``progress`` is
    told which model and which stage the calibration is at (one line each)."""
    say = progress or (lambda m: None)
    _check_settings(method, scope, purifier_n)
    src = Path(directory)
    manifest = load_manifest(src)
    if manifest.get("precision") != "fp32":
        raise ConfigError(f"{src}: calibrate an fp32 model directory (this one is {manifest.get('precision')})")
    out = Path(out)
    if out.resolve() == src.resolve():
        raise ConfigError("--out must be a new directory: the FP32 model directory stays as it is")
    check_replaceable(out, overwrite)
    models = manifest["models"]
    if "classifier" not in models:
        raise ModelError(f"{src}: no classifier graph to calibrate")
    tmp = staging_dir(out)
    try:
        new_models: dict[str, Any] = {}
        record: dict[str, Any] = {"data": data, "n": int(len(images)), "method": method, "scope": scope,
                                  "exclude": list(exclude), "seed": seed, "per_channel_axis": 0, "symmetric": True}
        purifier = models.get("purifier")
        cls_images = images
        if purifier is not None:  # the classifier sees purified images: calibrate it on those
            say(f"purifier: purifying the {len(images)} calibration images (FP32)")
            cls_images = _run(src / purifier["file"], images, purifier["inputs"], seed)
        work = tmp / ".work"
        work.mkdir()
        q_cls = tmp / models["classifier"]["file"]
        say(f"classifier: calibrating ({method}) on {len(cls_images)} images")
        info = quantize_model(src / models["classifier"]["file"], q_cls,
                              FeedReader(cls_images, models["classifier"]["inputs"], seed), method, exclude=exclude)
        new_models["classifier"] = _entry(models["classifier"], q_cls, info, cls_images)
        if purifier is not None:
            q_pur = tmp / purifier["file"]
            if scope == "classifier":
                shutil.copyfile(src / purifier["file"], q_pur)
                pinfo = None
            else:
                record["purifier_n"] = int(min(purifier_n, len(images)))
                say(f"purifier: calibrating ({method}, scope {scope}) on {record['purifier_n']} images")
                pinfo = quantize_model(src / purifier["file"], q_pur,
                                       FeedReader(images[:purifier_n], purifier["inputs"], seed), method,
                                       op_types=SCOPE_OPS[scope], exclude=exclude)
            new_models["purifier"] = _entry(purifier, q_pur, pinfo, images)
            if "pipeline" in models:
                new_models["pipeline"] = _merged_pipeline(models["pipeline"], q_pur, q_cls, tmp, images)
        if trt_cache:
            say("TensorRT calibration cache: activation ranges of the FP32 graph")
            record["trt_calibration_cache"] = _trt_cache(src, tmp, work, models, images, method, trt_version, seed)
        shutil.rmtree(work)
        if eval_images is not None:
            say(f"report: FP32 against INT8 on {len(eval_images)} held-in images")
            record["report"] = _report(src, tmp, models, new_models, eval_images, eval_labels, seed)
        new = {**manifest, "precision": "int8", "models": new_models, "calibration": record,
               "derived_from": {"directory": str(src), "manifest_sha256": sha256_file(src / MANIFEST_NAME)},
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        new.pop("engines", None)
        (tmp / MANIFEST_NAME).write_text(json.dumps(new, indent=2) + "\n")
        replace_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return new


def _check_settings(method: str, scope: str, purifier_n: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if scope not in SCOPES:
        raise ConfigError(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if purifier_n < 1:
        raise ConfigError(f"purifier_n must be ≥ 1, got {purifier_n}")


def _merged_pipeline(entry: dict[str, Any], q_pur: Path, q_cls: Path, tmp: Path, images: np.ndarray) -> dict[str, Any]:
    """The INT8 pipeline: the quantized purifier graph merged in front of the quantized classifier."""
    import onnx

    from edgepure.calibration.merge import merge_graphs

    q_pipe = tmp / entry["file"]
    onnx.save(merge_graphs(onnx.load(str(q_pur)), onnx.load(str(q_cls))), str(q_pipe))
    return _entry(entry, q_pipe, {"from": ["purifier", "classifier"]}, images)


def _trt_cache(src: Path, tmp: Path, work: Path, models: dict[str, Any], images: np.ndarray, method: str,
               trt_version: str, seed: int) -> dict[str, Any]:
    """TensorRT's implicit-INT8 calibration cache of the FP32 graph (with that graph beside it); its record."""
    from onnxruntime.quantization import CalibrationMethod

    from edgepure.calibration.trtcache import ort_ranges, write_calibration_cache

    role = "pipeline" if "pipeline" in models else "classifier"
    ranges = ort_ranges(src / models[role]["file"], FeedReader(images, models[role]["inputs"], seed),
                        CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.MinMax, work)
    count = write_calibration_cache(ranges, tmp / f"{role}.calibration.cache", trt_version)
    shutil.copyfile(src / models[role]["file"], tmp / f"{role}.fp32.onnx")
    return {"file": f"{role}.calibration.cache", "for": models[role]["file"], "tensors": count,
            "tensorrt": trt_version}


def _report(src: Path, tmp: Path, models: dict[str, Any], new_models: dict[str, Any], images: np.ndarray,
            labels: Optional[np.ndarray], seed: int) -> dict[str, Any]:
    """FP32 vs INT8 on held-in images: top-1 agreement, accuracy and the largest logit difference.

    The headline numbers run the Q/DQ graph unfused (INT8 rounding and clipping computed exactly, as TensorRT
    does with its 32-bit accumulation): they measure the calibration, on any CPU. ``onnxruntime_cpu`` repeats
    them with ONNX Runtime's fused INT8 kernels on this CPU, which saturate on x86 CPUs without VNNI
    (``int8_saturates``)."""
    from edgepure.runtime.machine import describe_machine, int8_saturates

    role = "pipeline" if "pipeline" in models else "classifier"
    inputs = models[role]["inputs"]
    a = _run(src / models[role]["file"], images, inputs, seed)
    exact = _run(tmp / new_models[role]["file"], images, inputs, seed, fuse_quantized=False)
    fused = _run(tmp / new_models[role]["file"], images, inputs, seed)
    y = None if labels is None else np.asarray(labels[: len(a)])

    def compare(b: np.ndarray) -> dict[str, Any]:
        rep: dict[str, Any] = {"top1_agreement": round(float(np.mean(a.argmax(1) == b.argmax(1))), 6),
                               "max_abs_logit_diff": round(float(np.abs(a - b).max()), 5)}
        if y is not None:
            rep["accuracy_int8"] = round(float(np.mean(b.argmax(1) == y)), 6)
        return rep

    rep: dict[str, Any] = {"graph": role, "n": len(a), "arithmetic": "qdq-exact", **compare(exact)}
    if y is not None:
        rep["accuracy_fp32"] = round(float(np.mean(a.argmax(1) == y)), 6)
    cpu = describe_machine().get("cpu", "")
    rep["onnxruntime_cpu"] = {**compare(fused), "cpu": cpu, "int8_saturates": int8_saturates()}
    return rep
