"""The paper's pointmass navigation domain (Section 3, Figure 4).

A point in [-h, h]^2 moves by `max_speed * a` per step for an action a in [-1, 1]^2 (clipped to
unit norm, so the straight line at full speed is the optimal policy). The goal is a random
target at least `min_start_target_distance` from the start; success is being within
`success_radius` of it. The demonstrator is deliberately sub-optimal: a PD controller visits
`num_waypoints` random waypoints before heading to the target.
"""

from __future__ import annotations

import numpy as np

from efm.config import EnvConfig, PointmassConfig
from efm.envs.base import Array, TimeStep, step_rows, task_rng

POSITION = "position"
TARGET = "target"


def instruction_for(target: Array) -> str:
    return f"move to x={target[0]:+.2f} y={target[1]:+.2f}"


def optimal_length(start: Array, target: Array, cfg: PointmassConfig) -> Array:
    """Steps of the straight line at full speed until within the success radius. [N]"""
    dist = np.linalg.norm(target - start, axis=-1)
    return np.maximum(np.ceil((dist - cfg.success_radius) / cfg.max_speed), 0.0)


def clip_to_unit_norm(actions: Array) -> Array:
    norm = np.linalg.norm(actions, axis=-1, keepdims=True)
    return actions / np.maximum(norm, 1.0)


class PointmassEnv:
    """N pointmass environments stepped together (numpy, no physics engine needed)."""

    action_dim = 2

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int):
        self.cfg = cfg.pointmass
        self.num_envs = num_envs
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._pos = np.zeros((num_envs, 2), np.float32)
        self._target = np.zeros((num_envs, 2), np.float32)
        self._start = np.zeros((num_envs, 2), np.float32)

    def _sample_tasks(self, n: int, rng: np.random.Generator) -> tuple[Array, Array]:
        h, min_d = self.cfg.arena_half_size, self.cfg.min_start_target_distance
        start = rng.uniform(-h, h, (n, 2))
        target = rng.uniform(-h, h, (n, 2))
        bad = np.linalg.norm(target - start, axis=-1) < min_d
        while bad.any():  # rejection sampling; terminates fast for min_d well below the diameter
            target[bad] = rng.uniform(-h, h, (int(bad.sum()), 2))
            bad = np.linalg.norm(target - start, axis=-1) < min_d
        return start.astype(np.float32), target.astype(np.float32)

    def _timestep(self) -> TimeStep:
        success = np.linalg.norm(self._pos - self._target, axis=-1) <= self.cfg.success_radius
        return TimeStep(
            observation={POSITION: self._pos.copy()},
            goal={TARGET: self._target.copy()},
            instruction=tuple(instruction_for(t) for t in self._target),
            success=success,
        )

    def reset(self, mask: Array | None = None, tasks: Array | None = None) -> TimeStep:
        idx = np.arange(self.num_envs) if mask is None else np.flatnonzero(mask)
        if tasks is None:
            start, target = self._sample_tasks(len(idx), self._rng)
        else:  # task k is a pure function of (seed, k)
            pairs = [self._sample_tasks(1, task_rng(self._seed, tasks[i])) for i in idx]
            start = np.concatenate([p[0] for p in pairs]).reshape(-1, 2)
            target = np.concatenate([p[1] for p in pairs]).reshape(-1, 2)
        self._pos[idx], self._start[idx], self._target[idx] = start, start, target
        return self._timestep()

    def step(self, actions: Array, mask: Array | None = None) -> TimeStep:
        a = clip_to_unit_norm(np.clip(np.asarray(actions, np.float32), -1.0, 1.0))
        h = self.cfg.arena_half_size
        moved = np.clip(self._pos + self.cfg.max_speed * a, -h, h).astype(np.float32)
        rows = step_rows(mask, self.num_envs)
        if rows is None:
            self._pos = moved
        else:
            self._pos[rows] = moved[rows]
        return self._timestep()

    def optimal_length(self) -> Array:
        return optimal_length(self._start, self._target, self.cfg)

    def close(self) -> None:
        """Nothing to free (numpy state only)."""


class WaypointDemonstrator:
    """PD controller through `num_waypoints` random waypoints, then to the target."""

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int):
        self.cfg = cfg.pointmass
        self._rng = np.random.default_rng(seed)
        self._waypoints = np.zeros((num_envs, self.cfg.num_waypoints, 2), np.float32)
        self._next = np.zeros(num_envs, np.int64)
        self._prev_error = np.zeros((num_envs, 2), np.float32)

    def reset(self, mask: Array | None = None) -> None:
        idx = np.arange(len(self._next)) if mask is None else np.flatnonzero(mask)
        h = self.cfg.arena_half_size
        self._waypoints[idx] = self._rng.uniform(-h, h, (len(idx), self.cfg.num_waypoints, 2))
        self._next[idx] = 0
        self._prev_error[idx] = np.nan

    def observe(self, ts: TimeStep) -> dict[str, Array]:
        return {}

    def act(self, ts: TimeStep) -> dict[str, Array]:
        pos, target = ts.observation[POSITION], ts.goal[TARGET]
        n, k = len(pos), self.cfg.num_waypoints
        # Advance past waypoints already reached.
        for _ in range(k):
            has_wp = self._next < k
            wp = self._waypoints[np.arange(n), np.minimum(self._next, k - 1)]
            reached = has_wp & (np.linalg.norm(wp - pos, axis=-1) <= self.cfg.waypoint_radius)
            if not reached.any():
                break
            self._next = self._next + reached
            self._prev_error[reached] = np.nan
        has_wp = self._next < k
        wp = self._waypoints[np.arange(n), np.minimum(self._next, k - 1)]
        aim = np.where(has_wp[:, None], wp, target)
        error = (aim - pos) / self.cfg.max_speed  # in steps at full speed
        d_error = np.where(np.isnan(self._prev_error), 0.0, error - self._prev_error)
        self._prev_error = error
        u = self.cfg.pd_kp * error + self.cfg.pd_kd * d_error
        u = u + self._rng.normal(0.0, self.cfg.action_noise, u.shape)
        # Norm clipping keeps the heading (a per-axis clip would bend it towards 45 degrees).
        return {"action": clip_to_unit_norm(u).astype(np.float32)}

