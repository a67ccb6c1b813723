"""Vector designs of the 43 GTSRB sign classes: an outline and painted layers in sign-local coordinates.

Pictograms are drawn in a unit frame ``[-0.5, 0.5]²`` and placed into the sign's pictogram area. The
designs follow the German signs (StVO) in simplified form: speed-limit digits, arrows, vehicles seen from
behind or the side, and stick-figure pictograms.
"""

from __future__ import annotations

from functools import lru_cache

from edgepure.runtime.synth.shapes import (
    Shape,
    arc,
    circle,
    difference,
    intersect,
    polygon,
    rect,
    regular_polygon,
    ring,
    stroke,
    text,
    transform,
    union,
)

__all__ = ["Layer", "sign_design"]

Layer = tuple[Shape, str]

# --- pictograms in the unit frame --------------------------------------------------------------------


def car_rear() -> Shape:
    return union(
        polygon([(-0.3, -0.42), (0.3, -0.42), (0.42, -0.1), (-0.42, -0.1)]),
        rect(-0.5, -0.12, 0.5, 0.3),
        rect(-0.46, 0.28, -0.24, 0.45),
        rect(0.24, 0.28, 0.46, 0.45),
    )


def truck_rear() -> Shape:
    box = difference(rect(-0.42, -0.5, 0.42, 0.3), rect(-0.02, -0.42, 0.02, 0.22))  # two rear doors
    return union(box, rect(-0.42, 0.28, -0.2, 0.45), rect(0.2, 0.28, 0.42, 0.45))


def truck_side() -> Shape:
    return union(
        rect(-0.5, -0.3, 0.18, 0.14),
        polygon([(0.22, -0.16), (0.38, -0.16), (0.5, 0.0), (0.5, 0.14), (0.22, 0.14)]),
        circle(-0.33, 0.2, 0.1), circle(-0.1, 0.2, 0.1), circle(0.34, 0.2, 0.1),
    )


def person(walk: float = 1.0) -> Shape:
    w = 0.1
    return union(
        circle(0.02, -0.38, 0.1),
        stroke([(0.0, -0.24), (0.03, 0.08)], 0.14),
        stroke([(0.03, 0.08), (-0.16 * walk, 0.46)], w),
        stroke([(0.03, 0.08), (0.2 * walk, 0.3), (0.22 * walk, 0.46)], w),
        stroke([(-0.2 * walk, 0.02), (-0.02, -0.18), (0.2 * walk, -0.02)], 0.08),
    )


def children() -> Shape:
    return union(transform(person(), dx=-0.14, dy=-0.03, scale=0.95), transform(person(), dx=0.22, dy=0.12, scale=0.68))


def bicycle() -> Shape:
    w = 0.055
    return union(
        ring(-0.28, 0.18, 0.2, 0.15), ring(0.28, 0.18, 0.2, 0.15),
        stroke([(-0.28, 0.18), (-0.04, 0.18), (0.16, -0.1), (-0.12, -0.1), (-0.04, 0.18)], w),
        stroke([(0.16, -0.1), (0.28, 0.18)], w),
        stroke([(0.16, -0.1), (0.12, -0.24), (0.22, -0.26)], w),
        stroke([(-0.12, -0.1), (-0.15, -0.2), (-0.05, -0.2)], w),
    )


def snowflake() -> Shape:
    parts: list[Shape] = []
    for a in (0.0, 60.0, 120.0):
        arm = union(
            stroke([(0.0, -0.46), (0.0, 0.46)], 0.07),
            stroke([(-0.12, -0.4), (0.0, -0.28), (0.12, -0.4)], 0.06),
            stroke([(-0.12, 0.4), (0.0, 0.28), (0.12, 0.4)], 0.06),
        )
        parts.append(transform(arm, rotate_deg=a))
    return union(*parts)


def deer() -> Shape:
    return union(
        polygon([(-0.42, 0.0), (-0.2, -0.12), (0.15, -0.1), (0.28, -0.28), (0.36, -0.26), (0.3, -0.08),
                 (0.22, 0.02), (0.32, 0.3), (0.26, 0.32), (0.12, 0.06), (-0.15, 0.06), (-0.34, 0.34),
                 (-0.4, 0.3), (-0.28, 0.05), (-0.46, 0.1)]),
        stroke([(0.3, -0.28), (0.26, -0.46)], 0.05), stroke([(0.33, -0.28), (0.42, -0.44)], 0.05),
    )


def exclamation() -> Shape:
    return union(polygon([(-0.09, -0.46), (0.09, -0.46), (0.05, 0.16), (-0.05, 0.16)]), circle(0.0, 0.36, 0.09))


def crossing_bar() -> Shape:
    return union(polygon([(-0.09, -0.48), (0.09, -0.48), (0.06, 0.48), (-0.06, 0.48)]), rect(-0.32, -0.05, 0.32, 0.05))


def curve() -> Shape:  # bends to the left
    return stroke([(0.12, 0.46), (0.12, 0.05)] + arc(-0.18, 0.05, 0.3, 0.36, 0, -75, 8), 0.15)


def double_curve() -> Shape:
    return stroke([(0.0, 0.46)] + arc(-0.18, 0.22, 0.18, 0.22, 0, -90, 6)[1:-1] + arc(0.05, -0.18, 0.2, 0.2, 120, 270, 8), 0.13)


def bumps() -> Shape:
    pts = [(-0.48, 0.3)] + arc(-0.22, 0.3, 0.24, 0.42, 180, 360, 10) + arc(0.24, 0.3, 0.24, 0.42, 180, 360, 10) + [(0.48, 0.3)]
    return union(polygon(pts + [(0.48, 0.4), (-0.48, 0.4)]))


def slippery() -> Shape:
    car = transform(car_rear(), dy=-0.2, scale=0.55, rotate_deg=-15)
    waves = union(
        stroke(arc(-0.2, 0.2, 0.1, 0.1, 180, 0, 6) + arc(0.0, 0.2, 0.1, 0.1, 180, 360, 6)[1:], 0.06),
        stroke([(0.08, 0.32)] + arc(0.2, 0.4, 0.1, 0.08, 180, 360, 6), 0.06),
    )
    return union(car, waves)


def narrows_right() -> Shape:
    return union(
        stroke([(-0.22, 0.46), (-0.22, -0.46)], 0.11),
        stroke([(0.22, 0.46), (0.22, 0.05), (0.06, -0.15), (0.06, -0.46)], 0.11),
    )


def road_work() -> Shape:
    return union(
        circle(-0.12, -0.36, 0.09),
        stroke([(-0.12, -0.22), (-0.02, 0.1)], 0.13),
        stroke([(-0.02, 0.1), (-0.2, 0.46)], 0.09), stroke([(-0.02, 0.1), (0.08, 0.46)], 0.09),
        stroke([(-0.1, -0.14), (0.14, 0.02), (0.3, 0.3)], 0.06),
        polygon([(0.2, 0.46), (0.36, 0.22), (0.5, 0.46)]),
    )


def arrow_up() -> Shape:
    return union(rect(-0.09, -0.12, 0.09, 0.5), polygon([(-0.3, -0.06), (0.0, -0.5), (0.3, -0.06)]))


def arrow_turn_right() -> Shape:
    return union(
        stroke([(-0.2, 0.5), (-0.2, 0.05)] + arc(0.05, 0.05, 0.25, 0.25, 180, 270, 8) + [(0.12, -0.2)], 0.18),
        polygon([(0.1, -0.46), (0.48, -0.2), (0.1, 0.06)]),
    )


def arrow_straight_right() -> Shape:
    return union(
        arrow_up(),
        stroke([(0.0, 0.3), (0.0, 0.16)] + arc(0.16, 0.16, 0.16, 0.16, 180, 270, 6) + [(0.24, 0.0)], 0.14),
        polygon([(0.22, -0.16), (0.48, 0.0), (0.22, 0.16)]),
    )


def roundabout() -> Shape:
    parts = []
    for a in (0.0, 120.0, 240.0):
        seg = union(stroke(arc(0.0, 0.0, 0.33, 0.33, 200, 290, 8), 0.12),
                    polygon([(0.05, -0.48), (0.28, -0.33), (0.05, -0.18)]))
        parts.append(transform(seg, rotate_deg=a))
    return union(*parts)


def diagonal_stripes(n: int = 5, width: float = 0.035, gap: float = 0.1) -> Shape:
    lines = [stroke([(-1.0 + k * gap * 1.4, 1.0 + k * gap * 1.4), (1.0 + k * gap * 1.4, -1.0 + k * gap * 1.4)], width)
             for k in range(-(n // 2), n // 2 + 1)]
    return union(*lines)


# --- sign families -------------------------------------------------------------------------------
TRI = [(0.0, -0.95), (-1.0, 0.8), (1.0, 0.8)]
TRI_C = (0.0, sum(y for _, y in TRI) / 3)


def _shrink(pts: list[tuple[float, float]], c: tuple[float, float], k: float) -> list[tuple[float, float]]:
    return [(c[0] + (x - c[0]) * k, c[1] + (y - c[1]) * k) for x, y in pts]


def _warning(picto: Shape | None, colour: str = "black") -> tuple[Shape, list[Layer]]:
    outer = polygon(TRI)
    layers: list[Layer] = [(outer, "red"), (polygon(_shrink(TRI, TRI_C, 0.7)), "white")]
    if picto is not None:
        layers.append((transform(picto, dy=0.3, scale=0.72), colour))
    return outer, layers


def _prohibition(picto: list[Layer] | None = None) -> tuple[Shape, list[Layer]]:
    disc = circle(0, 0, 1.0)
    layers: list[Layer] = [(disc, "white"), (ring(0, 0, 1.0, 0.78), "red")]
    for shape, colour in picto or []:
        layers.append((transform(shape, scale=1.05), colour))
    return disc, layers


def _speed(value: str) -> tuple[Shape, list[Layer]]:
    wide = len(value) == 3
    return _prohibition([(text(value, 0, 0, 0.62 if not wide else 0.5, 0.9 if not wide else 0.72, 0.15), "black")])


def _mandatory(picto: Shape) -> tuple[Shape, list[Layer]]:
    disc = circle(0, 0, 1.0)
    return disc, [(disc, "blue"), (transform(picto, scale=1.25), "white")]


def _end(picto: Shape | None) -> tuple[Shape, list[Layer]]:
    disc = circle(0, 0, 1.0)
    layers: list[Layer] = [(disc, "white"), (ring(0, 0, 1.0, 0.95), "grey")]
    if picto is not None:
        layers.append((transform(picto, scale=1.05), "grey"))
    layers.append((intersect(diagonal_stripes(), circle(0, 0, 0.95)), "black"))
    return disc, layers


def _pair(left: Shape, right: Shape, left_scale: float = 0.4) -> Shape:
    return union(transform(left, dx=-0.22, dy=-0.02, scale=left_scale), transform(right, dx=0.2, scale=0.4))


@lru_cache(maxsize=None)
def sign_design(class_id: int) -> tuple[Shape, tuple[Layer, ...]]:
    """The outline (alpha) and painted layers of GTSRB class ``class_id``."""
    speeds = {0: "20", 1: "30", 2: "50", 3: "60", 4: "70", 5: "80", 7: "100", 8: "120"}
    if class_id in speeds:
        outline, layers = _speed(speeds[class_id])
    elif class_id == 6:
        outline, layers = _end(text("80", 0, 0, 0.55, 0.85, 0.14))
    elif class_id == 9:
        outline, layers = _prohibition([(transform(car_rear(), dx=-0.2, scale=0.4), "red"),
                                        (transform(car_rear(), dx=0.2, scale=0.4), "black")])
    elif class_id == 10:
        outline, layers = _prohibition([(transform(truck_rear(), dx=-0.22, dy=-0.03, scale=0.5), "red"),
                                        (transform(car_rear(), dx=0.2, scale=0.4), "black")])
    elif class_id == 11:
        outline, layers = _warning(crossing_bar())
    elif class_id == 12:
        outer = regular_polygon(4, 1.0, 0.0)
        outline, layers = outer, [(outer, "white"), (regular_polygon(4, 0.7, 0.0), "black"),
                                  (regular_polygon(4, 0.64, 0.0), "yellow")]
    elif class_id == 13:
        inv = [(x, -y + 0.15) for x, y in TRI]
        outer = polygon(inv)
        outline, layers = outer, [(outer, "red"), (polygon(_shrink(inv, (0.0, -TRI_C[1] + 0.15), 0.62)), "white")]
    elif class_id == 14:
        outer = regular_polygon(8, 1.0, 22.5)
        outline, layers = outer, [(outer, "white"), (regular_polygon(8, 0.92, 22.5), "red"),
                                  (text("STOP", 0, 0, 0.42, 0.62, 0.15, 0.1), "white")]
    elif class_id == 15:
        outline, layers = _prohibition()
    elif class_id == 16:
        outline, layers = _prohibition([(transform(truck_side(), scale=0.9), "black")])
    elif class_id == 17:
        disc = circle(0, 0, 1.0)
        outline, layers = disc, [(disc, "red"), (rect(-0.68, -0.16, 0.68, 0.16), "white")]
    elif class_id == 25:
        outline, layers = _warning(road_work())
    elif class_id == 26:
        tri, base = _warning(None)
        lights = [(circle(0, 0.05, 0.11), "red"), (circle(0, 0.3, 0.11), "yellow"), (circle(0, 0.55, 0.11), "green")]
        outline, layers = tri, base + [(rect(-0.16, -0.1, 0.16, 0.7), "black")] + lights
    elif 18 <= class_id <= 31:
        picto = {
            18: exclamation(), 19: curve(), 20: transform(curve(), mirror=True), 21: double_curve(), 22: bumps(),
            23: slippery(), 24: narrows_right(), 27: person(), 28: children(), 29: bicycle(), 30: snowflake(),
            31: deer(),
        }[class_id]
        outline, layers = _warning(picto)
    elif class_id == 32:
        outline, layers = _end(None)
    elif 33 <= class_id <= 40:
        picto = {
            33: arrow_turn_right(), 34: transform(arrow_turn_right(), mirror=True), 35: arrow_up(),
            36: arrow_straight_right(), 37: transform(arrow_straight_right(), mirror=True),
            38: transform(arrow_up(), rotate_deg=135), 39: transform(arrow_up(), rotate_deg=-135),
            40: roundabout(),
        }[class_id]
        outline, layers = _mandatory(picto)
    elif class_id == 41:
        outline, layers = _end(_pair(car_rear(), car_rear()))
    elif class_id == 42:
        outline, layers = _end(_pair(truck_rear(), car_rear(), left_scale=0.5))
    else:
        raise ValueError(f"GTSRB class id must be in 0..42, got {class_id}")
    return outline, tuple(layers)


