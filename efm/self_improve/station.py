"""A robot station as an actor's environment: the same `VectorEnv` interface as a simulator,
so the Self-Improvement actor (and the fleet around it) runs unchanged on a real robot.

A station is one robot (N = 1): it resets to a task chosen by its operator or a task sampler
(goal and instruction), returns camera frames and proprioception, and applies actions at its
control rate. It knows no ground-truth success (the learned detector ends episodes, Eq. 3) and
no optimal length; both are reported as unknown (False, NaN). Pin its actor to the node wired
to the robot with `self_improve.fleet.actor.resources = {"robot": 1}`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from efm.envs.base import Array, TimeStep


class RobotStation(Protocol):
    """What the hardware side provides (a driver process, a ROS bridge, ...)."""

    action_dim: int

    def reset(self) -> tuple[dict[str, Array], dict[str, Array], str]:
        """Starts an episode: (observation, goal, instruction), arrays without a batch axis."""

    def step(self, action: Array) -> dict[str, Array]:
        """Applies one action [action_dim] in [-1, 1]; the observation after it."""

    def close(self) -> None: ...


class StationEnv:
    """`VectorEnv` of one robot station."""

    num_envs = 1

    def __init__(self, station: RobotStation):
        self._station = station
        self.action_dim = station.action_dim
        self._goal: dict[str, Array] = {}
        self._instruction = ""
        self._last: TimeStep | None = None

    def _timestep(self, observation: dict[str, Any]) -> TimeStep:
        return TimeStep(observation={k: np.asarray(v)[None] for k, v in observation.items()},
                        goal={k: np.asarray(v)[None] for k, v in self._goal.items()},
                        instruction=(self._instruction,), success=np.zeros(1, bool))  # no ground truth

    def reset(self, mask: Array | None = None, tasks: Array | None = None) -> TimeStep:
        del tasks  # a station's operator (or sampler) picks the task
        if mask is not None and not np.asarray(mask).any():
            raise ValueError("a station resets its one robot or nothing; mask selects none")
        observation, self._goal, self._instruction = self._station.reset()
        self._last = self._timestep(observation)
        return self._last

    def step(self, actions: Array, mask: Array | None = None) -> TimeStep:
        if mask is not None and not np.asarray(mask).any():  # the episode ended: the robot waits
            return self._last
        self._last = self._timestep(self._station.step(np.clip(np.asarray(actions, np.float32)[0], -1.0, 1.0)))
        return self._last

    def optimal_length(self) -> Array:
        return np.full(1, np.nan)  # unknown on a real robot

    def close(self) -> None:
        self._station.close()
