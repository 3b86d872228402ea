"""The subprocess vector env: the same episodes as the in-process env, errors and clean exits."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from efm.config import EnvConfig, debug_config
from efm.domains import MIN_ENVS_PER_WORKER, env_workers, make_env, make_local_env
from efm.envs.base import TimeStep, add_counts, counters
from efm.envs.subprocess import SubprocessVectorEnv, shares
from efm.stages import generate_demonstrations


def _cfg(domain: str, **kw: object) -> EnvConfig:
    cfg = debug_config(domain).env
    return replace(cfg, **kw)


def _assert_same(a: TimeStep, b: TimeStep) -> None:
    assert a.observation.keys() == b.observation.keys()
    for k in a.observation:
        np.testing.assert_array_equal(a.observation[k], b.observation[k], err_msg=k)
    assert a.goal.keys() == b.goal.keys()
    assert a.instruction == b.instruction
    np.testing.assert_array_equal(a.success, b.success)


def _pid_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def test_shares_split_evenly_and_cover_every_env() -> None:
    assert shares(8, 3) == [(0, 3), (3, 5), (5, 8)]
    assert shares(5, 5) == [(i, i + 1) for i in range(5)]
    with pytest.raises(ValueError, match="num_workers"):
        SubprocessVectorEnv(_cfg("tabletop"), 2, 0, 3)


@pytest.mark.parametrize("domain", ["tabletop", "bananatable"])
def test_workers_give_the_in_process_episodes_images_included(domain: str) -> None:
    cfg, n, seed = _cfg(domain), 5, 11
    rng = np.random.default_rng(0)
    with make_local_env(cfg, n, seed) as local, SubprocessVectorEnv(cfg, n, seed, num_workers=2) as sub:
        first = sub.reset()
        assert first.observation["rgb"].shape[:1] == (n,)  # images travel back from the workers
        _assert_same(local.reset(), first)
        np.testing.assert_array_equal(local.optimal_length(), sub.optimal_length())
        for t in range(8):
            actions = rng.uniform(-1, 1, (n, local.action_dim))
            _assert_same(local.step(actions), sub.step(actions))
            if t % 3 == 2:  # new episodes in some envs only, some shares untouched
                mask = np.zeros(n, bool)
                mask[[0, 1]] = True
                _assert_same(local.reset(mask), sub.reset(mask))
                np.testing.assert_array_equal(local.optimal_length(), sub.optimal_length())
        tasks = np.array([7, 3, 9, 0, 4])  # named tasks (evaluation's fixed list), every share
        _assert_same(local.reset(tasks=tasks), sub.reset(tasks=tasks))
        mask = np.array([False, False, False, True, True])  # the second share only
        _assert_same(local.reset(mask, tasks + 5), sub.reset(mask, tasks + 5))
        for mask in ([True, False, True, False, False], [False, False, False, False, True]):  # one share idle
            actions = rng.uniform(-1, 1, (n, local.action_dim))
            _assert_same(local.step(actions, np.array(mask)), sub.step(actions, np.array(mask)))


def test_counters_add_up_key_wise_and_default_to_none() -> None:
    assert add_counts({"a": 1}, {"a": 2, "b": 1}, {}) == {"a": 3, "b": 1}
    assert counters(object()) == {}  # an env or agent without counts


def test_aloha_workers_give_the_in_process_episodes() -> None:
    cfg, n, seed = _cfg("aloha-insertion"), 3, 5
    rng = np.random.default_rng(0)
    with make_local_env(cfg, n, seed) as local, SubprocessVectorEnv(cfg, n, seed, num_workers=2) as sub:
        _assert_same(local.reset(), sub.reset())
        actions = rng.uniform(-0.3, 0.3, (n, local.action_dim))
        _assert_same(local.step(actions), sub.step(actions))
        mask = np.array([False, True, False])
        _assert_same(local.reset(mask), sub.reset(mask))
        assert sub.counters() == local.counters() == {"rejected_chunks": 0}  # the shares' counts, summed


def test_demonstrations_do_not_depend_on_the_number_of_workers() -> None:
    cfg = debug_config("tabletop")
    episodes = {}
    for workers in (1, 3):
        c = cfg.replace(env=replace(cfg.env, num_workers=workers))
        episodes[workers] = list(generate_demonstrations(c, num_episodes=6, seed=4, num_envs=4))
    for a, b in zip(episodes[1], episodes[3], strict=True):
        assert (a.episode_id, a.instruction, a.success, a.optimal_length) == (
            b.episode_id, b.instruction, b.success, b.optimal_length)
        np.testing.assert_array_equal(a.actions, b.actions)
        for k in a.observations:
            np.testing.assert_array_equal(a.observations[k], b.observations[k])


def test_close_ends_and_reaps_every_worker() -> None:
    env = SubprocessVectorEnv(_cfg("bananatable"), 3, 0, num_workers=3)
    pids, procs = env.worker_pids, list(env._procs)
    assert all(_pid_exists(p) for p in pids)
    env.reset()
    env.close()
    assert [p.exitcode for p in procs] == [0, 0, 0]  # asked to stop, not terminated
    assert not any(_pid_exists(p) for p in pids)  # reaped: no zombies left behind
    env.close()  # idempotent
    with SubprocessVectorEnv(_cfg("bananatable"), 2, 0, num_workers=2) as env:
        pids = env.worker_pids
    assert not any(_pid_exists(p) for p in pids)


def test_a_worker_error_is_raised_in_the_parent_and_the_env_stays_usable() -> None:
    with SubprocessVectorEnv(_cfg("tabletop"), 4, 0, num_workers=2) as env:
        env.reset()
        with pytest.raises(ValueError, match="actions must have shape"):
            env.step(np.zeros((3, 2)))
        bad = np.zeros((4, 2))
        bad[3] = np.nan
        with pytest.raises(ValueError, match="finite"):
            env.step(bad)
        assert env.step(np.zeros((4, 2))).success.shape == (4,)


@pytest.mark.parametrize("dead", [0, 1])
def test_a_dead_worker_is_reported_as_one_whichever_it_is(dead: int) -> None:
    """A worker killed between calls: a send to it breaks its pipe, a read from it ends; both
    are the same error, and the other worker's answer is read so close() finds it idle."""
    env = SubprocessVectorEnv(_cfg("tabletop"), 4, 0, num_workers=2)
    env.reset()
    env._procs[dead].kill()
    env._procs[dead].join()
    for call in (lambda: env.step(np.zeros((4, 2))), env.reset, env.counters):
        with pytest.raises(RuntimeError, match="an env worker exited unexpectedly"):
            call()
    alive = env._procs[1 - dead]
    env.close()
    assert alive.exitcode == 0  # it answered every request, then was asked to stop


def test_automatic_worker_count_and_config() -> None:
    cores = len(os.sched_getaffinity(0))
    assert env_workers(_cfg("pointmass"), 1000) == 1
    assert env_workers(_cfg("tabletop"), MIN_ENVS_PER_WORKER - 1) == 1
    assert env_workers(_cfg("tabletop"), 1000) == cores
    assert env_workers(_cfg("tabletop", num_workers=1), 1000) == 1
    assert env_workers(_cfg("tabletop", num_workers=3), 2) == 2
    with pytest.raises(ValueError, match=r"env\.num_workers"):
        _cfg("pointmass", num_workers=2)
    with pytest.raises(ValueError, match=r"env\.num_workers"):
        _cfg("tabletop", num_workers=-1)
    env = make_env(_cfg("tabletop", num_workers=2), 2, 0)
    try:
        assert isinstance(env, SubprocessVectorEnv)
    finally:
        env.close()
