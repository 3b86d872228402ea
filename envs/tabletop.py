"""A LanguageTable-like tabletop domain in PyBullet (the paper's Appendix D.1).

A cylindrical end effector moves in the table plane by bounded 2-D deltas and pushes blocks of
4 colours x 4 shapes around a board; tasks are language instructions with ground-truth success:
Block2Block ("push the red moon to the blue cube"), block to an absolute board location ("slide
the green star to the top left corner") and block to a location relative to where it started
("move the blue cube slightly to the left").

Coordinates follow LanguageTable: x grows from the top of the camera image (the robot's base) to
the bottom, y from left to right, in metres; the effector's workspace is
[X_MIN, X_MAX] x [Y_MIN, Y_MAX]. Each of the N environments owns one headless PyBullet client
(DIRECT), so nothing is shared and a seed fixes everything. Images come from the CPU
TinyRenderer, so no GPU or display is needed.

The blocks get large roll/pitch inertia (as LanguageTable's block URDFs do): a stiff effector
otherwise tips and drives small blocks into the table. Yaw inertia is the real one, so blocks
and the banana still rotate when pushed off-centre.

Success is ground truth at every step: the task's block within the family's threshold of its
target and every block of the task at rest (planar speed below `stable_speed`), so a block
sliding through the target does not count.

Besides the camera image, observations carry the privileged block positions when
`state_observation` is on: the scripted demonstrator reads them (as LanguageTable's oracle reads
the simulator) and state-based models may; image-based models should ignore them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybullet as pb

from efm.config import TABLETOP_TASK_FAMILIES, BananaTableConfig, EnvConfig, TabletopConfig
from efm.envs.base import Array, TimeStep

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

# --- Tasks and instructions (pure) -----------------------------------------------------------

BLOCK2BLOCK, BLOCK2LOCATION, BLOCK2RELATIVE = TABLETOP_TASK_FAMILIES
VERBS = ("push", "move", "slide", "nudge")
BLOCK2BLOCK_PREPOSITIONS = ("to", "towards", "next to", "close to", "near")
LOCATION_INSET = 0.05  # location targets sit this far inside the workspace edges
# fmt: off
LOCATIONS: dict[str, tuple[int, int]] = {  # name -> (row, column) on a 3 x 3 grid
    "top_left": (0, 0), "top": (0, 1), "top_right": (0, 2),
    "left": (1, 0), "center": (1, 1), "right": (1, 2),
    "bottom_left": (2, 0), "bottom": (2, 1), "bottom_right": (2, 2),
}
LOCATION_PHRASES: dict[str, tuple[str, ...]] = {
    "top_left": ("top left corner", "top left of the board", "upper left corner", "top left"),
    "top": ("top of the board", "top side", "top edge of the board", "top"),
    "top_right": ("top right corner", "top right of the board", "upper right corner", "top right"),
    "left": ("left side of the board", "left side", "center left", "left edge of the board"),
    "center": ("center of the board", "middle of the board", "center", "middle"),
    "right": ("right side of the board", "right side", "center right", "right edge of the board"),
    "bottom_left": ("bottom left corner", "bottom left of the board", "lower left corner",
                    "bottom left"),
    "bottom": ("bottom of the board", "bottom side", "bottom edge of the board", "bottom"),
    "bottom_right": ("bottom right corner", "bottom right of the board", "lower right corner",
                     "bottom right"),
}
# Up is towards the top of the image (-x), left is -y.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "up": (-1.0, 0.0), "down": (1.0, 0.0), "left": (0.0, -1.0), "right": (0.0, 1.0),
    "up_left": (-1.0, -1.0), "up_right": (-1.0, 1.0),
    "down_left": (1.0, -1.0), "down_right": (1.0, 1.0),
}
DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "up": ("up", "upwards"), "down": ("down", "downwards"),
    "left": ("left", "to the left"), "right": ("right", "to the right"),
}
DIAGONAL_TEMPLATES = ("{} and {}", "{} and then {}", "diagonally {} and {}", "{} and {} diagonally")
RELATIVE_DISTANCES = {"near": 0.1, "far": 0.2}  # metres the block should move
SLIGHTLY = ("slightly", "a bit", "a little")
# fmt: on


@dataclass(frozen=True)
class Task:
    """What an instruction asks for, independent of its phrasing.

    block2block: push `block` to `target_block`; block2location: push `block` to `location`
    (a LOCATIONS key); block2relative: push `block` by RELATIVE_DISTANCES[`distance`] along
    DIRECTIONS[`direction`] from where it started.
    """

    family: str
    block: str
    target_block: str | None = None
    location: str | None = None
    direction: str | None = None
    distance: str | None = None

    def __post_init__(self) -> None:
        if self.family not in TABLETOP_TASK_FAMILIES:
            raise ValueError(
                f"unknown task family {self.family!r}; expected one of {TABLETOP_TASK_FAMILIES}"
            )
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}")
        given = {
            k
            for k in ("target_block", "location", "direction", "distance")
            if getattr(self, k) is not None
        }
        needs = {
            BLOCK2BLOCK: {"target_block"},
            BLOCK2LOCATION: {"location"},
            BLOCK2RELATIVE: {"direction", "distance"},
        }[self.family]
        if given != needs:
            raise ValueError(
                f"{self.family} task needs exactly {sorted(needs)}, got {sorted(given)}"
            )
        if self.target_block is not None and (
            self.target_block not in BLOCKS or self.target_block == self.block
        ):
            raise ValueError(f"invalid target block {self.target_block!r} for block {self.block!r}")
        if self.location is not None and self.location not in LOCATIONS:
            raise ValueError(f"unknown location {self.location!r}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}")
        if self.distance is not None and self.distance not in RELATIVE_DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}")

    @property
    def blocks(self) -> tuple[str, ...]:
        """The blocks the task is about (their rest is part of success)."""
        return (self.block,) if self.target_block is None else (self.block, self.target_block)


def block_text(block: str) -> str:
    return block.replace("_", " ")


def location_target(location: str) -> Array:
    """The board point a block2location task aims at: a 3 x 3 grid inset from the edges."""
    row, col = LOCATIONS[location]
    lo, hi = WORKSPACE[0] + LOCATION_INSET, WORKSPACE[1] - LOCATION_INSET
    return lo + (hi - lo) * np.array([row, col]) / 2


def relative_offset(direction: str, distance: str) -> Array:
    d = np.array(DIRECTIONS[direction])
    return RELATIVE_DISTANCES[distance] * d / np.linalg.norm(d)


def direction_phrases(direction: str) -> list[str]:
    if direction in DIRECTION_WORDS:
        return list(DIRECTION_WORDS[direction])
    vertical, horizontal = direction.split("_")
    return [
        t.format(v, h)
        for t in DIAGONAL_TEMPLATES
        for v in DIRECTION_WORDS[vertical]
        for h in DIRECTION_WORDS[horizontal]
    ]


def all_instructions(task: Task) -> list[str]:
    """Every phrasing of the task the generator can produce."""
    b = block_text(task.block)
    if task.family == BLOCK2BLOCK:
        t = block_text(task.target_block or "")
        return [f"{v} the {b} {p} the {t}" for v in VERBS for p in BLOCK2BLOCK_PREPOSITIONS]
    if task.family == BLOCK2LOCATION:
        return [
            f"{v} the {b} to the {loc}"
            for v in VERBS
            for loc in LOCATION_PHRASES[task.location or ""]
        ]
    out = []
    for v, d in itertools.product(VERBS, direction_phrases(task.direction or "")):
        if task.distance == "far":
            out.append(f"{v} the {b} {d}")
        else:
            out.append(f"slightly {v} the {b} {d}")
            for s in SLIGHTLY:
                out += [f"{v} the {b} {s} {d}", f"{v} the {b} {d} {s}"]
    return out


def instruction_for(task: Task, rng: np.random.Generator) -> str:
    """A phrasing drawn uniformly from `all_instructions(task)`."""
    phrases = all_instructions(task)
    return phrases[int(rng.integers(len(phrases)))]


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_BLOCK = rf"(?:{_alternation(COLORS)}) (?:{_alternation(SHAPES)})"
_VERB = _alternation(VERBS)
_LOCATION_OF = {p: loc for loc, ps in LOCATION_PHRASES.items() for p in ps}
_DIRECTION_OF = {p: d for d in DIRECTIONS for p in direction_phrases(d)}
_DIR = _alternation(list(_DIRECTION_OF))
_SLIGHT = _alternation(SLIGHTLY)
_PREP = _alternation(BLOCK2BLOCK_PREPOSITIONS)
_LOC = _alternation(list(_LOCATION_OF))
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        BLOCK2BLOCK,
        re.compile(rf"(?:{_VERB}) the (?P<block>{_BLOCK}) (?:{_PREP}) the (?P<target>{_BLOCK})"),
    ),
    (
        BLOCK2LOCATION,
        re.compile(rf"(?:{_VERB}) the (?P<block>{_BLOCK}) to the (?P<location>{_LOC})"),
    ),
    ("near", re.compile(rf"slightly (?:{_VERB}) the (?P<block>{_BLOCK}) (?P<direction>{_DIR})")),
    (
        "near",
        re.compile(rf"(?:{_VERB}) the (?P<block>{_BLOCK}) (?:{_SLIGHT}) (?P<direction>{_DIR})"),
    ),
    (
        "near",
        re.compile(rf"(?:{_VERB}) the (?P<block>{_BLOCK}) (?P<direction>{_DIR}) (?:{_SLIGHT})"),
    ),
    ("far", re.compile(rf"(?:{_VERB}) the (?P<block>{_BLOCK}) (?P<direction>{_DIR})")),
)


def normalize_instruction(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def parse_instruction(text: str) -> Task:
    """The task an instruction asks for: inverts every phrasing `all_instructions` produces."""
    norm = normalize_instruction(text)
    for kind, pattern in _PATTERNS:
        m = pattern.fullmatch(norm)
        if m is None:
            continue
        block = m["block"].replace(" ", "_")
        if kind == BLOCK2BLOCK:
            return Task(BLOCK2BLOCK, block, target_block=m["target"].replace(" ", "_"))
        if kind == BLOCK2LOCATION:
            return Task(BLOCK2LOCATION, block, location=_LOCATION_OF[m["location"]])
        return Task(BLOCK2RELATIVE, block, direction=_DIRECTION_OF[m["direction"]], distance=kind)
    raise ValueError(f"not a tabletop instruction: {text!r}")


def task_target(task: Task, positions: Mapping[str, Array], start: Array | None = None) -> Array:
    """Where the task's block should end up: the target block's current position, a board
    location, or `start` (the block's position at the episode start) plus the offset."""
    if task.family == BLOCK2BLOCK:
        return np.asarray(positions[task.target_block or ""], float)
    if task.family == BLOCK2LOCATION:
        return location_target(task.location or "")
    if start is None:
        raise ValueError("a block2relative task needs the block's start position")
    return np.asarray(start, float) + relative_offset(task.direction or "", task.distance or "")


def success_threshold(task: Task, cfg: TabletopConfig) -> float:
    return {
        BLOCK2BLOCK: cfg.block2block_threshold,
        BLOCK2LOCATION: cfg.location_threshold,
        BLOCK2RELATIVE: cfg.relative_threshold,
    }[task.family]


def task_satisfied(
    task: Task, positions: Mapping[str, Array], cfg: TabletopConfig, start: Array | None = None
) -> bool:
    """Whether the block is within the family's threshold of its target (rest not checked)."""
    target = task_target(task, positions, start)
    return bool(
        np.linalg.norm(np.asarray(positions[task.block], float) - target)
        < success_threshold(task, cfg)
    )


def chebyshev(v: Array) -> float:
    """Per-axis bounded actions cover an L-infinity distance of max_delta per step."""
    return float(np.abs(v).max())


def push_steps_estimate(
    effector: Array, center: Array, target: Array, reach: float, standoff: float, max_delta: float
) -> float:
    """Steps of a perfect push: the effector to `standoff` behind the object (as seen from the
    target), then pushing straight until the object is within `reach` of the target."""
    d = np.asarray(target, float) - center
    dist = float(np.linalg.norm(d))
    if dist <= reach:
        return 0.0
    u = d / dist
    behind = center - standoff * u
    travel = chebyshev(behind - effector) + (dist - reach) * chebyshev(u)
    return float(math.ceil(travel / max_delta - 1e-9))  # no extra step for rounding noise


# --- One PyBullet world ----------------------------------------------------------------------


@dataclass(frozen=True)
class SceneParams:
    image_height: int
    image_width: int
    render_images: bool
    max_delta: float
    physics_substeps: int


def scene_params(cfg: TabletopConfig | BananaTableConfig) -> SceneParams:
    return SceneParams(
        cfg.image_height, cfg.image_width, cfg.render_images, cfg.max_delta, cfg.physics_substeps
    )


@dataclass(frozen=True)
class BodySpec:
    name: str
    shape: ShapeSpec
    rgba: tuple[float, float, float, float]
    mass: float
    friction: float


# The camera looks down at the board from beyond its bottom edge, as LanguageTable's does.
CAMERA_EYE = (0.92, 0.0, 0.62)
CAMERA_TARGET = (0.4, 0.0, 0.0)
CAMERA_UP = (-1.0, 0.0, 0.0)
CAMERA_FOV = 43.0  # vertical, degrees: the whole board and its walls
BOARD_RGBA = (0.82, 0.76, 0.62, 1.0)
TABLE_RGBA = (0.33, 0.33, 0.36, 1.0)
WALL_RGBA = (0.25, 0.22, 0.2, 1.0)
EFFECTOR_RGBA = (0.2, 0.2, 0.22, 1.0)


def planar_pose(position: Sequence[float], quaternion: Sequence[float]) -> tuple[Array, float]:
    """(x, y) and yaw of a body's pose."""
    x, y, z, w = quaternion
    return np.array(position[:2], float), math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


class TableScene:
    """One PyBullet client: table, board walls, the effector and the given movable bodies.

    Only the bodies of the current episode are in the world (idle ones would cost physics);
    their shapes are built once and shared, so adding a body is cheap. The same sequence of
    calls gives the same world.
    """

    def __init__(self, params: SceneParams, bodies: Sequence[BodySpec]):
        self.params = params
        self.client = pb.connect(pb.DIRECT)
        c = self.client
        pb.setGravity(0, 0, -9.81, physicsClientId=c)
        pb.setPhysicsEngineParameter(
            fixedTimeStep=CONTROL_PERIOD / params.physics_substeps,
            numSolverIterations=SOLVER_ITERATIONS,
            erp=EFFECTOR_ERP,
            deterministicOverlappingPairs=1,
            physicsClientId=c,
        )
        table = self._build_table()
        self._effector = self._build_effector()
        # The effector hovers over the table: skip that (never touching) pair in the physics.
        pb.setCollisionFilterPair(self._effector, table, -1, -1, 0, physicsClientId=c)
        self._specs = {spec.name: spec for spec in bodies}
        self._shapes: dict[str, tuple[int, int]] = {}  # name -> (collision, visual) shape ids
        self._ids: dict[str, int] = {}  # bodies in the world
        self._command = np.array(BOARD_CENTER, float)
        self._constraint = pb.createConstraint(
            self._effector,
            -1,
            -1,
            -1,
            pb.JOINT_FIXED,
            [0, 0, 0],
            [0, 0, 0],
            [*self._command, EFFECTOR_Z],
            physicsClientId=c,
        )
        self.reset_effector(self._command)
        self._view = pb.computeViewMatrix(CAMERA_EYE, CAMERA_TARGET, CAMERA_UP, physicsClientId=c)
        self._projection = pb.computeProjectionMatrixFOV(
            CAMERA_FOV, params.image_width / params.image_height, 0.05, 5.0, physicsClientId=c
        )

    def _build_table(self) -> int:
        """The table top, the board and its walls; returns the table's body id."""
        c = self.client
        # An infinite collision plane (unused bodies rest on it far away), drawn as a table top.
        plane = pb.createCollisionShape(pb.GEOM_PLANE, physicsClientId=c)
        table = pb.createVisualShape(
            pb.GEOM_BOX,
            halfExtents=[1.0, 1.0, 0.02],
            rgbaColor=TABLE_RGBA,
            visualFramePosition=[*BOARD_CENTER, -0.022],
            physicsClientId=c,
        )
        table_id = pb.createMultiBody(0, plane, table, physicsClientId=c)
        lo, hi = WORKSPACE[0] - WALL_MARGIN, WORKSPACE[1] + WALL_MARGIN
        half = (hi - lo) / 2
        board = pb.createVisualShape(
            pb.GEOM_BOX, halfExtents=[*half, 0.001], rgbaColor=BOARD_RGBA, physicsClientId=c
        )
        pb.createMultiBody(0, -1, board, basePosition=[*BOARD_CENTER, -0.001], physicsClientId=c)
        t, h = 0.01, 0.02  # wall half thickness, half height
        cx, cy = BOARD_CENTER
        frames = [[lo[0] - t, cy, h], [hi[0] + t, cy, h], [cx, lo[1] - t, h], [cx, hi[1] + t, h]]
        extents = [[t, half[1] + 2 * t, h]] * 2 + [[half[0] + 2 * t, t, h]] * 2
        col = pb.createCollisionShapeArray(
            [pb.GEOM_BOX] * 4,
            halfExtents=extents,
            collisionFramePositions=frames,
            physicsClientId=c,
        )
        vis = pb.createVisualShapeArray(
            [pb.GEOM_BOX] * 4, halfExtents=extents, visualFramePositions=frames, physicsClientId=c
        )
        walls = pb.createMultiBody(0, col, vis, physicsClientId=c)
        pb.changeVisualShape(walls, -1, rgbaColor=WALL_RGBA, physicsClientId=c)
        return table_id

    def _build_effector(self) -> int:
        c = self.client
        col = pb.createCollisionShape(
            pb.GEOM_CYLINDER,
            radius=EFFECTOR_RADIUS,
            height=2 * EFFECTOR_HALF_HEIGHT,
            physicsClientId=c,
        )
        vis = pb.createVisualShape(
            pb.GEOM_CYLINDER,
            radius=EFFECTOR_RADIUS,
            length=2 * EFFECTOR_HALF_HEIGHT,
            rgbaColor=EFFECTOR_RGBA,
            physicsClientId=c,
        )
        body = pb.createMultiBody(
            EFFECTOR_MASS, col, vis, basePosition=[*BOARD_CENTER, EFFECTOR_Z], physicsClientId=c
        )
        pb.changeDynamics(body, -1, lateralFriction=EFFECTOR_FRICTION, physicsClientId=c)
        return body

    def _build_shapes(self, spec: BodySpec) -> tuple[int, int]:
        c, shape = self.client, spec.shape
        vertices, indices = extrude(shape)
        if len(shape.boxes) == 1 and shape.boxes[0][:3] == (0.0, 0.0, 0.0):
            _, _, _, hl, hw = shape.boxes[0]
            col = pb.createCollisionShape(
                pb.GEOM_BOX, halfExtents=[hl, hw, shape.half_height], physicsClientId=c
            )
        elif shape.boxes:
            col = pb.createCollisionShapeArray(
                [pb.GEOM_BOX] * len(shape.boxes),
                halfExtents=[[hl, hw, shape.half_height] for _, _, _, hl, hw in shape.boxes],
                collisionFramePositions=[[x, y, 0.0] for x, y, _, _, _ in shape.boxes],
                collisionFrameOrientations=[
                    pb.getQuaternionFromEuler([0, 0, yaw]) for _, _, yaw, _, _ in shape.boxes
                ],
                physicsClientId=c,
            )
        else:  # the convex hull of the outline's prism
            hull = [v for v in vertices if abs(v[0]) + abs(v[1]) > 0]
            col = pb.createCollisionShape(pb.GEOM_MESH, vertices=hull, physicsClientId=c)
        vis = pb.createVisualShape(
            pb.GEOM_MESH, vertices=vertices, indices=indices, rgbaColor=spec.rgba, physicsClientId=c
        )
        return col, vis

    def add(self, name: str, xy: Sequence[float], yaw: float) -> None:
        """Put body `name` at rest on the table (adding it to the world if needed)."""
        spec = self._specs[name]
        if name not in self._ids:
            if name not in self._shapes:
                self._shapes[name] = self._build_shapes(spec)
            col, vis = self._shapes[name]
            body = pb.createMultiBody(spec.mass, col, vis, physicsClientId=self.client)
            pb.changeDynamics(
                body,
                -1,
                lateralFriction=spec.friction,
                restitution=0.0,
                localInertiaDiagonal=[TIP_INERTIA, TIP_INERTIA, spec.shape.yaw_inertia(spec.mass)],
                physicsClientId=self.client,
            )
            self._ids[name] = body
        self.place(name, xy, yaw)

    def remove(self, name: str) -> None:
        pb.removeBody(self._ids.pop(name), physicsClientId=self.client)

    @property
    def bodies(self) -> tuple[str, ...]:
        return tuple(self._ids)

    def place(self, name: str, xy: Sequence[float], yaw: float) -> None:
        """Teleport a body in the world to rest on the table at (x, y) with the given yaw."""
        body = self._ids[name]
        z = self._specs[name].shape.half_height
        pb.resetBasePositionAndOrientation(
            body,
            [float(xy[0]), float(xy[1]), z],
            pb.getQuaternionFromEuler([0, 0, float(yaw)]),
            physicsClientId=self.client,
        )
        pb.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)

    def reset_effector(self, xy: Sequence[float]) -> None:
        self._command = np.array(xy, float)
        pos = [*self._command, EFFECTOR_Z]
        pb.resetBasePositionAndOrientation(
            self._effector, pos, [0, 0, 0, 1], physicsClientId=self.client
        )
        pb.resetBaseVelocity(self._effector, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)
        pb.changeConstraint(
            self._constraint, pos, maxForce=EFFECTOR_MAX_FORCE, physicsClientId=self.client
        )

    def move_effector(self, target_xy: Array) -> None:
        """One control step: the effector's command moves linearly to `target_xy` while the
        physics runs, so the effector pushes whatever is in the way."""
        start, n = self._command, self.params.physics_substeps
        for s in range(1, n + 1):
            q = start + (target_xy - start) * (s / n)
            pb.changeConstraint(
                self._constraint,
                [float(q[0]), float(q[1]), EFFECTOR_Z],
                maxForce=EFFECTOR_MAX_FORCE,
                physicsClientId=self.client,
            )
            pb.stepSimulation(physicsClientId=self.client)
        self._command = np.array(target_xy, float)

    @property
    def command(self) -> Array:
        return self._command.copy()

    def effector_xy(self) -> Array:
        return np.array(
            pb.getBasePositionAndOrientation(self._effector, physicsClientId=self.client)[0][:2]
        )

    def pose(self, name: str) -> tuple[Array, float]:
        return planar_pose(
            *pb.getBasePositionAndOrientation(self._ids[name], physicsClientId=self.client)
        )

    def speed(self, name: str) -> float:
        """Planar speed (m/s)."""
        v = pb.getBaseVelocity(self._ids[name], physicsClientId=self.client)[0]
        return math.hypot(v[0], v[1])

    def render(self) -> Array:
        h, w = self.params.image_height, self.params.image_width
        _, _, rgba, _, _ = pb.getCameraImage(
            w,
            h,
            self._view,
            self._projection,
            renderer=pb.ER_TINY_RENDERER,
            flags=pb.ER_NO_SEGMENTATION_MASK,
            physicsClientId=self.client,
        )
        return np.asarray(rgba, np.uint8).reshape(h, w, 4)[..., :3]

    def close(self) -> None:
        if self.client >= 0:
            try:
                pb.disconnect(physicsClientId=self.client)
            finally:
                self.client = -1


# --- Sampling boards (pure, given an rng) ----------------------------------------------------

SPAWN_MARGIN = 0.06  # blocks start this far inside the workspace: the effector can get behind them
MIN_BLOCK_SPACING = 0.07
EFFECTOR_CLEARANCE = BLOCK_RADIUS + EFFECTOR_RADIUS + 0.01


def sample_positions(
    rng: np.random.Generator,
    k: int,
    spacing: float,
    margin: float,
    avoid: Sequence[Array] = (),
    tries: int = 200,
) -> Array | None:
    """k points in the workspace shrunk by `margin`, pairwise (and from `avoid`) at least
    `spacing` apart; None when rejection sampling gives up."""
    lo, hi = WORKSPACE[0] + margin, WORKSPACE[1] - margin
    points: list[Array] = []
    for _ in range(k):
        for _ in range(tries):
            p = rng.uniform(lo, hi)
            if all(np.linalg.norm(p - q) >= spacing for q in [*avoid, *points]):
                points.append(p)
                break
        else:
            return None
    return np.array(points).reshape(k, 2)


def sample_task(
    rng: np.random.Generator,
    families: Sequence[str],
    positions: Mapping[str, Array],
    cfg: TabletopConfig,
    tries: int = 50,
) -> Task | None:
    """A task of a random family that the board does not already satisfy and that a push can
    solve (targets inside the workspace); None when none was found."""
    names = list(positions)
    family = families[int(rng.integers(len(families)))]
    for _ in range(tries):
        block = names[int(rng.integers(len(names)))]
        if family == BLOCK2BLOCK:
            others = [n for n in names if n != block]
            if not others:
                return None
            task = Task(family, block, target_block=others[int(rng.integers(len(others)))])
        elif family == BLOCK2LOCATION:
            task = Task(family, block, location=list(LOCATIONS)[int(rng.integers(len(LOCATIONS)))])
        else:
            task = Task(
                family,
                block,
                direction=list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))],
                distance=list(RELATIVE_DISTANCES)[int(rng.integers(len(RELATIVE_DISTANCES)))],
            )
        target = task_target(task, positions, positions[block])
        inside = bool(
            np.all(target >= WORKSPACE[0] + 0.03) and np.all(target <= WORKSPACE[1] - 0.03)
        )
        far = np.linalg.norm(target - positions[block]) > success_threshold(task, cfg) + 0.05
        if inside and far:
            return task
    return None


# --- The vectorized environment --------------------------------------------------------------


def _validated_actions(actions: Array, num_envs: int, action_dim: int) -> Array:
    a = np.asarray(actions, np.float64)
    if a.shape != (num_envs, action_dim):
        raise ValueError(f"actions must have shape {(num_envs, action_dim)}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("actions must be finite")
    return np.clip(a, -1.0, 1.0)


def effector_targets(command: Array, actions: Array, max_delta: float) -> Array:
    """Where bounded delta actions take the effector: clipped per axis, kept in the workspace."""
    return np.clip(command + max_delta * np.clip(actions, -1.0, 1.0), WORKSPACE[0], WORKSPACE[1])


class TableEnvBase:
    """What the PyBullet table domains share: N scenes, bounded effector deltas, and the
    VectorEnv plumbing. Subclasses sample episodes (`_reset_one`) and observe (`_timestep`)."""

    action_dim = 2

    def __init__(
        self,
        cfg: TabletopConfig | BananaTableConfig,
        bodies: Sequence[BodySpec],
        num_envs: int,
        seed: int,
        first_env: int = 0,
    ):
        """`first_env`: the index of env 0 among the copies made from `seed` (a worker of
        efm.envs.subprocess holding envs first_env.. gets the same episodes as one env of all)."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self._max_delta = cfg.max_delta
        self._seed = seed
        # One random stream per env, so episodes depend on the seed and the env's index only.
        self._rngs = [np.random.default_rng([seed, first_env + i]) for i in range(num_envs)]
        self._scenes = [TableScene(scene_params(cfg), bodies) for _ in range(num_envs)]
        self._instructions = [""] * num_envs
        self._optimal = np.zeros(num_envs)

    def reset(self, mask: Array | None = None, tasks: Array | None = None) -> TimeStep:
        idx = range(self.num_envs) if mask is None else np.flatnonzero(mask)
        for i in idx:  # with `tasks`, task k is a pure function of (seed, k)
            rng = self._rngs[i] if tasks is None else np.random.default_rng([self._seed, int(tasks[i])])
            self._reset_one(int(i), rng)
        return self._timestep()

    def step(self, actions: Array) -> TimeStep:
        a = _validated_actions(actions, self.num_envs, self.action_dim)
        for scene, ai in zip(self._scenes, a, strict=True):
            scene.move_effector(effector_targets(scene.command, ai, self._max_delta))
        return self._timestep()

    def optimal_length(self) -> Array:
        return self._optimal.copy()

    def timestep(self) -> TimeStep:
        """The current state, without stepping (e.g. after `place_*`)."""
        return self._timestep()

    def place_effector(self, i: int, xy: Sequence[float]) -> None:
        """Teleport env i's effector (test and debugging hook)."""
        self._scenes[i].reset_effector(np.clip(np.asarray(xy, float), WORKSPACE[0], WORKSPACE[1]))

    def render(self) -> Array:
        """[N, H, W, 3] camera images now, whether or not observations carry them."""
        return np.stack([s.render() for s in self._scenes])

    def close(self) -> None:
        for s in self._scenes:
            s.close()

    def __enter__(self) -> TableEnvBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown pybullet may be gone
            self.close()

    def _reset_one(self, i: int, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _timestep(self) -> TimeStep:
        raise NotImplementedError


class TabletopEnv(TableEnvBase):
    """N LanguageTable-like boards stepped together (one PyBullet client each)."""

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int, first_env: int = 0):
        self.cfg = cfg.tabletop
        bodies = [
            BodySpec(
                b,
                BLOCK_SHAPES[b.split("_")[1]],
                COLOR_RGBA[b.split("_")[0]],
                BLOCK_MASS,
                BLOCK_FRICTION,
            )
            for b in BLOCKS
        ]
        super().__init__(self.cfg, bodies, num_envs, seed, first_env)
        self._on_board: list[tuple[str, ...]] = [()] * num_envs
        self._tasks: list[Task | None] = [None] * num_envs
        self._start = np.zeros((num_envs, 2))  # the task block's position at reset

    # -- Inspection and test hooks --

    @property
    def tasks(self) -> tuple[Task | None, ...]:
        return tuple(self._tasks)

    @property
    def blocks_on_board(self) -> tuple[tuple[str, ...], ...]:
        return tuple(self._on_board)

    def start_position(self, i: int) -> Array:
        """The task block's position when the episode started (block2relative targets)."""
        return self._start[i].copy()

    def place_block(self, i: int, block: str, xy: Sequence[float], yaw: float = 0.0) -> None:
        """Teleport a block of env i (at rest); the next step's observation shows it."""
        if block not in self._on_board[i]:
            raise ValueError(f"block {block!r} is not on board {i}: {self._on_board[i]}")
        self._scenes[i].place(block, xy, yaw)

    # -- Internals --

    def _reset_one(self, i: int, rng: np.random.Generator) -> None:
        cfg, scene = self.cfg, self._scenes[i]
        for _ in range(100):
            chosen = rng.choice(len(BLOCKS), size=cfg.num_blocks, replace=False)
            names = tuple(BLOCKS[k] for k in sorted(chosen))
            points = sample_positions(rng, len(names), MIN_BLOCK_SPACING, SPAWN_MARGIN)
            if points is None:
                continue
            effector = sample_positions(rng, 1, EFFECTOR_CLEARANCE, 0.0, avoid=list(points))
            if effector is None:
                continue
            positions = dict(zip(names, points, strict=True))
            task = sample_task(rng, cfg.task_families, positions, cfg)
            if task is not None:
                break
        else:
            raise RuntimeError("could not sample a tabletop board and task in 100 attempts")
        for name in scene.bodies:
            scene.remove(name)
        for name, p in positions.items():
            scene.add(name, p, float(rng.uniform(-np.pi, np.pi)))
        scene.reset_effector(effector[0])
        self._on_board[i], self._tasks[i] = names, task
        self._start[i] = positions[task.block]
        self._instructions[i] = instruction_for(task, rng)
        target = task_target(task, positions, positions[task.block])
        standoff = BLOCK_RADIUS + EFFECTOR_RADIUS
        self._optimal[i] = push_steps_estimate(
            effector[0],
            positions[task.block],
            target,
            success_threshold(task, cfg),
            standoff,
            cfg.max_delta,
        )

    def _timestep(self) -> TimeStep:
        n = self.num_envs
        effector = np.zeros((n, 2), np.float32)
        blocks = np.zeros((n, len(BLOCKS), 2), np.float32)
        success = np.zeros(n, bool)
        for i, scene in enumerate(self._scenes):
            effector[i] = scene.effector_xy()
            positions = {name: scene.pose(name)[0] for name in self._on_board[i]}
            for name, p in positions.items():
                blocks[i, BLOCKS.index(name)] = p
            task = self._tasks[i]
            if task is not None:
                success[i] = task_satisfied(task, positions, self.cfg, self._start[i]) and all(
                    scene.speed(b) < self.cfg.stable_speed for b in task.blocks
                )
        obs = {EFFECTOR_TRANSLATION: effector}
        if self.cfg.state_observation:
            obs[BLOCK_TRANSLATION] = blocks
        if self.cfg.render_images:
            obs[RGB] = np.stack([s.render() for s in self._scenes])
        return TimeStep(
            observation=obs, goal={}, instruction=tuple(self._instructions), success=success
        )


# --- Scripted demonstrators ------------------------------------------------------------------


@dataclass(frozen=True)
class PushParams:
    max_delta: float
    action_noise: float  # Gaussian, in action units
    detour_prob: float  # chance per episode of visiting a random waypoint first
    lateral_tolerance: float  # metres off the push line before re-approaching
    contact_bias: float = 0.004  # std of a per-episode offset of the contact point (sloppiness)
    gap: float = 0.006  # clearance kept from the object while walking around it


def in_workspace(xy: Array, margin: float = 0.0) -> bool:
    """Whether xy lies in the workspace shrunk by `margin` (grown for a negative margin)."""
    return bool(np.all(xy >= WORKSPACE[0] + margin) and np.all(xy <= WORKSPACE[1] - margin))


def displacement_to_action(d: Array, max_delta: float) -> Array:
    """The action moving the effector by d, scaled down (direction kept) to fit [-1, 1]^2."""
    a = np.asarray(d, float) / max_delta
    m = np.abs(a).max()
    return a / m if m > 1 else a


def segment_hits(e: Array, q: Array, outline: Array, clearance: float, step: float = 0.01) -> bool:
    """Whether walking from e to q comes within `clearance` of the polygon (checked every
    `step` metres)."""
    n = max(int(np.linalg.norm(q - e) / step), 1)
    return any(
        point_in_polygon(x, outline) or distance_to_boundary(x, outline) < clearance
        for x in e + (q - e) * np.linspace(0.0, 1.0, n + 1)[1:, None]
    )


class PushController:
    """Push an object's centre towards a target, per environment.

    Walk around the object to the point behind it (as seen from the target), push along the
    line through its centre with lateral correction, and go back to the approach whenever the
    object slips off the line. Deliberately imperfect: action noise, a random detour in some
    episodes, and a per-episode offset of the contact point that makes objects turn.
    """

    def __init__(self, params: PushParams, num_envs: int, seed: int):
        self.params = params
        self._rng = np.random.default_rng(seed)
        self._pushing = np.zeros(num_envs, bool)
        self._detour = np.full((num_envs, 2), np.nan)
        self._bias = np.zeros(num_envs)

    def reset(self, mask: Array | None = None) -> None:
        idx = np.arange(len(self._pushing)) if mask is None else np.flatnonzero(mask)
        for i in idx:
            self._pushing[i] = False
            detour = self._rng.uniform() < self.params.detour_prob
            self._detour[i] = self._rng.uniform(WORKSPACE[0], WORKSPACE[1]) if detour else np.nan
            self._bias[i] = self._rng.normal(0.0, self.params.contact_bias)

    def displacement(
        self,
        i: int,
        effector: Array,
        center: Array,
        target: Array,
        remaining: float,
        outline: Array,
    ) -> Array:
        """Effector displacement for env i, pushing the object with world-frame `outline`
        (around its centre `center`) towards `target`; `remaining` <= 0: it is there."""
        p = self.params
        if not np.isnan(self._detour[i, 0]):
            w = self._detour[i]
            blocked = (
                point_in_polygon(w, outline)
                or distance_to_boundary(w, outline) < EFFECTOR_RADIUS + 2 * p.gap
            )
            if np.linalg.norm(w - effector) > 0.015 and not blocked:
                return self._approach(effector, center, w, outline)
            self._detour[i] = np.nan  # reached, or the object now lies on it
        d = target - center
        dist = float(np.linalg.norm(d))
        if remaining <= 0 or dist < 1e-6:  # done: back off so jitter cannot nudge it out again
            self._pushing[i] = False
            away = effector - center
            if distance_to_boundary(effector, outline) < EFFECTOR_RADIUS + 0.01:
                return 0.01 * away / max(float(np.linalg.norm(away)), 1e-9)
            return np.zeros(2)
        u = d / dist
        standoff = ray_exit_distance(outline - center, -u) + EFFECTOR_RADIUS + p.gap
        if not in_workspace(center - standoff * u, -0.005):
            # The effector cannot get behind (the object lies against the workspace edge):
            # push it towards the middle of the board first.
            to_middle = BOARD_CENTER - center
            u = to_middle / max(float(np.linalg.norm(to_middle)), 1e-9)
            standoff = ray_exit_distance(outline - center, -u) + EFFECTOR_RADIUS + p.gap
        n = np.array([-u[1], u[0]])
        rel = effector - center
        along, lateral = float(rel @ u), float(rel @ n) - self._bias[i]
        # Off the line, level with the centre (slipped past), or left behind: approach again.
        if self._pushing[i] and (
            abs(lateral) > p.lateral_tolerance
            or along > -0.5 * EFFECTOR_RADIUS
            or along < -(standoff + 0.05)
        ):
            self._pushing[i] = False
        if not self._pushing[i]:
            behind = center - (standoff + 0.004) * u + self._bias[i] * n
            if np.linalg.norm(behind - effector) < 0.01:
                self._pushing[i] = True
            else:
                return self._approach(effector, center, behind, outline)
        speed = min(p.max_delta, max(0.35 * p.max_delta, 0.5 * remaining + 0.2 * p.max_delta))
        return speed * u - 0.5 * lateral * n

    def _approach(self, effector: Array, center: Array, goal: Array, outline: Array) -> Array:
        """Straight to `goal` if the way is clear of the object, else one step around it."""
        p = self.params
        clear = EFFECTOR_RADIUS + p.gap
        if not segment_hits(effector, goal, outline, clear):
            return goal - effector
        rel, to_goal = effector - center, goal - center
        phi = math.atan2(rel[1], rel[0])
        delta = math.remainder(math.atan2(to_goal[1], to_goal[0]) - phi, 2 * math.pi)
        if abs(delta) < 0.1:  # blocked although at the goal's bearing (a concave side): sidestep
            delta = math.copysign(0.5, delta)
        radius = max(float(np.linalg.norm(rel)), 1e-3)
        step = math.copysign(min(abs(delta), 1.5 * p.max_delta / radius), delta)
        # Orbit just outside the object; the widest reach over the swept bearings keeps the
        # chord from cutting a corner.
        sweep = [np.array([math.cos(a), math.sin(a)]) for a in phi + np.linspace(0.0, step, 5)]
        reach = max(ray_exit_distance(outline - center, v) for v in sweep)
        return center + (reach + clear + 0.004) * sweep[-1] - effector

    def actions(self, displacements: Array) -> Array:
        """[N, 2] actions with the demonstrator's noise, in [-1, 1]."""
        a = np.stack([displacement_to_action(d, self.params.max_delta) for d in displacements])
        a = a + self._rng.normal(0.0, self.params.action_noise, a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


# What the demonstrator assumes of every block: it observes positions, not shapes or yaw.
BLOCK_FOOTPRINT = regular_polygon(16, BLOCK_RADIUS)


class PushingDemonstrator:
    """What the table demonstrators share: a `PushController`, and each env's goal parsed from
    its instruction once per episode (None until its first observation)."""

    LATERAL_TOLERANCE = 0.012

    def __init__(self, scene: TabletopConfig | BananaTableConfig, num_envs: int, seed: int):
        params = PushParams(scene.max_delta, scene.demo_action_noise, scene.demo_detour_prob, self.LATERAL_TOLERANCE)
        self._ctl = PushController(params, num_envs, seed)
        self._goals: list[Any] = [None] * num_envs

    def reset(self, mask: Array | None = None) -> None:
        self._ctl.reset(mask)
        for i in range(len(self._goals)) if mask is None else np.flatnonzero(mask):
            self._goals[i] = None

    def observe(self, ts: TimeStep) -> dict[str, Array]:
        return {}


class TabletopDemonstrator(PushingDemonstrator):
    """Scripted pushing for every tabletop family: parses the instruction, reads the privileged
    block positions, and drives a `PushController`."""

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int):
        self.cfg = cfg.tabletop
        super().__init__(self.cfg, num_envs, seed)
        self._start = np.zeros((num_envs, 2))

    def act(self, ts: TimeStep) -> dict[str, Array]:
        if BLOCK_TRANSLATION not in ts.observation:
            raise ValueError(
                f"the tabletop demonstrator reads {BLOCK_TRANSLATION!r}: "
                "enable tabletop.state_observation"
            )
        blocks, effector = ts.observation[BLOCK_TRANSLATION], ts.observation[EFFECTOR_TRANSLATION]
        moves = np.zeros((len(self._goals), 2))
        for i, text in enumerate(ts.instruction):
            task = self._goals[i]
            if task is None:  # first observation of the episode
                task = self._goals[i] = parse_instruction(text)
                self._start[i] = blocks[i, BLOCKS.index(task.block)]
            positions = {b: blocks[i, BLOCKS.index(b)].astype(float) for b in task.blocks}
            target = task_target(task, positions, self._start[i])
            center = positions[task.block]
            threshold = success_threshold(task, self.cfg)
            # Stop a little inside the threshold: the block slides on after the last push.
            stop = (
                threshold - 0.004
                if task.family == BLOCK2BLOCK
                else max(threshold - 0.025, 0.5 * threshold)
            )
            remaining = float(np.linalg.norm(target - center)) - stop
            moves[i] = self._ctl.displacement(
                i, effector[i].astype(float), center, target, remaining, BLOCK_FOOTPRINT + center
            )
        return {"action": self._ctl.actions(moves)}
