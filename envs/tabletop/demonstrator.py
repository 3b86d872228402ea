"""Scripted pushing demonstrators: walk behind the object, push it along the line to its
target with lateral correction, re-approach when it drifts; noise and detours make them
imperfect (the shared controller serves BananaTable too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from efm.config import BananaTableConfig, EnvConfig, TabletopConfig
from efm.envs.base import Array, TimeStep
from efm.envs.tabletop.geometry import (
    BLOCK_RADIUS,
    BLOCK_TRANSLATION,
    BLOCKS,
    BOARD_CENTER,
    EFFECTOR_RADIUS,
    EFFECTOR_TRANSLATION,
    WORKSPACE,
    distance_to_boundary,
    point_in_polygon,
    ray_exit_distance,
    regular_polygon,
)
from efm.envs.tabletop.tasks import (
    BLOCK2BLOCK,
    parse_instruction,
    success_threshold,
    task_target,
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
