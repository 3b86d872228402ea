"""The environment interface shared by every domain, and the in-memory episode.

Environments are vectorized from the start (N copies stepped together) because actors batch
the model's inference over them. An observation is a dict of arrays (state vectors and/or
camera images); a goal is an instruction text plus an optional dict of goal arrays (pointmass:
the target position), so state-based MLPs and image+language models read the same episodes.
Episode termination is not the environment's decision: the caller ends an episode on
ground-truth success (demonstrations, evaluation), on detected success (Self-Improvement), on
max length, or on an external stop signal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

Array = np.ndarray
Observation = dict[str, Array]


@dataclass(frozen=True)
class TimeStep:
    """The state of N environments: every array has a leading [N] axis."""

    observation: Observation
    goal: dict[str, Array]
    instruction: tuple[str, ...]
    success: Array  # [N] bool, ground truth


class VectorEnv(Protocol):
    num_envs: int
    action_dim: int

    def reset(self, mask: Array | None = None, tasks: Array | None = None) -> TimeStep:
        """Start new episodes (new task) in the environments where mask is True (all if None).

        Without `tasks` the tasks come from the env's own seeded stream, in the order of the
        resets. With `tasks` ([N] ints, read where mask is True) env i gets the task that
        `tasks[i]` names, a pure function of the env's seed and that index: the way to give
        two policies the same task list (evaluation).
        """

    def step(self, actions: Array, mask: Array | None = None) -> TimeStep:
        """Apply actions [N, action_dim] in [-1, 1] to the environments where mask [N] is True
        (all if None). The others do not move (their episode has ended, or their robot waits)
        and keep their rows of the last TimeStep; their actions are not read."""

    def optimal_length(self) -> Array:
        """[N] steps a perfect policy needs for the current tasks."""

    def close(self) -> None:
        """Frees what the envs hold (physics clients, worker processes); idempotent."""

    # Optional: `counters() -> dict[str, int]`, counts of events the env handled on its own
    # since it was made (Aloha: action chunks refused because the simulation went unstable), so
    # that they reach the stage's outputs instead of only a worker's log. Agents may have it too.


def counters(obj: object) -> dict[str, int]:
    """`obj.counters()` where an env or agent keeps counts (see VectorEnv), else {}."""
    fn = getattr(obj, "counters", None)
    return dict(fn()) if callable(fn) else {}


def add_counts(*counts: Mapping[str, int]) -> dict[str, int]:
    """The key-wise sum of count dicts (the shares of a subprocess env, the actors of a fleet)."""
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def replace_rows(last: TimeStep, rows: Sequence[int], new: TimeStep) -> TimeStep:
    """`last` with envs `rows` taken from `new` (a TimeStep of those envs, in that order). The
    arrays are new: a caller may hold views of `last`'s (an episode's buffered observations)."""
    idx = np.asarray(rows, np.int64)

    def merged(old: Array, part: Array) -> Array:
        out = old.copy()
        out[idx] = part
        return out

    instruction = list(last.instruction)
    for j, i in enumerate(idx):
        instruction[i] = new.instruction[j]
    return TimeStep(observation={k: merged(v, new.observation[k]) for k, v in last.observation.items()},
                    goal={k: merged(v, new.goal[k]) for k, v in last.goal.items()},
                    instruction=tuple(instruction), success=merged(np.asarray(last.success), new.success))


class ObservedEnv:
    """What the simulated domains share: per-env task streams, and the last TimeStep, kept, so
    that a reset observes (and renders) only the envs it reset. The others did not move since
    the last step, and in a rollout some env resets at nearly every step of demonstration
    generation: re-observing every env there rendered each frame twice. Subclasses call
    `_seed_envs` and implement `_reset_one(i, rng)` and `_observe(rows)`."""

    num_envs: int
    _seed: int
    _rngs: list[np.random.Generator]
    _last: TimeStep | None = None

    def _seed_envs(self, seed: int, first_env: int) -> None:
        """One random stream per env, so episodes depend on the seed and the env's index only
        (a worker of efm.envs.subprocess holding envs first_env.. gets the same episodes)."""
        self._seed = seed
        self._rngs = [np.random.default_rng([seed, first_env + i]) for i in range(self.num_envs)]

    def _reset_one(self, i: int, rng: np.random.Generator) -> None:
        """Start env i's next episode, its task drawn from `rng`."""
        raise NotImplementedError

    def _observe(self, rows: Sequence[int]) -> TimeStep:
        """The TimeStep of envs `rows` now, in that order."""
        raise NotImplementedError

    def reset(self, mask: Array | None = None, tasks: Array | None = None) -> TimeStep:
        resets = reset_rngs(self._rngs, self._seed, mask, tasks)
        for i, rng in resets:
            self._reset_one(i, rng)
        return self._timestep(None if mask is None else [i for i, _ in resets])

    def _timestep(self, rows: Sequence[int] | None = None) -> TimeStep:
        """Every env observed now (`rows` None), or only `rows`, the others as last observed."""
        if rows is None or self._last is None:
            self._last = self._observe(range(self.num_envs))
        elif len(rows):
            self._last = replace_rows(self._last, rows, self._observe(rows))
        return self._last


def step_rows(mask: Array | None, num_envs: int) -> list[int] | None:
    """The envs `VectorEnv.step(actions, mask)` moves: None for all (mask None), else their indices."""
    if mask is None:
        return None
    mask = np.asarray(mask, bool)
    if mask.shape != (num_envs,):
        raise ValueError(f"mask must have shape {(num_envs,)}, got {mask.shape}")
    return [int(i) for i in np.flatnonzero(mask)]


def task_rng(seed: int, task: int) -> np.random.Generator:
    """The generator task number `task` is drawn from: a pure function of the env's seed and it."""
    return np.random.default_rng([seed, int(task)])


def reset_rngs(rngs: Sequence[np.random.Generator], seed: int, mask: Array | None,
               tasks: Array | None) -> list[tuple[int, np.random.Generator]]:
    """(env index, generator of its next task) for the envs `VectorEnv.reset` resets: each env's
    own stream, or with `tasks` the numbered task's (`task_rng`)."""
    idx = range(len(rngs)) if mask is None else np.flatnonzero(mask)
    return [(int(i), rngs[i] if tasks is None else task_rng(seed, tasks[i])) for i in idx]


@dataclass
class Episode:
    """One episode: T+1 observations and T actions (RLDS: the last step has no action).

    `steps_to_go` labels follow from the layout: a successful episode reaches its goal at the
    last observation, so observation t is T - t steps from it.
    """

    observations: Observation  # key -> [T+1, ...]
    actions: Array  # [T, action_dim] float32
    instruction: str
    goal: dict[str, Array] = field(default_factory=dict)  # key -> [...] (constant in an episode)
    success: bool = False  # ground truth at the last observation
    episode_id: str = ""
    optimal_length: float = float("nan")
    observation_extras: dict[str, Array] = field(default_factory=dict)  # e.g. d(o, g): [T+1]
    action_extras: dict[str, Array] = field(default_factory=dict)  # e.g. sampled tokens: [T, ...]

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])

    def __post_init__(self) -> None:
        t = self.actions.shape[0]
        for k, v in self.observations.items():
            if v.shape[0] != t + 1:
                raise ValueError(
                    f"episode {self.episode_id!r}: observation {k!r} has {v.shape[0]} steps, "
                    f"expected {t + 1} (actions + 1)"
                )
