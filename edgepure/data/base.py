"""The in-memory image set every reader returns: uint8 NHWC images, int64 labels, names."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgepure.runtime.errors import ConfigError

__all__ = ["ImageSet"]


@dataclass
class ImageSet:
    """Images ``N×H×W×3`` uint8 RGB with labels ``N`` int64, the source name of each image and class names."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    class_names: tuple[str, ...]
    source: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ConfigError(
                f"ImageSet expects N×H×W×3 uint8 images, got shape {self.images.shape} dtype {self.images.dtype}"
            )
        if len(self.labels) != len(self.images) or len(self.names) != len(self.images):
            raise ConfigError(
                f"ImageSet: {len(self.images)} images but {len(self.labels)} labels and {len(self.names)} names"
            )
        self.labels = np.asarray(self.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, index: np.ndarray | list[int]) -> ImageSet:
        idx = np.asarray(index, dtype=np.int64)
        return ImageSet(
            self.images[idx], self.labels[idx], [self.names[i] for i in idx], self.class_names, self.source, dict(self.meta)
        )

    def sample(self, n: int | None, seed: int = 0) -> ImageSet:
        """A seeded random subset of ``n`` images (all of them, in order, when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ConfigError(f"--n must be positive, got {n}")
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self.take(idx)

    def as_float_nchw(self) -> np.ndarray:
        """Images as float32 ``N×3×H×W`` in [0, 1]."""
        return np.ascontiguousarray(self.images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
