"""GTSRB in the official distribution layout, from a directory or straight from the official zips.

Training: ``GTSRB/Final_Training/Images/000NN/TTTTT_FFFFF.ppm`` with ``GT-000NN.csv`` per class.
Test: ``GTSRB/Final_Test/Images/NNNNN.ppm`` with ``GT-final_test.csv`` in ``Final_Test/`` or in
``Final_Test/Images/`` (the labelled CSV comes in its own official zip, ``GTSRB_Final_Test_GT.zip``).

``PATH`` may be the folder that contains ``GTSRB/``, the ``GTSRB/`` folder itself, an official zip, or a
folder of official zips. The validation split is by physical track (the ``TTTTT`` prefix), never by image.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepure.data.base import ImageSet
from edgepure.data.sources import FileTree, MergedTree, ZipTree, archives_in, open_tree
from edgepure.runtime.classes import GTSRB_CLASSES
from edgepure.runtime.errors import DataError, ImageDecodeError
from edgepure.runtime.imageio import decode_image
from edgepure.runtime.preprocess import crop_roi, resize, scale_roi

__all__ = ["GTSRBSample", "GTSRB_SPLITS", "GTSRBLayout", "load_gtsrb", "open_gtsrb", "track_split"]

NUM_CLASSES = len(GTSRB_CLASSES)
GTSRB_SPLITS = ("train", "val", "trainval", "test")
_TRAIN_DIR = "Final_Training/Images/"
_TEST_DIR = "Final_Test/Images/"
_CSV_FIELDS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
_TRACK_RE = re.compile(r"^(\d+)_(\d+)\.ppm$", re.IGNORECASE)


@dataclass(frozen=True)
class GTSRBSample:
    """One annotated image: where it is, its label, its physical track (None for test images) and ROI."""

    name: str
    label: int
    track: int | None
    width: int
    height: int
    roi: tuple[int, int, int, int]


class GTSRBLayout:
    """A located GTSRB tree: lists the annotated samples of the training and test parts and reads them."""

    def __init__(self, tree: FileTree, prefix: str, source: str) -> None:
        self.tree = tree
        self.prefix = prefix
        self.source = source
        names = tree.names()
        self._names = set(names)
        self.has_train = any(n.startswith(prefix + _TRAIN_DIR) for n in names)
        self.has_test = any(n.startswith(prefix + _TEST_DIR) for n in names)

    # -- annotations -------------------------------------------------------------------------
    def _parse_csv(self, name: str) -> list[dict[str, str]]:
        text = self.tree.read(name).decode("utf-8-sig", errors="replace")
        reader = csv.DictReader(io.StringIO(text), delimiter=";")
        fields = tuple(reader.fieldnames or ())
        missing = [f for f in _CSV_FIELDS if f not in fields]
        if missing:
            raise DataError(
                f"{self.tree.where(name)}: expected the GTSRB columns {';'.join(_CSV_FIELDS)}, "
                f"missing {', '.join(missing)} (found {';'.join(fields) or 'no header'})"
            )
        return list(reader)

    def _sample(self, row: dict[str, str], folder: str, csv_name: str, line: int, track: int | None) -> GTSRBSample:
        where = f"{self.tree.where(csv_name)} line {line}"
        try:
            label = int(row["ClassId"])
            width, height = int(row["Width"]), int(row["Height"])
            roi = (int(row["Roi.X1"]), int(row["Roi.Y1"]), int(row["Roi.X2"]), int(row["Roi.Y2"]))
        except (TypeError, ValueError):
            raise DataError(f"{where}: expected integer fields, found {row}") from None
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"{where} ({row['Filename']}): label {label} out of range (expected 0..{NUM_CLASSES - 1})")
        name = folder + row["Filename"]
        if name not in self._names:
            raise DataError(f"{where}: lists {row['Filename']}, which is not in {self.tree.where(folder)}")
        return GTSRBSample(name, label, track, width, height, roi)

    def train_samples(self) -> list[GTSRBSample]:
        if not self.has_train:
            raise DataError(f"{self.source}: no training part (expected {self.prefix}{_TRAIN_DIR}000NN/)")
        base = self.prefix + _TRAIN_DIR
        class_dirs = sorted({n[len(base) :].split("/", 1)[0] for n in self._names if n.startswith(base) and "/" in n[len(base) :]})
        samples: list[GTSRBSample] = []
        for d in class_dirs:
            if not (d.isdigit() and len(d) == 5):
                raise DataError(f"{self.tree.where(base + d)}: expected class folders named 000NN")
            folder_label = int(d)
            csv_name = f"{base}{d}/GT-{d}.csv"
            if csv_name not in self._names:
                raise DataError(f"{self.tree.where(base + d)}: missing its annotation file GT-{d}.csv")
            for line, row in enumerate(self._parse_csv(csv_name), start=2):
                m = _TRACK_RE.match(row["Filename"] or "")
                if m is None:
                    raise DataError(
                        f"{self.tree.where(csv_name)} line {line}: file name {row['Filename']!r} "
                        "is not of the form TTTTT_FFFFF.ppm"
                    )
                s = self._sample(row, f"{base}{d}/", csv_name, line, int(m.group(1)))
                if s.label != folder_label:
                    raise DataError(
                        f"{self.tree.where(csv_name)} line {line}: ClassId {s.label} in the folder of class {folder_label}"
                    )
                samples.append(s)
        if not samples:
            raise DataError(f"{self.source}: the training part holds no annotated images")
        return samples

    def test_samples(self) -> list[GTSRBSample]:
        if not self.has_test:
            raise DataError(f"{self.source}: no test part (expected {self.prefix}{_TEST_DIR}*.ppm)")
        candidates = [
            self.prefix + "Final_Test/GT-final_test.csv",
            self.prefix + _TEST_DIR + "GT-final_test.csv",
            "GT-final_test.csv",
        ]
        csv_name = next((c for c in candidates if c in self._names), None)
        if csv_name is None:
            hint = ""
            if self.prefix + _TEST_DIR + "GT-final_test.test.csv" in self._names:
                hint = " (GT-final_test.test.csv has no labels: add GTSRB_Final_Test_GT.zip)"
            raise DataError(
                f"{self.source}: test labels GT-final_test.csv not found in Final_Test/ or Final_Test/Images/{hint}"
            )
        rows = self._parse_csv(csv_name)
        samples = [self._sample(r, self.prefix + _TEST_DIR, csv_name, i, None) for i, r in enumerate(rows, start=2)]
        if not samples:
            raise DataError(f"{self.tree.where(csv_name)}: no annotated test images")
        return samples

    # -- pixels --------------------------------------------------------------------------------
    def read(self, sample: GTSRBSample, size: int | None = 32, roi: bool = False) -> np.ndarray:
        """Decode one image to ``H×W×3`` uint8, optionally cropped to its ROI and resized to ``size×size``."""
        where = self.tree.where(sample.name)
        img = decode_image(self.tree.read(sample.name), where)
        if roi:
            h, w = img.shape[:2]
            if sample.width <= 0 or sample.height <= 0:
                raise ImageDecodeError(f"{where}: ROI crop needs the original size, found {sample.width}x{sample.height}")
            img = crop_roi(img, scale_roi(sample.roi, (sample.width, sample.height), (w, h)))
        if size is not None:
            img = resize(img, (size, size))
        return img


def open_gtsrb(path: str | Path) -> GTSRBLayout:
    """Locate GTSRB under ``path``: a folder containing ``GTSRB/``, ``GTSRB/`` itself, a zip, or a folder of zips."""
    p = Path(path).expanduser()
    tree = open_tree(p)
    if p.is_dir():
        zips = archives_in(p)
        if zips and not any(n.startswith(("GTSRB/", "Final_Training/", "Final_Test/")) for n in tree.names()):
            tree = MergedTree([ZipTree(z) if z.name.lower().endswith(".zip") else open_tree(z) for z in zips], str(p))
    names = tree.names()
    for prefix in ("GTSRB/", ""):
        if any(n.startswith(prefix + _TRAIN_DIR) or n.startswith(prefix + _TEST_DIR) for n in names):
            return GTSRBLayout(tree, prefix, str(p))
    raise DataError(
        f"{p}: not a GTSRB tree (expected GTSRB/Final_Training/Images/000NN/ or GTSRB/Final_Test/Images/, "
        f"as a folder or an official zip)"
    )


def track_split(samples: list[GTSRBSample], val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split training samples by physical track: per class, a seeded ``val_fraction`` of the tracks (≥ 1 track
    when the class has two or more) goes to validation. Returns sorted (train, val) index arrays."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_class: dict[int, dict[int, list[int]]] = {}
    for i, s in enumerate(samples):
        if s.track is None:
            raise DataError(f"{s.name}: has no track id; only training images can be split by track")
        by_class.setdefault(s.label, {}).setdefault(s.track, []).append(i)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class):
        tracks = sorted(by_class[label])
        order = rng.permutation(len(tracks))
        n_val = min(len(tracks) - 1, max(1, math.ceil(val_fraction * len(tracks)))) if len(tracks) > 1 else 0
        val_tracks = {tracks[j] for j in order[:n_val]}
        for t in tracks:
            (val if t in val_tracks else train).extend(by_class[label][t])
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


def load_gtsrb(
    path: str | Path,
    split: str = "train",
    size: int = 32,
    roi: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> ImageSet:
    """Load a GTSRB split into memory. ``split``: train / val (by track) / trainval (all training) / test."""
    if split not in GTSRB_SPLITS:
        raise DataError(f"unknown GTSRB split {split!r} (expected one of {', '.join(GTSRB_SPLITS)})")
    layout = open_gtsrb(path)
    if split == "test":
        samples = layout.test_samples()
    else:
        samples = layout.train_samples()
        if split != "trainval":
            tr, va = track_split(samples, val_fraction, seed)
            samples = [samples[i] for i in (tr if split == "train" else va)]
    images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    iterator = enumerate(samples)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(samples), desc=f"GTSRB {split}", unit="img", leave=False)
    for i, s in iterator:
        images[i] = layout.read(s, size=size, roi=roi)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    meta = {"split": split, "size": size, "roi": roi, "val_fraction": val_fraction, "split_seed": seed}
    meta["tracks"] = [s.track for s in samples]
    return ImageSet(images, labels, [s.name for s in samples], GTSRB_CLASSES, source=layout.source, meta=meta)
