"""The shared episode loop, driven by a scripted fake environment and agent."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from efm.envs.base import TimeStep
from efm.rollout import SUCCESS, rollout, rollout_steps


class ScriptedEnv:
    """Env i's j-th episode succeeds after lengths[i][j] steps (any action). 1-D actions."""

    action_dim = 1

    def __init__(self, lengths: list[list[int]]):
        self.num_envs = len(lengths)
        self._lengths = lengths
        self._episode = np.full(self.num_envs, -1)
        self._count = np.zeros(self.num_envs, np.int64)
        self.steps_taken = 0
        self.env_steps = np.zeros(self.num_envs, np.int64)  # actions applied, per env
        self.tasks_given: list[tuple[int, int]] = []  # (env, task index) per reset with tasks

    def _target(self) -> np.ndarray:
        return np.array([self._lengths[i][min(self._episode[i], len(self._lengths[i]) - 1)]
                         for i in range(self.num_envs)])

    def _ts(self) -> TimeStep:
        return TimeStep(observation={"count": self._count.copy(), "episode": self._episode.copy()},
                        goal={"target": self._target().astype(np.float32)},
                        instruction=tuple(f"env{i}" for i in range(self.num_envs)),
                        success=self._count >= self._target())

    def reset(self, mask: np.ndarray | None = None, tasks: np.ndarray | None = None) -> TimeStep:
        mask = np.ones(self.num_envs, bool) if mask is None else mask
        self._episode[mask] += 1
        self._count[mask] = 0
        if tasks is not None:
            self.tasks_given.extend((i, int(tasks[i])) for i in np.flatnonzero(mask))
        return self._ts()

    def step(self, actions: np.ndarray, mask: np.ndarray | None = None) -> TimeStep:
        assert actions.shape == (self.num_envs, 1)
        moved = np.ones(self.num_envs, bool) if mask is None else np.asarray(mask, bool)
        self.steps_taken += 1
        self.env_steps += moved
        self._count += moved
        return self._ts()

    def optimal_length(self) -> np.ndarray:
        return self._target().astype(float)


class CountingAgent:
    def __init__(self, num_envs: int):
        self.resets = np.zeros(num_envs, np.int64)

    def reset(self, mask: np.ndarray) -> None:
        self.resets += np.asarray(mask, np.int64)

    def observe(self, ts: TimeStep) -> dict[str, np.ndarray]:
        return {"double": 2.0 * ts.observation["count"]}

    def act(self, ts: TimeStep) -> dict[str, np.ndarray]:
        c = ts.observation["count"]
        return {"action": c[:, None].astype(np.float32),
                "tokens": np.stack([c, c + 1, c + 2], axis=-1).astype(np.int32)}


def check_episode(e) -> None:
    t = e.length
    assert e.observations["count"].shape == (t + 1,)
    np.testing.assert_array_equal(e.observations["count"], np.arange(t + 1))
    np.testing.assert_array_equal(e.actions[:, 0], np.arange(t))  # a_t taken at o_t
    assert e.actions.shape == (t, 1)
    np.testing.assert_array_equal(e.observation_extras["double"], 2.0 * np.arange(t + 1))
    assert e.observation_extras[SUCCESS].shape == (t + 1,)
    assert e.observation_extras[SUCCESS][-1] == e.success
    assert not e.observation_extras[SUCCESS][:-1].any()
    assert e.action_extras["tokens"].shape == (t, 3)
    np.testing.assert_array_equal(e.action_extras["tokens"][:, 1], np.arange(t) + 1)
    assert "action" not in e.action_extras


def test_episodes_end_on_ground_truth_success_and_record_everything() -> None:
    env = ScriptedEnv([[3], [5], [1]])
    episodes = list(rollout(env, CountingAgent(3), max_steps=100, episodes_per_env=1))
    by_env = {e.instruction: e for e in episodes}
    assert sorted(by_env) == ["env0", "env1", "env2"]
    for name, length in (("env0", 3), ("env1", 5), ("env2", 1)):
        e = by_env[name]
        assert e.length == length and e.success
        assert e.optimal_length == length
        assert float(e.goal["target"]) == length
        check_episode(e)
    assert [e.length for e in episodes] == [1, 3, 5]  # yielded as they finish


def test_episodes_end_at_max_steps() -> None:
    env = ScriptedEnv([[1000], [4]])
    episodes = list(rollout(env, CountingAgent(2), max_steps=7, episodes_per_env=1))
    by_env = {e.instruction: e for e in episodes}
    assert by_env["env0"].length == 7 and not by_env["env0"].success
    assert by_env["env1"].length == 4 and by_env["env1"].success
    for e in episodes:
        check_episode(e)


def test_episodes_per_env_quota_keeps_long_episodes() -> None:
    lengths = [[2, 2, 2], [40, 1, 1], [3, 30, 3], [1, 1, 25]]
    env = ScriptedEnv(lengths)
    agent = CountingAgent(4)
    episodes = list(rollout(env, agent, max_steps=100, episodes_per_env=3))
    assert len(episodes) == 3 * 4
    for i, ls in enumerate(lengths):
        mine = sorted((e for e in episodes if e.instruction == f"env{i}"), key=lambda e: e.episode_id)
        assert [e.length for e in mine] == ls  # every episode, long ones included, in order
        assert [int(e.observations["episode"][0]) for e in mine] == [0, 1, 2]
        assert len({e.episode_id for e in mine}) == 3
    for e in episodes:
        assert e.success
        check_episode(e)
    # Each env was reset for its 3 episodes only (1 initial + 2 restarts).
    np.testing.assert_array_equal(agent.resets, [3, 3, 3, 3])


def test_envs_move_only_while_their_episode_runs() -> None:
    # An ended episode's env waits for its reset (a robot would otherwise act once more after
    # success), and an env past its quota stays still while the others finish.
    lengths = [[2, 2, 2], [40, 1, 1], [3, 30, 3], [1, 1, 25]]
    env = ScriptedEnv(lengths)
    episodes = list(rollout(env, CountingAgent(4), max_steps=100, episodes_per_env=3))
    assert all(e.success for e in episodes)
    np.testing.assert_array_equal(env.env_steps, [sum(ls) for ls in lengths])
    # env 1 sets the pace: its 42 steps, and a call for each of its two restarts, where it waits
    assert env.steps_taken == 44


def test_unbounded_rollout_keeps_going() -> None:
    env = ScriptedEnv([[2] * 50, [3] * 50])
    episodes = list(itertools.islice(rollout(env, CountingAgent(2), max_steps=100), 9))
    assert len(episodes) == 9 and all(e.success for e in episodes)


def test_interrupt_ends_all_active_episodes() -> None:
    env = ScriptedEnv([[100], [100], [2]])
    stop_after = 5

    def interrupt() -> bool:
        return env.steps_taken >= stop_after

    episodes = list(rollout(env, CountingAgent(3), max_steps=100, episodes_per_env=1, interrupt=interrupt))
    lengths = {e.instruction: e.length for e in episodes}
    assert lengths == {"env0": stop_after, "env1": stop_after, "env2": 2}
    assert env.steps_taken == stop_after  # nothing stepped after the interrupt
    for e in episodes:
        check_episode(e)
    assert [e.success for e in episodes if e.instruction != "env2"] == [False, False]


def test_interrupt_never_ends_an_episode_before_its_first_action() -> None:
    """A stop seen at an episode's first observation (asked while none ran) ends nothing: it
    would leave a 0-step failure. Stops come at the first observation (nothing ends) and after
    3 steps: env 1's episode ends there, env 0's second, just begun, runs on."""
    env = ScriptedEnv([[2, 3], [4]])
    calls = iter(range(100))
    episodes = list(rollout(env, CountingAgent(2), max_steps=100, episodes_per_env=None, max_episodes=3,
                            interrupt=lambda: next(calls) in (0, 3)))
    assert sorted((e.instruction, e.length) for e in episodes) == [("env0", 2), ("env0", 3), ("env1", 3)]
    assert all(e.length > 0 for e in episodes)


def test_interrupt_per_env_array() -> None:
    env = ScriptedEnv([[100], [100]])
    episodes = list(rollout(env, CountingAgent(2), max_steps=100, episodes_per_env=1,
                            interrupt=lambda: np.array([env.steps_taken >= 3, env.steps_taken >= 6])))
    assert {e.instruction: e.length for e in episodes} == {"env0": 3, "env1": 6}


def test_custom_end_on_uses_observed_extras() -> None:
    env = ScriptedEnv([[100], [100]])
    episodes = list(rollout(env, CountingAgent(2), max_steps=100, episodes_per_env=1,
                            end_on=lambda ts, extras: extras["double"] >= 8))
    assert [e.length for e in episodes] == [4, 4]
    assert not any(e.success for e in episodes)  # success is ground truth, not end_on


@pytest.mark.parametrize("k", [1, 2])
def test_episode_ids_unique(k: int) -> None:
    env = ScriptedEnv([[1, 2], [2, 1]])
    episodes = list(rollout(env, CountingAgent(2), max_steps=10, episodes_per_env=k, id_prefix="x"))
    ids = [e.episode_id for e in episodes]
    assert len(ids) == 2 * k == len(set(ids)) and all(i.startswith("x-") for i in ids)


def test_zero_length_episode_action_extras_keep_their_shape() -> None:
    env = ScriptedEnv([[1, 0], [3, 3]])  # env0's second episode is a success at its first observation
    episodes = list(rollout(env, CountingAgent(2), max_steps=10, episodes_per_env=2))
    empty = [e for e in episodes if e.length == 0]
    assert len(empty) == 1
    assert empty[0].action_extras["tokens"].shape == (0, 3)


def test_may_start_stops_starting_but_running_episodes_finish() -> None:
    """The Self-Improvement rule: once enough is collected or in flight, start nothing new,
    and run every started episode (here a long one) to its end."""
    env = ScriptedEnv([[3] * 20, [30]])
    collected: list[int] = []
    asked: list[int] = []

    def may_start(in_flight: int) -> bool:
        asked.append(in_flight)
        return sum(collected) + in_flight < 20

    episodes = []
    for finished in rollout_steps(env, CountingAgent(2), max_steps=100, may_start=may_start):
        collected += [e.length for e in finished]
        episodes += finished
    lengths = sorted(e.length for e in episodes)
    assert 30 in lengths  # the long in-flight episode was kept, not dropped
    assert lengths == [3] * 3 + [30]
    # in_flight is env1's steps so far plus the one it takes next (a finished env's restart
    # costs one vectorized step, so env0's episodes end at steps 3, 7, 11): 3+1, 7+1, 11+1;
    # at 9 + 12 >= 20 nothing starts; the last ask comes when env1 ends at 30.
    assert asked == [0, 4, 8, 12, 0]
    assert sum(collected) >= 20  # the bound is conservative: the target is always reached
    for e in episodes:
        check_episode(e)


def test_may_start_false_at_the_beginning_starts_nothing() -> None:
    env = ScriptedEnv([[3], [3]])
    assert list(rollout_steps(env, CountingAgent(2), max_steps=10, may_start=lambda n: False)) == []
    assert env.steps_taken == 0


def test_fixed_tasks_are_k_times_n_plus_i_whatever_the_finishing_order() -> None:
    env = ScriptedEnv([[5, 1, 1], [1, 1, 7], [2, 9, 1]])
    episodes = list(rollout(env, CountingAgent(3), max_steps=100, episodes_per_env=3, fixed_tasks=True))
    assert len(episodes) == 9
    assert sorted(env.tasks_given) == sorted((i, k * 3 + i) for i in range(3) for k in range(3))
    # each env's k-th reset got task k * N + i, in order
    for i in range(3):
        assert [t for j, t in env.tasks_given if j == i] == [i, 3 + i, 6 + i]
