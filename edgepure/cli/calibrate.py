"""``edgepure calibrate``: the INT8 (Q/DQ) twin of an exported model directory; torch-free."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgepure.cli.common import echo_json, progress_lines, user_errors


class Method(str, Enum):
    entropy = "entropy"
    minmax = "minmax"
    percentile = "percentile"


class Scope(str, Enum):
    classifier = "classifier"
    forward = "forward"
    all = "all"


def _gtsrb_like(path: Path) -> bool:
    """A GTSRB tree or a folder of its official zips (anything else is a plain folder of images)."""
    return (path.name == "GTSRB" or (path / "GTSRB").is_dir() or (path / "Final_Training").is_dir()
            or any(path.glob("*.zip")))


def _images(data: str, n: int, eval_n: int, size: tuple[int, int], seed: int) -> tuple[Any, Any, Any, Any]:
    """Calibration images and held-in evaluation images (disjoint), with labels where the data has them."""
    from edgepure.calibration.data import folder_images, preprocess
    from edgepure.data import dataset_kind, open_dataset

    path = Path(data)
    if data != "synth" and path.is_dir() and dataset_kind(data) == "gtsrb" and not _gtsrb_like(path):
        imgs = folder_images(path, n + eval_n)  # a plain folder of images: no labels
        x = preprocess(imgs, size)
        return x[:n], (x[n:] if len(x) > n else None), None, None
    ds = open_dataset(data, "train", n=n + eval_n, seed=seed, size=size[0])
    x = preprocess(ds.images, size)
    return x[:n], (x[n:] if len(x) > n else None), ds.labels[:n], (ds.labels[n:] if len(x) > n else None)


def calibrate(
    directory: Annotated[Path, typer.Argument(help="An fp32 model directory written by 'edgepure export'.")],
    data: Annotated[str, typer.Option(help="Calibration images: a GTSRB or CIFAR-10 path (its training split), "
                                           "a folder of images, or 'synth'.")] = "synth",
    n: Annotated[int, typer.Option("--n", help="Calibration images.")] = 512,
    eval_n: Annotated[int, typer.Option(help="Further held-in images for the FP32-vs-INT8 report (0: none).")] = 512,
    method: Annotated[Method, typer.Option(help="Activation range estimator.")] = Method.entropy,
    scope: Annotated[Scope, typer.Option(
        help="forward: the classifier and the purifier's forward convolutions (gradient paths and noise stay "
             "FP32); classifier: the classifier only; all: every compute op, gradient paths included.")] = Scope.forward,
    purifier_n: Annotated[int, typer.Option(
        help="Of the --n images, how many calibrate the purifier (the calibrator holds every unrolled step's "
             "activations in memory: 512 NAPPure K=8 images need > 16 GB).")] = 64,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Node name or op type to keep in full precision (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="The INT8 model directory (default: DIRECTORY-int8).")] = None,
    trt_cache: Annotated[bool, typer.Option(help="Also write the legacy TensorRT ≤ 10 calibration cache for the FP32 graph.")] = False,
    trt_version: Annotated[str, typer.Option(help="TensorRT version named in that cache's header.")] = "10.3.0",
    seed: Annotated[int, typer.Option(min=0, help="Seed of the image subset and of the purifier's noise.")] = 0,
    force: Annotated[bool, typer.Option(
        help="Replace --out if it is a model directory edgepure wrote, or empty (never other folders).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new manifest as JSON.")] = False,
) -> None:
    """Calibrate INT8 and write a Q/DQ model directory that TensorRT 10.x/11.x and ONNX Runtime accept."""
    from edgepure.calibration.directory import calibrate_directory
    from edgepure.runtime.errors import ConfigError
    from edgepure.runtime.manifest import load_manifest
    from edgepure.runtime.staging import check_replaceable

    if n < 1 or eval_n < 0:
        raise ConfigError(f"--n must be ≥ 1 and --eval-n ≥ 0, got {n} and {eval_n}")
    manifest = load_manifest(directory)
    target = out or directory.parent / f"{directory.name}-int8"
    check_replaceable(target, force)  # before the images are read
    shape = manifest["models"]["classifier"]["inputs"][0]["shape"]
    x, x_eval, _, y_eval = _images(data, n, eval_n, (int(shape[2]), int(shape[3])), seed)
    new = calibrate_directory(directory, target, x, x_eval, y_eval, method=method.value, scope=scope.value,
                              exclude=exclude or [], purifier_n=purifier_n, data=data, trt_cache=trt_cache,
                              trt_version=trt_version,
                              seed=seed, overwrite=force, progress=progress_lines(as_json))
    if as_json:
        echo_json(new)
        return
    cal = new["calibration"]
    typer.echo(f"{target}: INT8 ({cal['method']}, scope {cal['scope']}) from {cal['n']} images of {data}"
               + (f" ({cal['purifier_n']} of them for the purifier)" if "purifier_n" in cal else ""))
    for role, m in new["models"].items():
        q = m.get("quantization") or {}
        typer.echo(f"  {role:<10} {m['file']:<16} {m['precision']:<5} {m['nodes']:>6} nodes {m['bytes'] / 1e6:6.2f} MB"
                   + (f"  {q['quantize_nodes']} Q/DQ pairs" if "quantize_nodes" in q else ""))
    rep = cal.get("report")
    if rep:
        line = f"  held-in {rep['graph']} ({rep['n']} images): top-1 agreement FP32/INT8 {rep['top1_agreement']:.4f}"
        if "accuracy_fp32" in rep:
            line += f", accuracy {100 * rep['accuracy_fp32']:.2f} % → {100 * rep['accuracy_int8']:.2f} %"
        typer.echo(line + " (exact Q/DQ arithmetic, as TensorRT computes it)")
        cpu = rep.get("onnxruntime_cpu") or {}
        if cpu:
            line = f"  on this CPU's ONNX Runtime INT8 kernels: top-1 agreement {cpu['top1_agreement']:.4f}"
            if "accuracy_int8" in cpu:
                line += f", accuracy {100 * cpu['accuracy_int8']:.2f} %"
            typer.echo(line)
            if cpu.get("int8_saturates"):
                typer.echo(f"warning: this CPU ({cpu.get('cpu') or 'x86'}) has AVX2 but no VNNI, where ONNX Runtime's "
                           "INT8 kernels saturate u8×s8 products; run the FP32 directory on it, the INT8 one on "
                           "TensorRT, ARM or a VNNI CPU", err=True)
    if "trt_calibration_cache" in cal:
        c = cal["trt_calibration_cache"]
        typer.echo(f"  TensorRT calibration cache: {c['file']} ({c['tensors']} tensors) for {c['for']}")


calibrate_cmd = user_errors(calibrate)
