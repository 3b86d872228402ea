"""The vectorized tabletop environments (LanguageTable-like, Appendix D.1).

Success is ground truth at every step: the task's block within the family's threshold of its
target and every block of the task at rest, so a block sliding through the target does not
count. Besides the camera image, observations carry the privileged block positions when
`state_observation` is on: the scripted demonstrator reads them and state-based models may;
image-based models should ignore them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from efm.config import BananaTableConfig, EnvConfig, TabletopConfig
from efm.envs.base import Array, ObservedEnv, TimeStep, step_rows
from efm.envs.tabletop.geometry import (
    BLOCK_FRICTION,
    BLOCK_MASS,
    BLOCK_RADIUS,
    BLOCK_SHAPES,
    BLOCK_TRANSLATION,
    BLOCKS,
    COLOR_RGBA,
    EFFECTOR_RADIUS,
    EFFECTOR_TRANSLATION,
    RGB,
    WORKSPACE,
)
from efm.envs.tabletop.scene import (
    BodySpec,
    TableScene,
    scene_params,
)
from efm.envs.tabletop.tasks import (
    EFFECTOR_CLEARANCE,
    MIN_BLOCK_SPACING,
    SPAWN_MARGIN,
    Task,
    instruction_for,
    push_steps_estimate,
    sample_positions,
    sample_task,
    success_threshold,
    task_satisfied,
    task_target,
)

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


class TableEnvBase(ObservedEnv):
    """What the PyBullet table domains share: N scenes, bounded effector deltas, and the
    VectorEnv plumbing. Subclasses sample episodes (`_reset_one`) and observe (`_observe`)."""

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
        self._seed_envs(seed, first_env)
        self._scenes = [TableScene(scene_params(cfg), bodies) for _ in range(num_envs)]
        self._instructions = [""] * num_envs
        self._optimal = np.zeros(num_envs)

    def step(self, actions: Array, mask: Array | None = None) -> TimeStep:
        a = _validated_actions(actions, self.num_envs, self.action_dim)
        rows = step_rows(mask, self.num_envs)
        for i in range(self.num_envs) if rows is None else rows:
            scene = self._scenes[i]
            scene.move_effector(effector_targets(scene.command, a[i], self._max_delta))
        return self._timestep(rows)

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
        try:  # noqa: SIM105 (contextlib.suppress: at interpreter exit pybullet and module globals may be gone)
            self.close()
        except Exception:
            pass

    def _reset_one(self, i: int, rng: np.random.Generator) -> None:
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
        scene.start({name: (p, float(rng.uniform(-np.pi, np.pi))) for name, p in positions.items()}, effector[0])
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

    def _observe(self, rows: Sequence[int]) -> TimeStep:
        n = len(rows)
        effector = np.zeros((n, 2), np.float32)
        blocks = np.zeros((n, len(BLOCKS), 2), np.float32)
        success = np.zeros(n, bool)
        for j, i in enumerate(rows):
            scene = self._scenes[i]
            effector[j] = scene.effector_xy()
            positions = {name: scene.pose(name)[0] for name in self._on_board[i]}
            for name, p in positions.items():
                blocks[j, BLOCKS.index(name)] = p
            task = self._tasks[i]
            if task is not None:
                success[j] = task_satisfied(task, positions, self.cfg, self._start[i]) and all(
                    scene.speed(b) < self.cfg.stable_speed for b in task.blocks
                )
        obs = {EFFECTOR_TRANSLATION: effector}
        if self.cfg.state_observation:
            obs[BLOCK_TRANSLATION] = blocks
        if self.cfg.render_images:
            obs[RGB] = np.stack([self._scenes[i].render() for i in rows])
        return TimeStep(
            observation=obs, goal={}, instruction=tuple(self._instructions[i] for i in rows), success=success
        )
