"""Procedural traffic-sign scenes: the synthetic source for the demo, the tests and the ``synth://`` camera.

One image: a random background (colour gradient, low-frequency texture, poles and blobs), one sign of the
requested class under a random similarity + perspective transform, colours that fade and shift, then
lighting (brightness, contrast, colour cast, gamma, a shadow gradient), blur and sensor noise. Everything
comes from a ``numpy.random.Generator``; ``render_dataset(n, seed)`` is deterministic and image ``i`` depends
only on ``(seed, i)``.
"""

from __future__ import annotations

import math

import numpy as np

from edgepure.runtime.classes import GTSRB_CLASSES
from edgepure.runtime.errors import ConfigError
from edgepure.runtime.preprocess import resize, resize_matrix
from edgepure.runtime.synth.signs import sign_design

__all__ = ["render_dataset", "render_sign"]

NUM_CLASSES = len(GTSRB_CLASSES)

_PALETTE = {
    "red": (0.80, 0.10, 0.12),
    "white": (0.93, 0.93, 0.91),
    "black": (0.07, 0.07, 0.08),
    "blue": (0.08, 0.30, 0.72),
    "yellow": (0.98, 0.76, 0.10),
    "green": (0.10, 0.62, 0.25),
    "grey": (0.50, 0.50, 0.50),
}

_BACKGROUNDS = [
    (0.55, 0.68, 0.85),  # sky
    (0.70, 0.72, 0.75),  # overcast
    (0.25, 0.40, 0.20),  # foliage
    (0.45, 0.40, 0.33),  # building
    (0.30, 0.30, 0.32),  # road / shade
    (0.12, 0.12, 0.15),  # night
    (0.80, 0.78, 0.70),  # bright wall
]


def _homography(rng: np.random.Generator) -> np.ndarray:
    """Sign-local → image coordinates (both in [-1, 1]): perspective, anisotropy, rotation, scale, shift."""
    radius = rng.uniform(0.58, 0.88)
    aspect = math.exp(rng.normal(0.0, 0.07))
    rot = math.radians(rng.normal(0.0, 5.0))
    cx, cy = rng.uniform(-0.09, 0.09, size=2)
    px, py = rng.normal(0.0, 0.12, size=2)
    persp = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [px, py, 1.0]])
    scale = np.diag([radius * aspect, radius / aspect, 1.0])
    c, s = math.cos(rot), math.sin(rot)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    shift = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    return shift @ rotation @ scale @ persp


def _smooth_field(rng: np.random.Generator, n: int, cells: int, amp: float) -> np.ndarray:
    """A low-frequency random field ``n×n×3`` around zero."""
    coarse = rng.normal(0.0, amp, size=(cells, cells, 3)).astype(np.float32)
    ry = resize_matrix(cells, n)
    return np.einsum("ah,hwc,bw->abc", ry, coarse, ry, optimize=True)


def _background(rng: np.random.Generator, n: int, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    x, y = grid
    base = np.array(_BACKGROUNDS[rng.integers(len(_BACKGROUNDS))], dtype=np.float32)
    base = np.clip(base + rng.normal(0.0, 0.08, 3), 0.0, 1.0)
    top = np.clip(base * rng.uniform(0.8, 1.2) + rng.normal(0.0, 0.05, 3), 0, 1)
    t = ((y + 1.0) / 2.0)[..., None]
    bg = (1 - t) * top + t * base + _smooth_field(rng, n, int(rng.integers(3, 8)), 0.08)
    for _ in range(int(rng.integers(0, 3))):  # poles, edges of buildings, other signs' backs
        colour = np.clip(rng.uniform(0.05, 0.9) + rng.normal(0, 0.05, 3), 0, 1)
        if rng.random() < 0.5:
            x0 = rng.uniform(-1, 1)
            m = np.abs(x - x0) < rng.uniform(0.03, 0.2)
        else:
            y0 = rng.uniform(-1, 1)
            m = (y - y0) * rng.choice([-1, 1]) > 0
        bg[m] = colour * rng.uniform(0.7, 1.0) + bg[m] * 0.0
    return np.clip(bg, 0.0, 1.0).astype(np.float32)


def _colours(rng: np.random.Generator) -> dict[str, np.ndarray]:
    fade = rng.uniform(0.0, 0.3)
    grey = rng.uniform(0.4, 0.7)
    out = {}
    for name, rgb in _PALETTE.items():
        c = np.asarray(rgb, dtype=np.float32) + rng.normal(0.0, 0.035, 3).astype(np.float32)
        out[name] = np.clip((1 - fade) * c + fade * grey, 0.0, 1.0)
    return out


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    n = img.shape[0]
    r = max(1, int(math.ceil(3 * sigma)))
    idx = np.arange(n)
    k = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
    k[np.abs(idx[:, None] - idx[None, :]) > r] = 0
    k /= k.sum(axis=1, keepdims=True)
    k = k.astype(np.float32)
    return np.einsum("ah,hwc,bw->abc", k, img, k, optimize=True)


def render_sign(class_id: int, rng: np.random.Generator, size: int = 32, supersample: int = 3) -> np.ndarray:
    """Render one ``size×size×3`` uint8 image of GTSRB class ``class_id``."""
    if not 0 <= class_id < NUM_CLASSES:
        raise ConfigError(f"class id must be in 0..{NUM_CLASSES - 1}, got {class_id}")
    if size < 8 or supersample < 1:
        raise ConfigError(f"size must be ≥ 8 and supersample ≥ 1, got {size} and {supersample}")
    n = size * supersample
    coords = (np.arange(n, dtype=np.float64) + 0.5) / n * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    bg = _background(rng, n, (x, y))
    hinv = np.linalg.inv(_homography(rng))
    w = hinv[2, 0] * x + hinv[2, 1] * y + hinv[2, 2]
    u = (hinv[0, 0] * x + hinv[0, 1] * y + hinv[0, 2]) / w
    v = (hinv[1, 0] * x + hinv[1, 1] * y + hinv[1, 2]) / w
    outline, layers = sign_design(class_id)
    colours = _colours(rng)
    alpha = outline(u, v)
    sign = np.zeros((n, n, 3), dtype=np.float32)
    for shape, colour in layers:
        sign[shape(u, v)] = colours[colour]
    # a soft light gradient across the sign (sun from one side)
    g = rng.normal(0.0, 0.12, 2)
    sign *= np.clip(1.0 + g[0] * u + g[1] * v, 0.6, 1.4)[..., None].astype(np.float32)
    img = np.where(alpha[..., None], sign, bg)
    img = resize(img.astype(np.float32), (size, size))
    # lighting: GTSRB has many dark, low-contrast frames
    brightness = math.exp(rng.normal(-0.25, 0.45))
    contrast = rng.uniform(0.55, 1.15)
    cast = 1.0 + rng.normal(0.0, 0.06, 3).astype(np.float32)
    mean = img.mean()
    img = ((img - mean) * contrast + mean) * brightness * cast
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.75, 1.35)
    if rng.random() < 0.7:
        img = _blur(img, rng.uniform(0.3, 1.2))
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.035), img.shape).astype(np.float32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def render_dataset(
    n: int, seed: int = 0, size: int = 32, classes: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered images (``N×size×size×3`` uint8) and their labels, class-balanced and deterministic."""
    if n < 0:
        raise ConfigError(f"number of synthetic images must be ≥ 0, got {n}")
    if seed < 0:
        raise ConfigError(f"seed must be ≥ 0 (numpy's generators take no negative seed), got {seed}")
    if not 8 <= size <= 1024:  # the array is allocated before any sign is drawn
        raise ConfigError(f"image size must be 8 to 1024 pixels, got {size}")
    pool = np.asarray(classes if classes is not None else range(NUM_CLASSES), dtype=np.int64)
    if pool.size == 0 or pool.min() < 0 or pool.max() >= NUM_CLASSES:
        raise ConfigError(f"classes must be a non-empty subset of 0..{NUM_CLASSES - 1}")
    labels = pool[np.random.default_rng([seed, 7]).permutation(n) % len(pool)]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i] = render_sign(int(c), np.random.default_rng([seed, i]), size=size)
    return images, labels
