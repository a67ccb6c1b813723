"""Data sets: GTSRB (official layout, directory or zip), CIFAR-10 (python batches) and synthetic signs.

``open_dataset(spec, split)`` is what every ``--data`` option goes through: ``spec`` is ``synth`` (or
``synth://?seed=N``) for the procedurally rendered signs, or a path to GTSRB or CIFAR-10.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np

from edgepure.data.base import ImageSet
from edgepure.runtime.errors import DataError

__all__ = ["ImageSet", "dataset_kind", "open_dataset"]

SYNTH_SPLIT_SEEDS = {"train": 1_000_003, "val": 2_000_003, "trainval": 1_000_003, "test": 3_000_017}


def dataset_kind(spec: str) -> str:
    """'synth', 'cifar10' or 'gtsrb' for a ``--data`` value."""
    if spec == "synth" or spec.startswith("synth://"):
        return "synth"
    p = Path(spec).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or directory (expected a GTSRB or CIFAR-10 folder/archive, or 'synth')")
    low = p.name.lower()
    if "cifar" in low or (p.is_dir() and ((p / "cifar-10-batches-py").is_dir() or (p / "data_batch_1").is_file()
                                           or (p / "test_batch").is_file())):
        return "cifar10"
    return "gtsrb"


def _synth(spec: str, split: str, n: int | None, seed: int, size: int) -> ImageSet:
    from edgepure.runtime.synth import render_dataset

    q = parse_qs(urlparse(spec).query) if spec.startswith("synth://") else {}
    base = int(q["seed"][0]) if "seed" in q else seed
    count = n if n is not None else int(q.get("n", ["4300"])[0])
    images, labels = render_dataset(count, seed=base + SYNTH_SPLIT_SEEDS.get(split, 0), size=size)
    from edgepure.runtime.classes import GTSRB_CLASSES

    names = [f"synth[{split}:{base}:{i}]" for i in range(count)]
    return ImageSet(images, labels, names, GTSRB_CLASSES, source="synth", meta={"split": split, "seed": base})


def open_dataset(
    spec: str,
    split: str,
    n: int | None = None,
    seed: int = 0,
    size: int = 32,
    roi: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    progress: bool = False,
) -> ImageSet:
    """Load ``split`` of the data set ``spec``; ``n`` draws a subset seeded by ``seed`` (all images when None).

    The train/val split depends on ``split_seed`` and ``val_fraction`` only, so that a different ``seed``
    never moves training images into validation."""
    kind = dataset_kind(spec)
    if kind == "synth":
        return _synth(spec, split, n, seed, size)
    if kind == "cifar10":
        from edgepure.data.cifar import load_cifar10

        if split in ("train", "val"):
            full = load_cifar10(spec, "train")
            order = np.random.default_rng(split_seed).permutation(len(full))
            n_val = int(round(val_fraction * len(full)))
            data = full.take(np.sort(order[:n_val] if split == "val" else order[n_val:]))
        elif split in ("trainval", "test"):
            data = load_cifar10(spec, "train" if split == "trainval" else "test")
        else:
            raise DataError(f"unknown split {split!r} (expected train, val, trainval or test)")
        if size != 32:
            raise DataError(f"CIFAR-10 images are 32×32, asked for {size}×{size}")
        return data.sample(n, seed)
    from edgepure.data.gtsrb import load_gtsrb

    data = load_gtsrb(spec, split, size=size, roi=roi, val_fraction=val_fraction, seed=split_seed, progress=progress)
    return data.sample(n, seed)
