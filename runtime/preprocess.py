"""Preprocessing in numpy: ROI crop and antialiased bilinear resize, identical wherever it runs.

The resize is separable: ``out = Ry @ img @ Rxᵀ`` with interpolation matrices built once per
(size_in, size_out) pair. Downscaling widens the triangle filter by the scale factor (as Pillow's
BILINEAR does), so a 200-pixel crop shrunk to 32 pixels is not aliased.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from edgepure.runtime.errors import ConfigError

__all__ = ["check_roi", "crop_roi", "resize", "resize_matrix", "scale_roi", "to_chw_float"]


@lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The ``n_out × n_in`` matrix of an antialiased bilinear (triangle filter) resize along one axis."""
    if n_in <= 0 or n_out <= 0:
        raise ConfigError(f"resize needs positive sizes, got {n_in} -> {n_out}")
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    src = np.arange(n_in, dtype=np.float64) + 0.5
    w = np.clip(1.0 - np.abs(src[None, :] - centres[:, None]) / support, 0.0, None)
    sums = w.sum(axis=1, keepdims=True)
    # Upscaling near the border: the nearest source pixel takes all the weight (edge clamping).
    empty = sums[:, 0] == 0
    if empty.any():
        idx = np.clip(np.floor(centres[empty]).astype(int), 0, n_in - 1)
        w[np.nonzero(empty)[0], idx] = 1.0
        sums = w.sum(axis=1, keepdims=True)
    w /= sums
    w.flags.writeable = False
    return w.astype(np.float32)


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``H×W×C`` image to ``size = (height, width)``; uint8 in, uint8 out; float in, float32 out."""
    if img.ndim != 3:
        raise ConfigError(f"resize expects an H×W×C image, got shape {img.shape}")
    h, w, _ = img.shape
    oh, ow = size
    if (h, w) == (oh, ow):
        return img.copy()
    ry, rx = resize_matrix(h, oh), resize_matrix(w, ow)
    x = img.astype(np.float32)
    out = np.einsum("oh,hwc->owc", ry, x, optimize=True)
    out = np.einsum("pw,owc->opc", rx, out, optimize=True)
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(np.float32)


def scale_roi(
    roi: tuple[float, float, float, float], original_size: tuple[int, int], stored_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Scale an ``(x1, y1, x2, y2)`` ROI given for an image of ``original_size = (w, h)`` to ``stored_size``."""
    (ow, oh), (sw, sh) = original_size, stored_size
    if ow <= 0 or oh <= 0:
        raise ConfigError(f"ROI scaling needs a positive original size, got {ow}x{oh}")
    sx, sy = sw / ow, sh / oh
    x1, y1, x2, y2 = roi
    return x1 * sx, y1 * sy, x2 * sx, y2 * sy


def check_roi(roi: Sequence[float], width: int, height: int) -> None:
    """Refuse an ``(x1, y1, x2, y2)`` ROI (inclusive corners) that covers less than one pixel of a
    ``width×height`` frame: clamping it would crop an unrelated border pixel and answer for that."""
    x1, y1, x2, y2 = (float(v) for v in roi)
    shown = f"ROI (x1, y1, x2, y2) = ({', '.join(f'{v:g}' for v in (x1, y1, x2, y2))})"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ConfigError(f"{shown} has NaN or infinite coordinates (expected finite pixel coordinates)")
    if x2 < x1 or y2 < y1:
        raise ConfigError(f"{shown} is empty (expected x1 ≤ x2 and y1 ≤ y2; the corners are inclusive)")
    # pixel x spans [x, x + 1): the ROI covers [x1, x2 + 1) × [y1, y2 + 1) before clipping to the frame
    across = min(x2 + 1, width) - max(x1, 0.0)
    down = min(y2 + 1, height) - max(y1, 0.0)
    if across <= 0 or down <= 0:
        raise ConfigError(f"{shown} lies outside the {width}×{height} frame (expected it to overlap the frame)")
    if across < 1 or down < 1:
        raise ConfigError(f"{shown} overlaps the {width}×{height} frame by less than one pixel "
                          f"({across:g}×{down:g}; expected at least 1×1)")


def crop_roi(img: np.ndarray, roi: Sequence[float]) -> np.ndarray:
    """Crop ``img`` to the ROI ``(x1, y1, x2, y2)`` (inclusive GTSRB convention, clipped to the image).

    An ROI that covers less than one pixel of the image is a :class:`ConfigError` (see :func:`check_roi`).
    """
    h, w = img.shape[:2]
    check_roi(roi, w, h)
    x1, y1, x2, y2 = roi
    c0 = int(np.clip(np.floor(x1), 0, w - 1))
    r0 = int(np.clip(np.floor(y1), 0, h - 1))
    c1 = int(np.clip(np.ceil(x2) + 1, c0 + 1, w))
    r1 = int(np.clip(np.ceil(y2) + 1, r0 + 1, h))
    return img[r0:r1, c0:c1]


def to_chw_float(img: np.ndarray) -> np.ndarray:
    """``H×W×3`` uint8 → ``3×H×W`` float32 in [0, 1]."""
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
