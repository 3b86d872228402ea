"""One round exactly as Algorithm 1: the actor's stopping rule, whole episodes in the replay,
policy versions on samples, the learner's on-policy check, and the freeze-name check."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import numpy as np
import pytest

from efm.config import RunConfig, debug_config
from efm.envs.base import TimeStep
from efm.models.efm import EFMFunctions, make_functions
from efm.models.tokenizers import make_vocabulary
from efm.rollout import ACTION
from efm.self_improve.actor import (
    ACTION_TOKENS,
    POLICY_VERSION,
    RETURN,
    SAMPLE_ID,
    STEPS_TO_GO,
    Actor,
)
from efm.self_improve.coordinator import round_metrics
from efm.self_improve.learner import Learner, check_freeze, module_names
from efm.self_improve.loop import STOP, replay_spec, self_improve, stop_file
from efm.self_improve.monitor import FleetMonitor
from efm.self_improve.replay import ReverbReplay


class ScriptedPointEnv:
    """Env i's j-th episode reaches its goal after lengths[i][j] steps (any action)."""

    action_dim = 2

    def __init__(self, lengths: list[list[int]]):
        self.num_envs = len(lengths)
        self._lengths = lengths
        self._episode = np.full(self.num_envs, -1)
        self._count = np.zeros(self.num_envs, np.int64)
        self.resets = 0

    def _target(self) -> np.ndarray:
        return np.array([self._lengths[i][min(self._episode[i], len(self._lengths[i]) - 1)]
                         for i in range(self.num_envs)])

    def _ts(self) -> TimeStep:
        pos = np.stack([self._count, self._episode], axis=-1).astype(np.float32)
        return TimeStep(observation={"position": pos}, goal={"target": np.zeros((self.num_envs, 2), np.float32)},
                        instruction=("go",) * self.num_envs, success=self._count >= self._target())

    def reset(self, mask: np.ndarray | None = None, tasks: np.ndarray | None = None) -> TimeStep:
        mask = np.ones(self.num_envs, bool) if mask is None else mask
        self._episode[mask] += 1
        self._count[mask] = 0
        self.resets += int(np.sum(mask))
        return self._ts()

    def step(self, actions: np.ndarray, mask: np.ndarray | None = None) -> TimeStep:
        self._count += np.ones(self.num_envs, bool) if mask is None else np.asarray(mask, bool)
        return self._ts()

    def optimal_length(self) -> np.ndarray:
        return self._target().astype(float)


class OracleAgent:
    """d(o, g) = 0 exactly when the scripted episode is over (the detector fires), else 10."""

    def __init__(self, env: ScriptedPointEnv, num_tokens: int):
        self._env, self._num_tokens = env, num_tokens

    def update(self, params: object) -> None:
        del params

    def reset(self, mask: np.ndarray) -> None:
        del mask

    def observe(self, ts: TimeStep) -> dict[str, np.ndarray]:
        return {STEPS_TO_GO: np.where(ts.success, 0.0, 10.0).astype(np.float32)}

    def act(self, ts: TimeStep) -> dict[str, np.ndarray]:
        n = len(ts.success)
        return {ACTION: np.zeros((n, 2), np.float32), ACTION_TOKENS: np.zeros((n, self._num_tokens), np.int32)}


def tiny(**changes: object) -> RunConfig:
    cfg = debug_config()
    fields = {"batch_size": 4, "updates_per_round": 5, **changes}  # N*B = 20
    return cfg.replace(self_improve=dataclasses.replace(cfg.self_improve, **fields))


def functions(cfg: RunConfig) -> EFMFunctions:
    return make_functions(cfg.model, make_vocabulary(cfg.tokenizer))


def init_params(fns: EFMFunctions, seed: int = 0) -> dict:
    inputs = {"observation/position": np.zeros((1, 2), np.float32), "goal/target": np.zeros((1, 2), np.float32)}
    return fns.init(jax.random.PRNGKey(seed), inputs)


@pytest.fixture
def setup() -> Iterator[tuple[RunConfig, EFMFunctions, ReverbReplay]]:
    cfg = tiny()
    fns = functions(cfg)
    with ReverbReplay.local(replay_spec(fns, cfg), timeout_s=5.0) as replay:
        yield cfg, fns, replay


def scripted_actor(cfg: RunConfig, fns: EFMFunctions, replay: ReverbReplay, lengths: list[list[int]],
                   index: int = 0, monitor: FleetMonitor | None = None) -> tuple[Actor, ScriptedPointEnv]:
    actor = Actor(cfg, fns, None, None, replay, seed=0, actor_index=index, monitor=monitor)  # type: ignore[arg-type]
    env = ScriptedPointEnv(lengths)
    actor._env = env  # scripted episode lengths instead of a policy's
    actor._agent = OracleAgent(env, fns.vocab.action.num_tokens)  # type: ignore[assignment]
    return actor, env


def take_all(replay: ReverbReplay) -> list[dict[str, np.ndarray]]:
    return replay.take_episodes(replay.num_episodes())


def test_round_keeps_long_in_flight_episodes(setup) -> None:
    """Quick episodes fill the replay first; the long one still running is finished and kept
    (it used to be dropped, so every round looked 100% successful and short)."""
    cfg, fns, replay = setup
    actor, env = scripted_actor(cfg, fns, replay, [[3] * 50, [3] * 50, [45]])
    summaries = actor.run_round(None, 0, max_episodes=100, target_size=cfg.self_improve.samples_per_round)
    lengths = sorted(s["length"] for s in summaries)
    assert 45.0 in lengths
    # counts add up: every started episode finished, and every one is in the replay, whole
    assert env.resets == len(summaries)
    assert replay.num_episodes() == len(summaries)
    assert replay.size() == sum(lengths) >= cfg.self_improve.samples_per_round
    episodes = take_all(replay)
    assert sorted(len(e[RETURN]) for e in episodes) == lengths
    for e in episodes:  # whole: ids of consecutive steps of one episode
        ids = e[SAMPLE_ID]
        np.testing.assert_array_equal(ids, ids[0] + np.arange(len(ids)))
        np.testing.assert_array_equal(e[POLICY_VERSION], np.zeros(len(ids)))


def test_round_stops_starting_once_replay_and_in_flight_reach_target(setup) -> None:
    cfg, fns, replay = setup
    actor, _ = scripted_actor(cfg, fns, replay, [[4] * 50, [4] * 50])
    summaries = actor.run_round(None, 3, max_episodes=100, target_size=20)
    total = sum(s["length"] for s in summaries)
    assert total >= 20
    # Stopping as soon as replay + in-flight reached 20 bounds the overshoot by what was in flight.
    assert total - 20 < 2 * 4 + 2
    assert all(int(v) == 3 for e in take_all(replay) for v in e[POLICY_VERSION])


def test_round_respects_the_episode_budget(setup) -> None:
    cfg, fns, replay = setup
    actor, env = scripted_actor(cfg, fns, replay, [[2] * 50, [2] * 50])
    summaries = actor.run_round(None, 0, max_episodes=3, target_size=1000)
    assert len(summaries) == env.resets == 3
    assert replay.size() == 6


@pytest.mark.parametrize("by", ["file", "console"])
def test_a_stop_made_between_rounds_cuts_no_episode(setup, tmp_path, by: str) -> None:
    """STOP while the learner runs (no episode running): the next round's episodes all run
    to their end; none is ended at length 0 and counted as a failure."""
    cfg, fns, replay = setup
    monitor = FleetMonitor()
    actor, _ = scripted_actor(cfg, fns, replay, [[5] * 20, [5] * 20], monitor=monitor)
    monitor.status(0, {})  # the actor was seen by the console in an earlier round
    if by == "file":
        (tmp_path / STOP).touch()
        actor._interrupt = stop_file(tmp_path / STOP)
    else:
        monitor.request_stop(None)
    summaries = actor.run_round(None, 0, max_episodes=100, target_size=20)
    assert [s["length"] for s in summaries] == [5.0] * len(summaries) and len(summaries) >= 4
    assert round_metrics(summaries)["success_rate"] == 1.0
    assert not (tmp_path / STOP).exists() and not monitor.take_stop(0)  # seen, not kept for later


def test_actor_counts_the_other_actors_in_flight_samples(setup) -> None:
    """Actors collecting at once count each other's running episodes toward N*B (counting only
    their own, K actors gathered about K*N*B per round)."""
    cfg, fns, replay = setup
    monitor = FleetMonitor()
    monitor.call_started(1, 9, 0)
    assert monitor.claim_in_flight(1, 9, 12) == 0  # actor 1's running episodes: 12 samples at least
    monitor.call_started(2, 11, 1)
    monitor.claim_in_flight(2, 11, 100)  # another round's: not counted
    actor, _ = scripted_actor(cfg, fns, replay, [[4] * 50, [4] * 50], monitor=monitor)
    summaries = actor.run_round(None, 0, max_episodes=100, target_size=20, call=5)
    total = sum(s["length"] for s in summaries)
    assert 20 - 12 <= total < 20
    assert total - (20 - 12) < 2 * 4 + 2
    assert monitor.claim_in_flight(1, 9, 12) == 0  # actor 0's episodes all ended: none in flight
    monitor.call_started(3, 9, 0)
    assert monitor.claim_in_flight(3, 9, 5) == 12  # actor 1's claim
    monitor.actor_died(1)  # its running episodes are lost: the others no longer wait on them
    assert monitor.claim_in_flight(3, 9, 5) == 0


def test_each_life_of_an_actor_is_numbered() -> None:
    """A restarted actor's seed offset: 0 for its first process, then one more per restart,
    so a second restart draws other episodes than the first."""
    monitor = FleetMonitor()
    assert [monitor.actor_started(0) for _ in range(3)] == [0, 1, 2]
    assert monitor.actor_started(1) == 0


def test_second_actor_starts_nothing_once_the_replay_is_full(setup) -> None:
    cfg, fns, replay = setup
    first, _ = scripted_actor(cfg, fns, replay, [[5] * 50], index=0)
    second, env = scripted_actor(cfg, fns, replay, [[5] * 50], index=1)
    first.run_round(None, 0, max_episodes=100, target_size=20)
    assert second.run_round(None, 0, max_episodes=100, target_size=20) == []
    assert env.resets == 0


def test_learner_draws_from_every_episode_and_checks_the_policy_version(setup) -> None:
    cfg, fns, replay = setup
    si = cfg.self_improve
    learner = Learner(fns, init_params(fns), si)
    actor, _ = scripted_actor(cfg, fns, replay, [[3] * 50, [30]])
    summaries = actor.run_round(None, learner.version, max_episodes=100, target_size=si.samples_per_round)
    metrics = learner.run_round(replay)
    assert metrics["samples_held"] == sum(s["length"] for s in summaries)
    assert metrics["samples_used"] == si.samples_per_round and metrics["updates"] == si.updates_per_round
    assert replay.size() == 0 and learner.version == 1
    # Samples of the old policy (version 0) reaching the learner at version 1 are refused.
    actor.run_round(None, 0, max_episodes=100, target_size=si.samples_per_round)
    with pytest.raises(ValueError, match=r"off-policy samples: the replay holds policy versions \[0\]"):
        learner.run_round(replay)


def test_freeze_names_are_checked() -> None:
    cfg = tiny()
    fns = functions(cfg)
    params = init_params(fns)
    # The state-only pointmass policy declares a vision encoder that holds no parameters:
    # the default freeze is accepted.
    assert "vision_encoder" not in params and "vision_encoder" in module_names(params, fns.model, ("vision_encoder",))
    check_freeze(params, ("vision_encoder",), fns.model)
    check_freeze(params, ("decoder_0", "head"), fns.model)
    with pytest.raises(ValueError, match=r"'vison_encoder'.*available module names: \[.*'decoder_0'.*'vision_encoder'"):
        check_freeze(params, ("vison_encoder",), fns.model)
    with pytest.raises(ValueError, match="'kernel'"):  # a leaf is not a module
        check_freeze(params, ("kernel",), fns.model)
    with pytest.raises(ValueError, match="'vison_encoder'"):
        Learner(fns, params, dataclasses.replace(cfg.self_improve, freeze=("vison_encoder",)))


def test_freeze_typo_raises_before_any_rollout(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny(freeze=("vision_encoder", "decoders"))
    fns = functions(cfg)

    def no_replay(*args: object, **kwargs: object) -> None:
        raise AssertionError("the replay was started before the freeze check")

    monkeypatch.setattr(ReverbReplay, "local", no_replay)
    for runtime in ("single_process", "ray"):
        bad = cfg.replace(self_improve=dataclasses.replace(cfg.self_improve, runtime=runtime))
        with pytest.raises(ValueError, match="'decoders'"):
            self_improve(bad, fns, init_params(fns), init_params(fns, 1), progress=False)
