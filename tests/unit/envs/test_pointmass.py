"""The pointmass domain: tasks, dynamics, success, optimal length and the demonstrator."""

from __future__ import annotations

import numpy as np
import pytest

from efm.config import EnvConfig, PointmassConfig
from efm.envs.pointmass import (
    POSITION,
    TARGET,
    PointmassEnv,
    WaypointDemonstrator,
    clip_to_unit_norm,
)
from efm.rollout import rollout

CFG = EnvConfig()
PM = CFG.pointmass


def straight_line_success_steps(env: PointmassEnv, max_steps: int = 60) -> np.ndarray:
    """First step at which each env is a success under the full-speed straight-line policy."""
    ts = env.reset()
    first = np.full(env.num_envs, -1)
    for t in range(max_steps + 1):
        first[(first < 0) & ts.success] = t
        if (first >= 0).all():
            break
        d = ts.goal[TARGET] - ts.observation[POSITION]
        ts = env.step(d / np.linalg.norm(d, axis=-1, keepdims=True))
    return first


def test_same_seed_same_tasks_and_trajectories() -> None:
    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        env = PointmassEnv(CFG, 8, seed)
        ts = env.reset()
        targets = ts.goal[TARGET]
        positions = [ts.observation[POSITION]]
        actions = np.random.default_rng(0).uniform(-1, 1, (10, 8, 2))
        for a in actions:
            positions.append(env.step(a).observation[POSITION])
        env.reset(np.array([True, False] * 4))
        return targets, np.stack([*positions, env.reset(np.ones(8, bool)).goal[TARGET]])

    t1, p1 = run(3)
    t2, p2 = run(3)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(p1, p2)
    t3, p3 = run(4)
    assert not np.allclose(t1, t3) and not np.allclose(p1, p3)


def test_start_target_distance_at_least_min() -> None:
    env = PointmassEnv(CFG, 1000, 0)
    ts = env.reset()
    d = np.linalg.norm(ts.goal[TARGET] - ts.observation[POSITION], axis=-1)
    assert d.min() >= PM.min_start_target_distance
    h = PM.arena_half_size
    assert np.abs(ts.observation[POSITION]).max() <= h and np.abs(ts.goal[TARGET]).max() <= h
    # Partial reset only changes the masked envs.
    mask = np.zeros(1000, bool)
    mask[:10] = True
    ts2 = env.reset(mask)
    np.testing.assert_array_equal(ts2.goal[TARGET][10:], ts.goal[TARGET][10:])
    assert not np.allclose(ts2.goal[TARGET][:10], ts.goal[TARGET][:10])


def test_action_clipped_to_box_then_unit_norm() -> None:
    env = PointmassEnv(CFG, 4, 0)
    env.reset()
    env._pos[:] = 0.0  # center: no wall in reach
    before = env._pos.copy()
    ts = env.step(np.array([[0.9, 0.9], [0.3, 0.4], [-2.0, 0.5], [0.6, -0.8]], np.float32))
    disp = (ts.observation[POSITION] - before) / PM.max_speed
    np.testing.assert_allclose(disp[0], [1 / np.sqrt(2)] * 2, atol=1e-5)  # norm 1.27 -> 1
    np.testing.assert_allclose(disp[1], [0.3, 0.4], atol=1e-5)  # inside the unit ball: as is
    np.testing.assert_allclose(disp[2], np.array([-1.0, 0.5]) / np.hypot(1.0, 0.5), atol=1e-5)
    np.testing.assert_allclose(disp[3], [0.6, -0.8], atol=1e-5)
    assert np.linalg.norm(disp, axis=-1).max() <= 1 + 1e-5
    np.testing.assert_allclose(clip_to_unit_norm(np.array([[0.0, -2.0]])), [[0.0, -1.0]])


def test_positions_clipped_to_arena() -> None:
    env = PointmassEnv(CFG, 2, 0)
    env.reset()
    env._pos[:] = [[0.95, -0.95], [0.0, 0.0]]
    ts = env.step(np.array([[1.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(ts.observation[POSITION], [[1.0, -0.95], [0.0, 0.0]], atol=1e-6)
    for _ in range(30):
        ts = env.step(np.array([[0.0, -1.0], [-1.0, 0.0]]))
    assert np.abs(ts.observation[POSITION]).max() <= PM.arena_half_size
    np.testing.assert_allclose(ts.observation[POSITION], [[1.0, -1.0], [-1.0, 0.0]], atol=1e-6)


def test_success_iff_within_radius() -> None:
    env = PointmassEnv(CFG, 4, 0)
    env.reset()
    env._target[:] = 0.0
    env._pos[:] = [[0.05, 0.0], [0.0, 0.099], [0.11, 0.0], [0.08, 0.08]]  # last: |.| = 0.113
    ts = env.step(np.zeros((4, 2)))
    np.testing.assert_array_equal(ts.success, [True, True, False, False])


def test_optimal_length_formula_and_achieved_by_straight_line() -> None:
    env = PointmassEnv(CFG, 300, 1)
    first = straight_line_success_steps(env)
    start, target = env._start.astype(np.float64), env._target.astype(np.float64)
    dist = np.linalg.norm(target - start, axis=-1)
    expected = np.ceil((dist - PM.success_radius) / PM.max_speed)
    np.testing.assert_array_equal(env.optimal_length(), expected)
    # Full speed in a straight line succeeds at exactly the optimal step (never earlier).
    np.testing.assert_array_equal(first, expected)


def test_optimal_length_scales_with_speed() -> None:
    cfg = EnvConfig(pointmass=PointmassConfig(max_speed=0.05))
    env = PointmassEnv(cfg, 100, 2)
    first = straight_line_success_steps(env, max_steps=120)
    np.testing.assert_array_equal(first, env.optimal_length())
    assert env.optimal_length().min() >= np.ceil((0.6 - 0.1) / 0.05)


def test_demonstrator_succeeds_but_is_suboptimal() -> None:
    n = 50
    env = PointmassEnv(CFG, n, 0)
    demo = WaypointDemonstrator(CFG, n, 1)
    episodes = list(rollout(env, demo, max_steps=CFG.max_episode_steps, episodes_per_env=2))
    assert len(episodes) == 2 * n
    success = np.mean([e.success for e in episodes])
    lengths = np.array([e.length for e in episodes], float)
    optimal = np.array([e.optimal_length for e in episodes])
    assert success >= 0.95
    assert lengths.max() <= CFG.max_episode_steps
    assert lengths.mean() >= 2 * optimal.mean()
    for e in episodes:  # consistent: success at the last observation only
        d = np.linalg.norm(e.observations[POSITION] - e.goal[TARGET], axis=-1)
        if e.success:
            assert d[-1] <= PM.success_radius and (d[:-1] > PM.success_radius).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_demonstrator_deterministic(seed: int) -> None:
    def run() -> list[np.ndarray]:
        eps = rollout(PointmassEnv(CFG, 4, seed), WaypointDemonstrator(CFG, 4, seed + 1), max_steps=100,
                      episodes_per_env=1)
        return [e.actions for e in sorted(eps, key=lambda e: e.episode_id)]

    for a, b in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_reset_with_task_indices_is_a_pure_function_of_seed_and_index() -> None:
    """Evaluation hands tasks out by index, so two policies see the same task list."""
    a = PointmassEnv(CFG, 3, seed=7)
    ts_a = a.reset(tasks=np.array([4, 0, 9]))
    b = PointmassEnv(CFG, 3, seed=7)
    b.reset()  # a different history of resets and steps does not matter
    b.step(np.ones((3, 2)))
    ts_b = b.reset(np.array([True, True, True]), tasks=np.array([9, 4, 0]))
    for k in (POSITION,):
        np.testing.assert_array_equal(ts_a.observation[k][[0, 1, 2]], ts_b.observation[k][[1, 2, 0]])
    np.testing.assert_array_equal(ts_a.goal[TARGET][[0, 1, 2]], ts_b.goal[TARGET][[1, 2, 0]])
    # masked: only env 1 changes, to task 4
    ts_c = b.reset(np.array([False, True, False]), tasks=np.array([0, 4, 0]))
    np.testing.assert_array_equal(ts_c.goal[TARGET][1], ts_a.goal[TARGET][0])
    np.testing.assert_array_equal(ts_c.goal[TARGET][[0, 2]], ts_b.goal[TARGET][[0, 2]])
    other_seed = PointmassEnv(CFG, 3, seed=8).reset(tasks=np.array([4, 0, 9]))
    assert not np.allclose(other_seed.goal[TARGET], ts_a.goal[TARGET])
    d = np.linalg.norm(ts_a.goal[TARGET] - ts_a.observation[POSITION], axis=-1)
    assert (d >= PM.min_start_target_distance).all()


def test_a_masked_step_moves_only_the_envs_it_steps() -> None:
    env = PointmassEnv(CFG, 4, seed=0)
    before = env.reset().observation[POSITION]
    actions = np.full((4, 2), 0.5, np.float32)
    after = env.step(actions, np.array([False, True, True, False])).observation[POSITION]
    np.testing.assert_array_equal(after[[0, 3]], before[[0, 3]])
    np.testing.assert_allclose(after[[1, 2]], before[[1, 2]] + PM.max_speed * clip_to_unit_norm(actions[[1, 2]]),
                               atol=1e-6)
