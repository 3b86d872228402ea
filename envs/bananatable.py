"""BananaTable (the paper's Appendix D.2): the tabletop board with one banana, no blocks.

Instructions have the paper's form "X the banana to the Y of the table", X a verb synonymous
with pushing and Y one of the 9 regions the paper lists (left, top left, top center, top right,
right, bottom right, bottom, bottom left, center): the cells of a 3 x 3 grid over the effector's
workspace. Success is the banana's centre (its centroid) inside that cell, at rest.

The banana is a curved band (a compound of boxes along an arc for collision), so a push away
from its centre turns it instead of moving it: the behaviour the paper's Self-Improvement
policies learn to avoid by pushing "from either the middle or the tips".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from efm.config import EnvConfig
from efm.envs.base import Array, TimeStep
from efm.envs.tabletop import (
    EFFECTOR_RADIUS,
    EFFECTOR_TRANSLATION,
    RGB,
    WORKSPACE,
    BodySpec,
    PushingDemonstrator,
    TableEnvBase,
    arc_shape,
    distance_to_boundary,
    normalize_instruction,
    point_in_polygon,
    push_steps_estimate,
    ray_exit_distance,
    rotate,
)

BANANA = "banana"
BANANA_TRANSLATION = "banana_translation"  # [N, 2] centroid
BANANA_YAW = "banana_yaw"  # [N] radians
BANANA_RGBA = (0.96, 0.84, 0.25, 1.0)
BANANA_SHAPE = arc_shape(
    radius=0.14, half_angle=0.62, width=0.036, tip_width=0.012, half_height=0.018, num_boxes=6
)

# Appendix D.2, in the paper's order and wording.
# fmt: off
REGIONS = ("left", "top left", "top center", "top right", "right", "bottom right", "bottom",
           "bottom left", "center")
# (row, column): rows run top to bottom (+x), columns left to right (+y).
REGION_CELLS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top center": (0, 1), "top right": (0, 2),
    "left": (1, 0), "center": (1, 1), "right": (1, 2),
    "bottom left": (2, 0), "bottom": (2, 1), "bottom right": (2, 2),
}
# fmt: on
BANANA_VERBS = ("push", "move", "slide", "nudge", "shove")
START_MARGIN = 0.03  # the whole banana starts this far inside the workspace


def region_bounds(region: str) -> tuple[Array, Array]:
    """(low, high) corners of a region: one cell of the 3 x 3 grid over the workspace."""
    if region not in REGION_CELLS:
        raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}")
    cell = (WORKSPACE[1] - WORKSPACE[0]) / 3
    lo = WORKSPACE[0] + cell * np.array(REGION_CELLS[region])
    return lo, lo + cell


def region_center(region: str) -> Array:
    lo, hi = region_bounds(region)
    return (lo + hi) / 2


def in_region(xy: Array, region: str, margin: float = 0.0) -> bool:
    """Whether xy lies in the region shrunk by `margin` on every side."""
    lo, hi = region_bounds(region)
    return bool(np.all(xy >= lo + margin) and np.all(xy <= hi - margin))


def region_of(xy: Array) -> str | None:
    """The region containing xy, None outside the workspace."""
    for region in REGIONS:
        if in_region(xy, region):
            return region
    return None


def distance_to_region(xy: Array, region: str, margin: float = 0.0) -> float:
    """Euclidean distance from xy to the region shrunk by `margin` (0 inside)."""
    lo, hi = region_bounds(region)
    return float(np.linalg.norm(xy - np.clip(xy, lo + margin, hi - margin)))


def all_banana_instructions(region: str) -> list[str]:
    if region not in REGION_CELLS:
        raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}")
    return [f"{verb} the banana to the {region} of the table" for verb in BANANA_VERBS]


def banana_instruction(region: str, rng: np.random.Generator) -> str:
    phrases = all_banana_instructions(region)
    return phrases[int(rng.integers(len(phrases)))]


_PATTERN = re.compile(
    rf"(?:{'|'.join(BANANA_VERBS)}) the banana to the "
    rf"(?P<region>{'|'.join(sorted(REGIONS, key=len, reverse=True))}) of the table"
)


def parse_banana_instruction(text: str) -> str:
    """The region a BananaTable instruction names (inverts `all_banana_instructions`)."""
    m = _PATTERN.fullmatch(normalize_instruction(text))
    if m is None:
        raise ValueError(f"not a BananaTable instruction: {text!r}")
    return m["region"]


def banana_outline(xy: Array, yaw: float) -> Array:
    return rotate(BANANA_SHAPE.outline, yaw) + xy


class BananaTableEnv(TableEnvBase):
    """N BananaTable boards stepped together (one PyBullet client each)."""

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int, first_env: int = 0):
        self.cfg = cfg.bananatable
        body = BodySpec(
            BANANA, BANANA_SHAPE, BANANA_RGBA, self.cfg.banana_mass, self.cfg.banana_friction
        )
        super().__init__(self.cfg, [body], num_envs, seed, first_env)
        self._regions: list[str] = [""] * num_envs

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self._regions)

    def place_banana(self, i: int, xy: Array, yaw: float = 0.0) -> None:
        """Teleport env i's banana (at rest); the next step's observation shows it."""
        self._scenes[i].place(BANANA, xy, yaw)

    def _reset_one(self, i: int, rng: np.random.Generator) -> None:
        scene = self._scenes[i]
        lo, hi = WORKSPACE[0] + START_MARGIN, WORKSPACE[1] - START_MARGIN
        for _ in range(1000):
            xy, yaw = rng.uniform(WORKSPACE[0], WORKSPACE[1]), float(rng.uniform(-np.pi, np.pi))
            outline = banana_outline(xy, yaw)
            if np.all(outline >= lo) and np.all(outline <= hi):
                break
        else:
            raise RuntimeError("could not place the banana in 1000 attempts")
        for _ in range(1000):  # the effector starts clear of the banana
            effector = rng.uniform(WORKSPACE[0], WORKSPACE[1])
            if (
                not point_in_polygon(effector, outline)
                and distance_to_boundary(effector, outline) > EFFECTOR_RADIUS + 0.01
            ):
                break
        else:
            raise RuntimeError("could not place the effector clear of the banana")
        start = region_of(xy)
        region = str(rng.choice([r for r in REGIONS if r != start]))
        scene.start({BANANA: (xy, yaw)}, effector)
        self._regions[i] = region
        self._instructions[i] = banana_instruction(region, rng)
        lo_r, hi_r = region_bounds(region)
        goal = np.clip(xy, lo_r + 0.005, hi_r - 0.005)  # nearest point just inside the region
        u = (goal - xy) / max(float(np.linalg.norm(goal - xy)), 1e-9)
        standoff = ray_exit_distance(outline - xy, -u) + EFFECTOR_RADIUS
        self._optimal[i] = push_steps_estimate(
            effector, xy, goal, 0.0, standoff, self.cfg.max_delta
        )

    def _observe(self, rows: Sequence[int]) -> TimeStep:
        n = len(rows)
        effector = np.zeros((n, 2), np.float32)
        banana = np.zeros((n, 2), np.float32)
        yaw = np.zeros(n, np.float32)
        success = np.zeros(n, bool)
        for j, i in enumerate(rows):
            scene = self._scenes[i]
            effector[j] = scene.effector_xy()
            xy, yaw[j] = scene.pose(BANANA)
            banana[j] = xy
            success[j] = (
                bool(self._regions[i])
                and in_region(xy, self._regions[i])
                and scene.speed(BANANA) < self.cfg.stable_speed
            )
        obs = {EFFECTOR_TRANSLATION: effector}
        if self.cfg.state_observation:
            obs[BANANA_TRANSLATION], obs[BANANA_YAW] = banana, yaw
        if self.cfg.render_images:
            obs[RGB] = np.stack([self._scenes[i].render() for i in rows])
        return TimeStep(
            observation=obs, goal={}, instruction=tuple(self._instructions[i] for i in rows), success=success
        )


class BananaDemonstrator(PushingDemonstrator):
    """Scripted BananaTable pushing: through the banana's centroid towards the region's centre,
    re-approaching whenever it turns off the line; stops once safely inside the region."""

    LATERAL_TOLERANCE = 0.015
    STOP_MARGIN = 0.03  # stop once the centroid is this far inside the region

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int):
        self.cfg = cfg.bananatable
        super().__init__(self.cfg, num_envs, seed)

    def act(self, ts: TimeStep) -> dict[str, Array]:
        if BANANA_TRANSLATION not in ts.observation:
            raise ValueError(
                f"the BananaTable demonstrator reads {BANANA_TRANSLATION!r} and {BANANA_YAW!r}: "
                "enable bananatable.state_observation"
            )
        obs = ts.observation
        moves = np.zeros((len(self._goals), 2))
        for i, text in enumerate(ts.instruction):
            region = self._goals[i]
            if region is None:
                region = self._goals[i] = parse_banana_instruction(text)
            center = obs[BANANA_TRANSLATION][i].astype(float)
            # Aim at the region's centre; done once the centroid is STOP_MARGIN inside it.
            outside = distance_to_region(center, region, self.STOP_MARGIN)
            remaining = max(outside, 1e-3) if outside > 0 else -1.0
            moves[i] = self._ctl.displacement(
                i,
                obs[EFFECTOR_TRANSLATION][i].astype(float),
                center,
                region_center(region),
                remaining,
                banana_outline(center, float(obs[BANANA_YAW][i])),
            )
        return {"action": self._ctl.actions(moves)}
