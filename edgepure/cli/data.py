"""``edgepure data``: look at a data set, render synthetic signs."""

from __future__ import annotations

import csv
import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgepure.cli.common import echo_json, user_errors

app = typer.Typer(help="Inspect data sets and render synthetic signs.", no_args_is_help=True)


class ImageFormat(str, Enum):
    ppm = "ppm"
    png = "png"


@app.command("info")
@user_errors
def info(
    data: Annotated[str, typer.Option("--data", help="GTSRB folder/zip, CIFAR-10 folder/archive, or 'synth'.")],
    val_fraction: Annotated[float, typer.Option(help="Fraction of tracks held out for validation.")] = 0.1,
    split_seed: Annotated[int, typer.Option(min=0, help="Seed of the track split.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Describe a data set: its kind, splits, sizes and (for GTSRB) the track split."""
    from edgepure.data import dataset_kind

    kind = dataset_kind(data)
    out: dict[str, object] = {"data": data, "kind": kind}
    if kind == "gtsrb":
        from edgepure.data.gtsrb import open_gtsrb, track_split

        layout = open_gtsrb(data)
        out["source"] = layout.source
        if layout.has_train:
            samples = layout.train_samples()
            tr, va = track_split(samples, val_fraction, split_seed)
            tracks = {(s.label, s.track) for s in samples}
            val_tracks = {(samples[i].label, samples[i].track) for i in va}
            out.update(
                trainval=len(samples), train=int(len(tr)), val=int(len(va)), tracks=len(tracks),
                val_tracks=len(val_tracks), classes=len({s.label for s in samples}),
            )
        if layout.has_test:
            out["test"] = len(layout.test_samples())
    elif kind == "cifar10":
        from edgepure.data.cifar import load_cifar10

        for split in ("train", "test"):
            try:
                out[split] = len(load_cifar10(data, split))
            except Exception as exc:  # noqa: BLE001 - report which split is unreadable, keep going
                from edgepure.runtime.errors import EdgepureError

                if not isinstance(exc, EdgepureError):
                    raise
                out[split] = f"unavailable: {exc}"
    else:
        out["note"] = "procedurally rendered signs, any number of images, deterministic by seed"
    if as_json:
        echo_json(out)
    else:
        for k, v in out.items():
            typer.echo(f"{k:>12}: {v}")


@app.command("render")
@user_errors
def render(
    out: Annotated[Path, typer.Argument(help="Folder to write the images and labels.csv into (created).")],
    n: Annotated[int, typer.Option("--n", help="Number of images (class-balanced).")] = 430,
    seed: Annotated[int, typer.Option(min=0, help="Seed; the same seed gives the same images.")] = 0,
    size: Annotated[int, typer.Option(min=8, max=1024, help="Image size in pixels.")] = 32,
    fmt: Annotated[ImageFormat, typer.Option("--format", help="Image file format.")] = ImageFormat.ppm,
) -> None:
    """Render synthetic traffic signs of all 43 GTSRB classes into a folder of images with labels.csv."""
    from edgepure.runtime.classes import GTSRB_CLASSES
    from edgepure.runtime.errors import ConfigError, MissingDependencyError
    from edgepure.runtime.imageio import write_ppm
    from edgepure.runtime.synth import render_dataset

    if n <= 0:
        raise ConfigError(f"--n must be positive, got {n}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if fmt is ImageFormat.png:
        try:
            from PIL import Image
        except ImportError:
            raise MissingDependencyError("pillow", "writing PNG files", extra="camera") from None
    images, labels = render_dataset(n, seed=seed, size=size)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, label) in enumerate(zip(images, labels)):
        name = f"{i:05d}_{int(label):02d}.{fmt.value}"
        if fmt is ImageFormat.ppm:
            write_ppm(out / name, img)
        else:
            Image.fromarray(img).save(out / name)
        rows.append((name, int(label), GTSRB_CLASSES[int(label)]))
    tmp = out / "labels.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "class_id", "class_name"])
        w.writerows(rows)
    os.replace(tmp, out / "labels.csv")
    typer.echo(f"wrote {n} images and labels.csv to {out}")
