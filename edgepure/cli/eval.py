"""``edgepure eval``: accuracy of a model on a data split."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from edgepure.cli.common import echo_json, user_errors

app = typer.Typer(help="Evaluate models.", no_args_is_help=True)


class Split(str, Enum):
    train = "train"
    val = "val"
    trainval = "trainval"
    test = "test"


@app.command("clean")
@user_errors
def clean(
    data: Annotated[str, typer.Option("--data", help="GTSRB folder/zip, CIFAR-10 folder/archive, or 'synth'.")],
    split: Annotated[Split, typer.Option(help="train / val (held-out tracks) / trainval / test (Final_Test).")] = Split.val,
    n: Annotated[Optional[int], typer.Option("--n", help="Evaluate a seeded subset of N images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subset (and of synthetic renders).")] = 0,
    model: Annotated[
        Optional[str], typer.Option(help="Registered name with shipped weights, or a checkpoint (.safetensors or run folder).")
    ] = None,
    roi: Annotated[bool, typer.Option(help="Crop GTSRB images to their annotated ROI first.")] = False,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Top-1 accuracy of a classifier on clean images."""
    import time

    from edgepure.data import open_dataset
    from edgepure.evaluation.clean import evaluate_clean
    from edgepure.models.loading import resolve_classifier

    net = resolve_classifier(model)
    size = int(getattr(net, "input_size", 32))
    ds = open_dataset(data, split.value, n=n, seed=seed, size=size, roi=roi, progress=True)
    t0 = time.perf_counter()
    metrics = evaluate_clean(net, ds, batch_size=batch_size, progress=True)
    elapsed = time.perf_counter() - t0
    n_classes = int(getattr(net, "num_classes", 0))
    if n_classes and len(ds.class_names) != n_classes:
        from edgepure.runtime.errors import ModelError

        raise ModelError(f"the model has {n_classes} classes, the data set {len(ds.class_names)}")
    result = {
        "model": model or "signnet_s", "data": data, "split": split.value, "n": metrics["n"],
        "accuracy": metrics["accuracy"], "top5_accuracy": metrics["top5_accuracy"], "errors": metrics["errors"],
        "seconds": round(elapsed, 3), "images_per_second": round(metrics["n"] / elapsed, 1) if elapsed > 0 else None,
    }
    if as_json:
        result["per_class_accuracy"] = metrics["per_class_accuracy"]
        echo_json(result)
    else:
        typer.echo(f"{result['model']} on {data} [{split.value}]: top-1 {result['accuracy']:.4f} "
                   f"top-5 {result['top5_accuracy']:.4f} (n={result['n']}, {result['errors']} errors)")
