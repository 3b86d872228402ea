"""Algorithm 1 end to end on a tiny config: budget, rounds, on-policy replay; one process and Ray."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import pytest
import ray

from efm.config import FleetConfig, RunConfig, debug_config
from efm.domains import make_env
from efm.models.efm import make_functions
from efm.models.tokenizers import make_vocabulary
from efm.self_improve import builder as builder_module
from efm.self_improve.builder import FleetBuilder
from efm.self_improve.coordinator import coordinate
from efm.self_improve.distributed import (
    RemoteStepsToGo,
    died,
    drilled_collect,
    kill_actor_mid_episode,
    kill_service,
    start_ray,
    wait_mid_episode,
)
from efm.self_improve.loop import SelfImproveResult, self_improve, stop_file


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """One embedded Ray for this module's fleets (each start costs 10-30 s on 2 cores); a
    fleet's close() leaves a Ray it did not start running."""
    started = start_ray("", "127.0.0.1")
    yield
    if started:
        ray.shutdown()


def tiny(runtime: str = "single_process", **changes: object) -> RunConfig:
    cfg = debug_config()
    fields = {"runtime": runtime, "max_episodes": 10, "num_envs": 4, "batch_size": 8, "updates_per_round": 2,
              **changes}
    si = dataclasses.replace(cfg.self_improve, **fields)
    return cfg.replace(self_improve=si)


def params(cfg: RunConfig, seed: int) -> dict:
    return FleetBuilder(cfg).init_params(seed)


def run(cfg: RunConfig, **kwargs: object) -> SelfImproveResult:
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    return self_improve(cfg, fns, params(cfg, 0), params(cfg, 1), progress=False, **kwargs)


def check_rounds(result: SelfImproveResult, cfg: RunConfig) -> None:
    si = cfg.self_improve
    assert result.total_episodes <= si.max_episodes  # the practice budget is never overshot
    assert sum(r["episodes"] for r in result.rounds) == result.total_episodes
    assert [r["total_episodes"] for r in result.rounds] == list(np.cumsum([r["episodes"] for r in result.rounds]))
    assert result.total_env_steps == sum(r["env_steps"] for r in result.rounds)
    assert [r["total_env_steps"] for r in result.rounds] == list(np.cumsum([r["env_steps"] for r in result.rounds]))
    for r in result.rounds:
        # every started episode finished into the replay: the learner held every step executed
        assert r["samples_held"] == r["env_steps"]
        assert r["samples_used"] == r["updates"] * si.batch_size <= r["samples_held"]
        assert 0 <= r["updates"] <= si.updates_per_round
        assert 0.0 <= r["success_rate"] <= 1.0 and 0.0 <= r["ground_truth_success_rate"] <= 1.0
        assert r["learning_rate"] <= si.learning_rate
    assert 0 <= result.best_round < len(result.rounds)


def test_single_process_spends_the_budget_in_full_rounds() -> None:
    cfg = tiny()
    result = run(cfg)
    check_rounds(result, cfg)
    assert result.total_episodes == cfg.self_improve.max_episodes
    assert len(result.rounds) >= 2
    # A full round trains N times on N*B samples; the learning rate decays over the budget.
    assert result.rounds[0]["updates"] == cfg.self_improve.updates_per_round
    assert result.rounds[-1]["learning_rate"] < result.rounds[0]["learning_rate"]
    # The kept policy is the one that collected the best round, not the untouched initial one
    # unless round 0 was best.
    initial = params(cfg, 0)
    same = jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, result.policy, initial))
    assert same == (result.best_round == 0)


def test_a_fleet_that_fails_part_way_closes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """The learner fails to build after the Reverb server and two actors exist: both actors'
    envs and the server are closed (actors first), and the learner's error reaches the caller."""
    cfg = tiny(num_actors=2)
    closed: list[str] = []
    builder = FleetBuilder(cfg)
    make_replay, make_actor = builder.make_replay_server, builder.make_actor

    def replay_server(*args: object, **kwargs: object) -> object:
        server = make_replay(*args, **kwargs)
        close = server.close
        server.close = lambda: (closed.append("replay"), close())[-1]  # type: ignore[method-assign]
        return server

    def actor(i: int, *args: object, **kwargs: object) -> object:
        made = make_actor(i, *args, **kwargs)
        close = made.close
        made.close = lambda: (closed.append(f"actor {i}"), close())[-1]  # type: ignore[method-assign]
        return made

    def no_learner(*_: object) -> object:
        raise RuntimeError("no accelerator for the learner")

    for name, fn in {"make_replay_server": replay_server, "make_actor": actor, "make_learner": no_learner}.items():
        object.__setattr__(builder, name, fn)  # the builder is a frozen dataclass
    with pytest.raises(RuntimeError, match="no accelerator"):
        builder.build(params(cfg, 0), params(cfg, 1))
    assert closed == ["actor 1", "actor 0", "replay"]


def test_a_stop_file_made_before_any_episode_ends_none(tmp_path: Path) -> None:
    """A STOP made while no episode runs (before the run, or between rounds) is consumed and
    ends nothing: it used to end every env's first episode at length 0, a failure."""
    cfg = tiny(max_episodes=4)
    flag = tmp_path / "STOP"
    flag.touch()
    interrupt = stop_file(flag)
    result = run(cfg, interrupt=interrupt)
    assert not flag.exists()  # consumed
    assert result.rounds[0]["mean_episode_length"] > 0 and result.total_env_steps > 0
    assert interrupt() is False


def test_ray_fleet_survives_a_killed_actor_and_a_killed_service(ray_session: object) -> None:
    """Real embedded Ray, real Reverb: actor 0 is SIGKILLed mid-episode in round 0, the
    steps-to-go service mid-round in round 1; both rounds complete."""
    cfg = tiny("ray", num_actors=2, max_episodes=20, max_rounds=2, batch_size=16)
    si = cfg.self_improve
    fleet = FleetBuilder(cfg).build(params(cfg, 0), params(cfg, 1))
    killed: list[int | None] = []
    service_kills: list[int] = []

    def drill(r: int) -> None:
        if r == 0:
            killed.append(kill_actor_mid_episode(fleet, 0, r))
        elif wait_mid_episode(fleet, 1, r) is not None:
            service_kills.append(kill_service(fleet))

    collect = drilled_collect(fleet, drill)

    try:
        result = coordinate(si, params(cfg, 0), collect, fleet.learn_round, progress=False)
        stats = fleet.stats()
        live = ray.get(fleet.monitor.snapshot.remote())["actors"]
    finally:
        fleet.close()
    assert len(killed) == 1 and killed[0] is not None and len(service_kills) == 1
    faults = stats["faults"]
    assert faults["actor_kills"] == 1 and result.rounds[0]["actor_kills"] == 1
    assert faults["lost"] == 0 and faults["duplicates"] == 0
    assert faults["episodes_cut_by_fault"] >= 1  # the killed actor was mid-episode
    assert stats["service_retries"] >= 1  # actors retried through the service's restart
    assert len(result.rounds) == 2 and result.total_episodes <= si.max_episodes
    for row in result.rounds:
        assert row["updates"] == si.updates_per_round  # each round completed its N updates
        # Every finished episode reached the replay once; the cut ones never did.
        held = row["episodes_learned"] + row["episodes_discarded_at_clear"]
        assert held == row["episodes"] - row["episodes_cut_by_fault"] - row["writes_cut_by_fault"]
    assert result.rounds[1]["samples_held"] == result.rounds[1]["env_steps"]  # no actor died in round 1
    assert int(live["0"]["pid"]) != killed[0]  # actor 0 was restarted and rejoined


def test_actors_wait_out_a_slow_service_restart_and_a_failed_round_is_not_a_kill(
        ray_session: object, tmp_path: Path) -> None:
    """A service whose restart outlasts `retries` x `delay_s` (its model loading on a busy
    machine) is waited for, not given up on; and a round that raises (an actor giving up on the
    service) is an error, not the actor's death, though Ray makes it an ActorDiedError too."""
    marker = str(tmp_path / "started")

    @ray.remote(max_restarts=-1)
    class SlowToRestart:
        def __init__(self) -> None:
            if os.path.exists(marker):
                time.sleep(3.0)
            open(marker, "w").close()

        def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
            return inputs["x"] + 1

        def pid(self) -> int:
            return os.getpid()

        def give_up(self) -> None:
            raise ray.exceptions.ActorDiedError()

    service = SlowToRestart.remote()
    client = RemoteStepsToGo(service, retries=1, delay_s=0.05)
    assert client.steps_to_go({"x": np.array(1)}) == 2
    os.kill(ray.get(service.pid.remote()), signal.SIGKILL)
    assert client.steps_to_go({"x": np.array(1)}) == 2 and client.retried == 1
    with pytest.raises(ray.exceptions.ActorDiedError) as raised:
        ray.get(service.give_up.remote())
    assert not died(raised.value)
    os.kill(ray.get(service.pid.remote()), signal.SIGKILL)
    with pytest.raises(ray.exceptions.RayActorError) as raised:
        ray.get(service.pid.remote())
    assert died(raised.value)
    ray.kill(service)


def test_version_1_serves_actions_from_the_learner(ray_session: object) -> None:
    """Version 1 on Ray: no weights go to the actor; the learner serves every action between
    its updates, with the weights of the round, and each round's samples carry that round's
    policy version. Given the same random keys the learner's actions are the actor's own, so
    one actor on Ray gives the single-process rounds."""
    cfg = tiny("ray", max_episodes=12, fleet=FleetConfig(policy_inference="learner"))
    result = run(cfg)
    check_rounds(result, cfg)
    assert len(result.rounds) >= 2 and result.total_episodes == cfg.self_improve.max_episodes
    assert [r["policy_version"] for r in result.rounds] == [float(r) for r in range(len(result.rounds))]
    assert result.fleet["policy_inference"] == "learner" and result.fleet["policy_latency_ms_p50"] > 0
    served = result.fleet["actions_served_by_learner"]  # policy version -> actions
    assert sorted(served) == list(range(len(result.rounds)))  # every round's actions, by that round's weights
    num_envs = cfg.self_improve.num_envs
    for r, row in enumerate(result.rounds):  # every step's action; each call asks for all N envs'
        assert row["env_steps"] <= served[r] <= num_envs * row["env_steps"]
    single = run(tiny(max_episodes=12))
    assert [r["episodes"] for r in result.rounds] == [r["episodes"] for r in single.rounds]
    assert [r["env_steps"] for r in result.rounds] == [r["env_steps"] for r in single.rounds]
    np.testing.assert_allclose([r["loss"] for r in result.rounds], [r["loss"] for r in single.rounds], rtol=1e-4)


def untimed(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if not k.endswith("_seconds")}


def test_single_process_run_is_reproducible() -> None:
    """The same seed gives the same rounds and policy, whatever order Reverb samples in."""
    cfg = tiny()
    a, b = run(cfg), run(cfg)
    assert [untimed(r) for r in a.rounds] == [untimed(r) for r in b.rounds]
    assert all(r["collect_seconds"] > 0 and r["learn_seconds"] > 0 for r in a.rounds)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a.policy, b.policy))


class Crash(Exception):
    pass


def test_restarted_run_resumes_from_the_last_completed_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task dies after round 1 is saved; a restart carries on from round 2 with the saved
    policy, optimizer state, round counter and candidate policies, and spends the budget. Its
    actor draws other boards than round 0's (it used to be built with the same seed)."""
    cfg = tiny(max_episodes=16, best_round_window=3)
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    saved: list[int] = []
    seeds: list[int] = []

    class RecordedActor(builder_module.Actor):  # type: ignore[misc,name-defined]
        def __init__(self, *args: object, seed: int, **kwargs: object) -> None:
            seeds.append(seed)
            super().__init__(*args, seed=seed, **kwargs)

    monkeypatch.setattr(builder_module, "Actor", RecordedActor)

    def crash_after_round_1() -> None:
        saved.append(len(saved))
        if len(saved) == 2:
            raise Crash

    with pytest.raises(Crash):
        self_improve(cfg, fns, params(cfg, 0), params(cfg, 1), progress=False, resume_dir=tmp_path,
                     on_round=crash_after_round_1)
    first = json.loads((tmp_path / "state.json").read_text())
    assert len(first["rounds"]) == 2 and first["version"] == 2
    resumed = self_improve(cfg, fns, params(cfg, 0), params(cfg, 1), progress=False, resume_dir=tmp_path)
    uninterrupted = run(cfg)
    check_rounds(resumed, cfg)
    assert resumed.rounds[:2] == first["rounds"]  # not collected again
    assert resumed.total_episodes == cfg.self_improve.max_episodes
    # The same rounds as a run never interrupted, up to the actors' fresh random streams: the
    # same number of rounds and updates, and the learner's step counter carried on.
    assert len(resumed.rounds) == len(uninterrupted.rounds)
    assert [r["updates"] for r in resumed.rounds] == [r["updates"] for r in uninterrupted.rounds]
    assert [r["round"] for r in resumed.rounds] == list(map(float, range(len(resumed.rounds))))
    first_life, resumed_life, fresh = seeds
    assert first_life == fresh == cfg.self_improve.seed  # an uninterrupted run keeps its seed
    boards = [make_env(cfg.env, cfg.self_improve.num_envs, seed).reset().goal for seed in (first_life, resumed_life)]
    assert not any(np.array_equal(boards[0][k], boards[1][k]) for k in boards[0])
