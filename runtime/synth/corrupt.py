"""Natural perturbations of uint8 images in numpy, for the ``synth://`` source (no torch on the device).

These are random, not adversarial: a camera-shake blur, a sticker-like occluding patch, a smooth warp
and additive noise, each with a severity in (0, 1]. Adversarial versions of the same families need the
classifier's gradients and come from ``edgepure.attacks`` (``synth://?attack=…`` in ``edgepure run``).
"""

from __future__ import annotations

import numpy as np

from edgepure.runtime.errors import ConfigError

__all__ = ["CORRUPTIONS", "corrupt"]

CORRUPTIONS = ("none", "blur", "occlusion", "distortion", "noise")


def _blur(img: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    length = max(2, int(round(2 + 5 * s)))
    angle = rng.uniform(0, np.pi)
    k = np.zeros((length * 2 + 1, length * 2 + 1), np.float32)
    for t in np.linspace(-length, length, 4 * length + 1):
        k[int(round(length + t * np.sin(angle))), int(round(length + t * np.cos(angle)))] = 1.0
    k /= k.sum()
    pad = np.pad(img.astype(np.float32), ((length, length), (length, length), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    out = np.zeros((h, w, 3), np.float32)
    for dy, dx in zip(*np.nonzero(k)):
        out += k[dy, dx] * pad[dy : dy + h, dx : dx + w]
    return out


def _occlusion(img: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    h, w = img.shape[:2]
    side = int(round(np.sqrt(0.04 + 0.12 * s) * min(h, w)))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    out = img.astype(np.float32)
    out[y : y + side, x : x + side] = rng.integers(0, 256, 3)
    return out


def _distortion(img: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    h, w = img.shape[:2]
    amp = (0.03 + 0.07 * s) * min(h, w)
    coarse = rng.normal(0, 1, (2, 4, 4))
    ry = np.linspace(0, 3, h)
    rx = np.linspace(0, 3, w)
    # bilinear upsampling of the 4×4 displacement grid
    def up(g: np.ndarray) -> np.ndarray:
        y0 = np.clip(ry.astype(int), 0, 2)
        x0 = np.clip(rx.astype(int), 0, 2)
        fy, fx = (ry - y0)[:, None], (rx - x0)[None, :]
        a, b = g[y0][:, x0], g[y0][:, x0 + 1]
        c, d = g[y0 + 1][:, x0], g[y0 + 1][:, x0 + 1]
        return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    sy = np.clip(yy + amp * up(coarse[0]), 0, h - 1)
    sx = np.clip(xx + amp * up(coarse[1]), 0, w - 1)
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    f = img.astype(np.float32)
    return (f[y0, x0] * (1 - fx) + f[y0, x1] * fx) * (1 - fy) + (f[y1, x0] * (1 - fx) + f[y1, x1] * fx) * fy


def _noise(img: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    return img.astype(np.float32) + rng.normal(0, 4 + 20 * s, img.shape)


_FUNCS = {"blur": _blur, "occlusion": _occlusion, "distortion": _distortion, "noise": _noise}


def corrupt(img: np.ndarray, kind: str, rng: np.random.Generator, severity: float = 0.5) -> np.ndarray:
    """``img`` (H×W×3 uint8) with a random perturbation of family ``kind`` (one of :data:`CORRUPTIONS`)."""
    if kind not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {kind!r} (expected one of {', '.join(CORRUPTIONS)})")
    if not 0 < severity <= 1:
        raise ConfigError(f"severity must be in (0, 1], got {severity}")
    if kind == "none":
        return img
    return np.clip(np.rint(_FUNCS[kind](img, rng, severity)), 0, 255).astype(np.uint8)
