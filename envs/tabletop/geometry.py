"""The tabletop's board, blocks and shapes: constants and pure 2-D geometry (no physics).

Coordinates follow LanguageTable: x grows from the top of the camera image (the robot's base)
to the bottom, y from left to right, in metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from efm.envs.base import Array

# --- The board -------------------------------------------------------------------------------

X_MIN, X_MAX = 0.15, 0.6
Y_MIN, Y_MAX = -0.3048, 0.3048
WORKSPACE = np.array([[X_MIN, Y_MIN], [X_MAX, Y_MAX]])
BOARD_CENTER = WORKSPACE.mean(axis=0)
WALL_MARGIN = 0.08  # walls stand this far outside the workspace: pushed blocks stay on the board
CONTROL_PERIOD = 0.1  # seconds per env step (10 Hz, as LanguageTable)

EFFECTOR_RADIUS = 0.015
EFFECTOR_HALF_HEIGHT = 0.03
EFFECTOR_Z = EFFECTOR_HALF_HEIGHT + 0.003  # hovers 3 mm above the table: no table friction
EFFECTOR_MASS = 0.5
EFFECTOR_MAX_FORCE = 20.0  # N: far above what pushing blocks needs, so it tracks its commands
EFFECTOR_FRICTION = 0.4
# Error reduction of joints (only the effector's constraint): PyBullet's 0.2 lags ~0.4 steps.
EFFECTOR_ERP = 0.9

BLOCK_HALF_HEIGHT = 0.015
BLOCK_MASS = 0.05
BLOCK_FRICTION = 0.5
SOLVER_ITERATIONS = 20  # PyBullet's default 50 costs twice the time for no visible difference here
TIP_INERTIA = 1e-2  # roll/pitch inertia: keeps bodies upright (see the module docstring)

RGB = "rgb"
EFFECTOR_TRANSLATION = "effector_translation"
BLOCK_TRANSLATION = "block_translation"  # [N, 16, 2], BLOCKS order; (0, 0) when off the board

COLORS = ("red", "blue", "green", "yellow")
SHAPES = ("moon", "cube", "star", "pentagon")
BLOCKS = tuple(f"{c}_{s}" for c in COLORS for s in SHAPES)
COLOR_RGBA = {
    "red": (0.85, 0.12, 0.12, 1.0),
    "blue": (0.12, 0.3, 0.9, 1.0),
    "green": (0.1, 0.65, 0.22, 1.0),
    "yellow": (0.95, 0.82, 0.1, 1.0),
}

# --- Shapes (pure geometry) ------------------------------------------------------------------


def regular_polygon(n: int, radius: float, phase: float = 0.0) -> Array:
    """[n, 2] counter-clockwise vertices on a circle."""
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=-1)


def star_polygon(points: int, outer: float, inner: float) -> Array:
    """[2 * points, 2] counter-clockwise outline, tips and notches alternating."""
    a = np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=-1)


def polygon_area_centroid(poly: Array) -> tuple[float, Array]:
    """Signed area (positive counter-clockwise) and area centroid (shoelace formula)."""
    x, y = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    centroid = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)
    return float(area), centroid


def polygon_polar_moment(poly: Array) -> float:
    """Polar second moment of area about the centroid (m^4); times mass / area gives I_zz."""
    area, c = polygon_area_centroid(poly)
    x, y = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    j_origin = (cross * (x * x + x * xn + xn * xn + y * y + y * yn + yn * yn)).sum() / 12
    return float(j_origin - area * (c @ c))


def ray_exit_distance(poly: Array, direction: Array) -> float:
    """Farthest crossing of the polygon boundary by the ray from the origin along `direction`.

    For a body whose outline is `poly` (centred on its centroid), this is how far its surface
    extends from the centre that way: where an effector must stand to push through the centre.
    """
    d = np.asarray(direction, float)
    a, b = poly, np.roll(poly, -1, axis=0)
    e = b - a
    denom = d[0] * e[:, 1] - d[1] * e[:, 0]  # cross(d, e)
    ok = np.abs(denom) > 1e-12
    safe = np.where(ok, denom, 1.0)
    t = (a[:, 0] * e[:, 1] - a[:, 1] * e[:, 0]) / safe  # distance along the ray
    s = (a[:, 0] * d[1] - a[:, 1] * d[0]) / safe  # position along the edge
    hit = ok & (t >= 0) & (s >= 0) & (s <= 1)
    return float(t[hit].max()) if hit.any() else 0.0


def rotate(points: Array, yaw: float) -> Array:
    """Points [..., 2] rotated counter-clockwise by yaw."""
    c, s = math.cos(yaw), math.sin(yaw)
    return points @ np.array([[c, s], [-s, c]])


def point_in_polygon(point: Array, poly: Array) -> bool:
    """Even-odd rule."""
    x, y = point
    a, b = poly, np.roll(poly, -1, axis=0)
    crosses = (a[:, 1] > y) != (b[:, 1] > y)
    dy = np.where(crosses, b[:, 1] - a[:, 1], 1.0)
    xs = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / dy
    return bool(np.count_nonzero(crosses & (x < xs)) % 2)


def distance_to_boundary(point: Array, poly: Array) -> float:
    """Distance from a point to the polygon's boundary (inside or outside)."""
    a, b = poly, np.roll(poly, -1, axis=0)
    e = b - a
    t = np.clip(((point - a) * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(a + t[:, None] * e - point, axis=-1).min())


@dataclass(frozen=True)
class ShapeSpec:
    """A prism: its outline, cap triangulation and collision shape, centred on its centroid.

    `points[:boundary]` is the counter-clockwise outline; `cap` triangulates the top face
    (indices into `points`). `boxes` (x, y, yaw, half length, half width) make a compound
    collision shape for concave outlines; without them the collision shape is the outline's
    convex hull.
    """

    points: Array
    boundary: int
    cap: tuple[tuple[int, int, int], ...]
    half_height: float
    boxes: tuple[tuple[float, float, float, float, float], ...] = ()

    @property
    def outline(self) -> Array:
        return self.points[: self.boundary]

    @property
    def radius(self) -> float:
        return float(np.linalg.norm(self.outline, axis=-1).max())

    def yaw_inertia(self, mass: float) -> float:
        area, _ = polygon_area_centroid(self.outline)
        return mass * polygon_polar_moment(self.outline) / area


def fan_shape(outline: Array, half_height: float) -> ShapeSpec:
    """A prism from an outline that is star-shaped about its centroid (fan triangulation)."""
    _, c = polygon_area_centroid(outline)
    outline = outline - c
    n = len(outline)
    points = np.concatenate([outline, np.zeros((1, 2))])
    cap = tuple((n, i, (i + 1) % n) for i in range(n))
    return ShapeSpec(points, n, cap, half_height)


def arc_shape(
    radius: float,
    half_angle: float,
    width: float,
    tip_width: float,
    half_height: float,
    num_boxes: int,
    samples: int = 17,
) -> ShapeSpec:
    """A crescent / banana: a band along a circular arc, widest in the middle, tapered tips.

    Collision is a chain of `num_boxes` boxes along the arc (the outline is concave).
    """
    theta = np.linspace(-half_angle, half_angle, samples)

    def width_at(t: Array) -> Array:
        return tip_width + (width - tip_width) * np.cos(np.pi * t / (2 * half_angle))

    w = width_at(theta)
    ring = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    outer = (radius + w / 2)[:, None] * ring
    inner = (radius - w / 2)[:, None] * ring
    outline = np.concatenate([outer, inner[::-1]])
    _, c = polygon_area_centroid(outline)
    outline = outline - c
    n = samples
    cap = []
    for k in range(n - 1):  # quads between consecutive outer and inner samples
        o0, o1, i1, i0 = k, k + 1, 2 * n - 2 - k, 2 * n - 1 - k
        cap += [(o0, o1, i1), (o0, i1, i0)]
    step = 2 * half_angle / num_boxes
    boxes = []
    for k in range(num_boxes):
        t = -half_angle + (k + 0.5) * step
        center = radius * np.array([math.cos(t), math.sin(t)]) - c
        half_len = radius * math.sin(step / 2) * 1.05  # slight overlap between links
        boxes.append(
            (
                float(center[0]),
                float(center[1]),
                t + math.pi / 2,
                half_len,
                float(width_at(np.array(t))) / 2,
            )
        )
    return ShapeSpec(outline, len(outline), tuple(cap), half_height, tuple(boxes))


def extrude(shape: ShapeSpec) -> tuple[list[list[float]], list[int]]:
    """Triangle mesh (vertices, indices) of the prism, faces wound outwards."""
    m, b, h = len(shape.points), shape.boundary, shape.half_height
    vertices = [[float(x), float(y), -h] for x, y in shape.points]
    vertices += [[float(x), float(y), h] for x, y in shape.points]
    indices: list[int] = []
    for i, j, k in shape.cap:
        indices += [m + i, m + j, m + k, i, k, j]  # top up, bottom down
    for i in range(b):
        j = (i + 1) % b
        indices += [i, j, m + j, i, m + j, m + i]
    return vertices, indices


BLOCK_SHAPES: dict[str, ShapeSpec] = {
    "moon": arc_shape(0.017, 1.3, 0.02, 0.004, BLOCK_HALF_HEIGHT, num_boxes=3),
    "cube": ShapeSpec(
        regular_polygon(4, 0.02 * math.sqrt(2), math.pi / 4),
        4,
        ((0, 1, 2), (0, 2, 3)),
        BLOCK_HALF_HEIGHT,
        ((0.0, 0.0, 0.0, 0.02, 0.02),),
    ),
    "star": fan_shape(star_polygon(5, 0.026, 0.012), BLOCK_HALF_HEIGHT),
    "pentagon": fan_shape(regular_polygon(5, 0.024, math.pi / 2), BLOCK_HALF_HEIGHT),
}
BLOCK_RADIUS = max(s.radius for s in BLOCK_SHAPES.values())
