"""Vector primitives evaluated as masks on arrays of sign-local coordinates ``(u, v)``.

The sign lives in ``[-1, 1]²`` (``v`` grows downwards). A shape is a function ``(u, v) -> bool mask``;
the renderer evaluates it on a supersampled grid, which gives antialiased edges after downsampling.
Glyphs (digits and the letters of STOP) are stroked polylines in a unit box.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "Shape",
    "arc",
    "circle",
    "difference",
    "ellipse",
    "glyph_strokes",
    "intersect",
    "polygon",
    "rect",
    "regular_polygon",
    "ring",
    "stroke",
    "text",
    "transform",
    "union",
]

Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]
Points = Sequence[tuple[float, float]]


def circle(cx: float, cy: float, r: float) -> Shape:
    return lambda u, v: (u - cx) ** 2 + (v - cy) ** 2 <= r * r


def ellipse(cx: float, cy: float, rx: float, ry: float) -> Shape:
    return lambda u, v: ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0


def ring(cx: float, cy: float, r_out: float, r_in: float) -> Shape:
    def f(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        d = (u - cx) ** 2 + (v - cy) ** 2
        return (d <= r_out * r_out) & (d > r_in * r_in)

    return f


def polygon(points: Points) -> Shape:
    """Even-odd fill of a closed polygon."""
    pts = np.asarray(points, dtype=np.float64)

    def f(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        inside = np.zeros(u.shape, dtype=bool)
        x1, y1 = pts[-1]
        for x2, y2 in pts:
            if y1 != y2:
                crosses = (y1 > v) != (y2 > v)
                xint = (x2 - x1) * (v - y1) / (y2 - y1) + x1
                inside ^= crosses & (u < xint)
            x1, y1 = x2, y2
        return inside

    return f


def regular_polygon(n: int, r: float, rotation_deg: float = 0.0, cx: float = 0.0, cy: float = 0.0) -> Shape:
    a0 = math.radians(rotation_deg)
    return polygon([(cx + r * math.cos(a0 + 2 * math.pi * k / n), cy + r * math.sin(a0 + 2 * math.pi * k / n)) for k in range(n)])


def rect(x0: float, y0: float, x1: float, y1: float) -> Shape:
    return lambda u, v: (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def stroke(points: Points, width: float, closed: bool = False) -> Shape:
    """Pixels within ``width / 2`` of the polyline (round caps and joins)."""
    pts = np.asarray(points, dtype=np.float64)
    if closed:
        pts = np.vstack([pts, pts[:1]])
    r2 = (width / 2.0) ** 2

    def f(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        best = np.full(u.shape, np.inf)
        if len(pts) == 1:
            return (u - pts[0, 0]) ** 2 + (v - pts[0, 1]) ** 2 <= r2
        for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
            dx, dy = bx - ax, by - ay
            l2 = dx * dx + dy * dy
            if l2 == 0:
                d = (u - ax) ** 2 + (v - ay) ** 2
            else:
                t = np.clip(((u - ax) * dx + (v - ay) * dy) / l2, 0.0, 1.0)
                d = (u - ax - t * dx) ** 2 + (v - ay - t * dy) ** 2
            np.minimum(best, d, out=best)
        return best <= r2

    return f


def arc(cx: float, cy: float, rx: float, ry: float, a0_deg: float, a1_deg: float, n: int = 12) -> list[tuple[float, float]]:
    """Points along an elliptic arc (angles in degrees, 0 = +u, 90 = +v i.e. downwards)."""
    ts = np.linspace(math.radians(a0_deg), math.radians(a1_deg), n)
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in ts]


def union(*shapes: Shape) -> Shape:
    def f(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        m = shapes[0](u, v)
        for s in shapes[1:]:
            m = m | s(u, v)
        return m

    return f


def intersect(a: Shape, b: Shape) -> Shape:
    return lambda u, v: a(u, v) & b(u, v)


def difference(a: Shape, b: Shape) -> Shape:
    return lambda u, v: a(u, v) & ~b(u, v)


def transform(shape: Shape, dx: float = 0.0, dy: float = 0.0, scale: float = 1.0, mirror: bool = False,
              rotate_deg: float = 0.0) -> Shape:
    """The shape mirrored (about u = 0), rotated, scaled, then moved by (dx, dy)."""
    c, s = math.cos(math.radians(rotate_deg)), math.sin(math.radians(rotate_deg))

    def f(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        x, y = (u - dx) / scale, (v - dy) / scale
        x, y = c * x + s * y, -s * x + c * y
        return shape(-x if mirror else x, y)

    return f


# --- glyphs: polylines in a box 0.6 wide and 1.0 high, (0, 0) top-left -------------------------
def _glyphs() -> dict[str, list[list[tuple[float, float]]]]:
    g: dict[str, list[list[tuple[float, float]]]] = {}
    g["0"] = [arc(0.3, 0.5, 0.27, 0.47, 0, 360, 28)]
    g["1"] = [[(0.08, 0.22), (0.36, 0.02), (0.36, 0.98)]]
    g["2"] = [arc(0.3, 0.28, 0.26, 0.25, 190, 380, 12) + [(0.04, 0.98), (0.58, 0.98)]]
    g["3"] = [arc(0.3, 0.26, 0.24, 0.23, 200, 450, 12), arc(0.3, 0.72, 0.27, 0.26, 270, 520, 12)]
    g["4"] = [[(0.44, 0.98), (0.44, 0.02), (0.03, 0.7), (0.6, 0.7)]]
    g["5"] = [[(0.55, 0.03), (0.12, 0.03), (0.08, 0.45)] + arc(0.3, 0.68, 0.27, 0.29, 235, 500, 14)]
    g["6"] = [[(0.5, 0.06)] + arc(0.32, 0.55, 0.27, 0.5, 280, 190, 8) + arc(0.3, 0.7, 0.26, 0.28, 180, 540, 18)]
    g["7"] = [[(0.03, 0.03), (0.58, 0.03), (0.22, 0.98)]]
    g["8"] = [arc(0.3, 0.26, 0.22, 0.23, 0, 360, 20), arc(0.3, 0.73, 0.27, 0.26, 0, 360, 22)]
    g["9"] = [[(x_, 1.0 - y_) for x_, y_ in ((0.6 - x, y) for x, y in line)] for line in g["6"]]
    g["S"] = [arc(0.3, 0.26, 0.25, 0.24, -20, -270, 12) + arc(0.3, 0.74, 0.25, 0.24, -90, 160, 12)]
    g["T"] = [[(0.0, 0.03), (0.6, 0.03)], [(0.3, 0.03), (0.3, 0.98)]]
    g["O"] = [arc(0.3, 0.5, 0.28, 0.47, 0, 360, 28)]
    g["P"] = [[(0.06, 0.98), (0.06, 0.03), (0.32, 0.03)] + arc(0.32, 0.27, 0.24, 0.24, -90, 90, 10) + [(0.06, 0.51)]]
    return g


GLYPHS = _glyphs()


def glyph_strokes(ch: str) -> list[list[tuple[float, float]]]:
    return GLYPHS[ch]


def text(s: str, cx: float, cy: float, height: float, width_scale: float = 1.0, stroke_w: float = 0.12,
         spacing: float = 0.14) -> Shape:
    """A string of glyphs centred at (cx, cy); ``stroke_w`` and ``spacing`` are in glyph-height units."""
    gw = 0.6 * width_scale
    total = len(s) * gw + (len(s) - 1) * spacing
    x0 = -total / 2
    lines: list[Shape] = []
    for i, ch in enumerate(s):
        ox = x0 + i * (gw + spacing)
        for line in GLYPHS[ch]:
            pts = [(cx + (ox + x * width_scale) * height, cy + (y - 0.5) * height) for x, y in line]
            lines.append(stroke(pts, stroke_w * height))
    return union(*lines)
