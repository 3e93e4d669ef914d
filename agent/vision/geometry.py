"""Plane geometry for counting lines and zones, in image pixels (y grows downwards)."""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]


def side(a: Point, b: Point, p: Point) -> float:
    """Signed side of ``p`` relative to the line a→b; > 0 is the right-hand side on screen."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def unit_normal(a: Point, b: Point) -> tuple[float, float, float]:
    """``(nx, ny, length)``: the unit normal of a→b towards its right-hand (positive) side,
    and the segment's length."""
    length = max(math.hypot(b[0] - a[0], b[1] - a[1]), 1e-9)
    return -(b[1] - a[1]) / length, (b[0] - a[0]) / length, length


def signed_distance(a: Point, b: Point, p: Point) -> float:
    """Distance of ``p`` from the line a→b in pixels, > 0 on its right-hand side."""
    return side(a, b, p) / max(math.hypot(b[0] - a[0], b[1] - a[1]), 1e-9)


def image_directions(points: Sequence[Point]) -> tuple[str, str]:
    """Image-term names of the two crossing directions: (to the right-hand side, to the left).

    A mostly horizontal line is crossed ``down``/``up``; a mostly vertical one
    ``right``/``left``. Moving to the right-hand side of a→b means moving along the
    normal ``(-dy, dx)``.
    """
    (x1, y1), (x2, y2) = points
    nx, ny = -(y2 - y1), (x2 - x1)
    if abs(ny) >= abs(nx):
        return ("down", "up") if ny > 0 else ("up", "down")
    return ("right", "left") if nx > 0 else ("left", "right")


def crosses(a: Point, b: Point, p0: Point, p1: Point) -> int:
    """+1 if the move p0→p1 crosses segment a-b to its right-hand side, -1 to its left, else 0.

    A point exactly on the line counts as not yet crossed: the crossing happens on the
    first position strictly past it, so jitter along the line is not a crossing.
    """
    s0, s1 = side(a, b, p0), side(a, b, p1)
    if s1 == 0 or ((s0 > 0) == (s1 > 0) and s0 != 0):
        return 0
    if s0 == 0:
        return 0
    # the crossing point must lie within the segment a-b
    t0, t1 = side(p0, p1, a), side(p0, p1, b)
    if (t0 > 0 and t1 > 0) or (t0 < 0 and t1 < 0):
        return 0
    return 1 if s1 > 0 else -1


def inside(polygon: Sequence[Point], p: Point) -> bool:
    """Even-odd rule point-in-polygon test."""
    x, y = p
    result = False
    n = len(polygon)
    for i in range(n):
        (xa, ya), (xb, yb) = polygon[i], polygon[(i + 1) % n]
        if (ya > y) != (yb > y):
            xc = xa + (y - ya) * (xb - xa) / (yb - ya)
            if x < xc:
                result = not result
    return result
