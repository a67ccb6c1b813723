"""Calibration data: images from a folder, the GTSRB reader or the synthetic source, preprocessed as the
manifest says, fed to ONNX Runtime's calibrator in the graph's static batch (with seeded noise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from edgepure.runtime.errors import ConfigError, DataError
from edgepure.runtime.preprocess import resize

__all__ = ["FeedReader", "folder_images", "preprocess", "synth_images"]


def preprocess(images: Sequence[np.ndarray] | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H×W×3 uint8 RGB images (any sizes) → ``N×3×h×w`` float32 in [0, 1], as the runtime does."""
    out = np.empty((len(images), 3, *size), dtype=np.float32)
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise DataError(f"calibration image {i}: expected H×W×3 uint8 RGB, got {img.dtype} {list(img.shape)}")
        r = img if img.shape[:2] == size else resize(img, size)
        out[i] = r.transpose(2, 0, 1) / np.float32(255.0)
    return out


def folder_images(path: str | Path, n: Optional[int] = None) -> list[np.ndarray]:
    """The images of a folder (recursively, in name order), at most ``n``."""
    from edgepure.runtime.imageio import read_image
    from edgepure.runtime.stream.sources import IMAGE_EXTENSIONS

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder of calibration images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    out = []
    for p in files[:n]:
        img = read_image(p)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(img[..., :3]))
    return out


def synth_images(n: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered signs and their labels."""
    from edgepure.runtime.synth import render_dataset

    return render_dataset(n, seed=seed, size=size)


class FeedReader:
    """ONNX Runtime ``CalibrationDataReader``: ``get_next() -> {input: batch, [noise]} | None``."""

    def __init__(self, images: np.ndarray, inputs: Sequence[dict[str, Any]], seed: int = 0) -> None:
        image = inputs[0]
        self.name = image["name"]
        self.batch = int(image["shape"][0])
        shape = [int(d) for d in image["shape"][1:]]
        if list(images.shape[1:]) != shape:
            raise ConfigError(f"calibration images are {list(images.shape[1:])}, the graph takes {shape}")
        if len(images) < self.batch:
            raise ConfigError(f"need at least {self.batch} calibration images (the graph's batch), got {len(images)}")
        self.noise = next((i for i in inputs if i["name"] == "noise"), None)
        self.images, self.seed = images, seed
        self._it: Optional[Iterator[dict[str, np.ndarray]]] = None

    def feeds(self) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        usable = len(self.images) - len(self.images) % self.batch
        for s in range(0, usable, self.batch):
            feed = {self.name: np.ascontiguousarray(self.images[s : s + self.batch])}
            if self.noise is not None:
                feed["noise"] = rng.standard_normal([int(d) for d in self.noise["shape"]], dtype=np.float32)
            yield feed

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self._it is None:
            self._it = self.feeds()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None
