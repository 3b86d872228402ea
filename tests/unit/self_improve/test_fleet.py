"""The fleet's pure parts: config flags, budgets, Ray options, the service's cross-actor
batching, the episode ledger and its reconciliation with what the learner took."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from efm import cli
from efm.config import FleetConfig, RoleResources, RunConfig, default_config
from efm.models.frame_cache import bucket_size
from efm.self_improve import distributed
from efm.self_improve.builder import actor_seed, with_fleet
from efm.self_improve.distributed import MonitorWorker, RoundLedger, ray_options, split_budget
from efm.self_improve.monitor import FleetMonitor
from efm.self_improve.service import BatchingStepsToGo, concat_padded, split_rows


def test_actors_and_ray_address_flags_select_the_ray_fleet() -> None:
    cfg = default_config()
    assert with_fleet(cfg) == cfg and cfg.self_improve.runtime == "single_process"
    four = with_fleet(cfg, 4)
    assert (four.self_improve.runtime, four.self_improve.num_actors, four.self_improve.fleet.ray_address) == ("ray", 4, "")
    joined = with_fleet(cfg, None, "ray://head:10001")
    assert joined.self_improve.runtime == "ray" and joined.self_improve.fleet.ray_address == "ray://head:10001"
    args = cli.build_parser().parse_args(["self-improve", "--select", "s", "--out", "o", "--actors", "3"])
    assert cli._config(args).self_improve.num_actors == 3
    # Per-role resources and the Version flag come from the config, round-trip through JSON.
    fleet = FleetConfig(policy_inference="learner", actor=RoleResources(num_cpus=1, resources={"robot": 1}))
    rt = RunConfig.from_json(cfg.replace(self_improve=cfg.self_improve.__class__(fleet=fleet)).to_json())
    assert rt.self_improve.fleet == fleet
    assert ray_options(fleet.actor, max_restarts=2) == {"num_cpus": 1, "num_gpus": 0.0, "max_restarts": 2,
                                                        "resources": {"robot": 1}}
    with pytest.raises(ValueError, match="policy_inference"):
        FleetConfig(policy_inference="remote")  # type: ignore[arg-type]
    assert FleetConfig().bind_host == "127.0.0.1"  # loopback unless configured


def test_actor_seeds_are_never_shared() -> None:
    """Actor 0's first life in a fresh task keeps the branch seed (the committed results); no
    other actor, life or resumed task meets another's stream, in a branch or across branches
    (`seed + index` gave branch 0's actor 1 the stream of branch 1's actor 0)."""
    assert [actor_seed(s, 0) for s in (0, 1, 7, 12345)] == [0, 1, 7, 12345]
    grid = [(s, k, life, r) for s in range(10) for k in range(8) for life in range(4) for r in range(0, 61, 3)]
    seeds = [actor_seed(*g) for g in grid]
    assert len(set(seeds)) == len(grid)
    assert all(0 <= x < 2**32 for x in seeds)  # JAX keeps a seed's low 32 bits only
    assert actor_seed(0, 1) != actor_seed(1, 0) and actor_seed(0, 0, rounds_done=2) != actor_seed(0, 0)


def test_a_restarted_monitor_does_not_hand_out_lives_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray restarts the monitor with its count of lives lost: the lives it hands out next must
    not be ones an actor had before (0, 1, ...), or a restarted actor replays an earlier life's
    boards and action samples."""
    class Context:
        was_current_actor_reconstructed = False

    monkeypatch.setattr(distributed.ray, "get_runtime_context", lambda: Context())
    assert MonitorWorker().actor_started(0) == 0  # a first monitor: the counted lives
    Context.was_current_actor_reconstructed = True
    firsts = [MonitorWorker().actor_started(0) for _ in range(5)]
    assert min(firsts) > 10 and len(set(firsts)) == 5
    restarted = MonitorWorker()
    base = restarted.actor_started(4)
    assert [restarted.actor_started(3) for _ in range(3)] == [base, base + 1, base + 2]  # counted on
    assert 0 <= actor_seed(0, 3, firsts[0]) < 2**32


def test_budget_split_over_actors() -> None:
    assert split_budget(10, 3) == [4, 3, 3] and sum(split_budget(7, 4)) == 7


def test_batches_are_padded_to_few_shapes_and_split_back() -> None:
    assert [bucket_size(n) for n in (1, 2, 3, 5, 32, 33)] == [1, 2, 4, 8, 32, 64]
    reqs = [{"x": np.arange(3.0)[:, None]}, {"x": np.arange(10.0, 12.0)[:, None]}]
    batch, sizes = concat_padded(reqs)
    assert batch["x"].shape == (8, 1) and sizes == [3, 2]
    parts = split_rows(batch["x"][:, 0] * 2, sizes)
    np.testing.assert_array_equal(parts[1], [20.0, 22.0])


class CountingService:
    version = "test"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.batches.append(len(inputs["x"]))
        return inputs["x"][:, 0] + 1.0


def test_concurrent_actors_share_one_forward_pass() -> None:
    inner = CountingService()
    service = BatchingStepsToGo(inner, wait_s=5.0, max_callers=4)  # type: ignore[arg-type]
    results: dict[int, np.ndarray] = {}

    def actor(i: int) -> None:
        results[i] = service.steps_to_go({"x": np.full((2, 1), float(i))})

    threads = [threading.Thread(target=actor, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inner.batches == [8]  # the leader waited for all four actors
    assert all(np.array_equal(results[i], [i + 1.0, i + 1.0]) for i in range(4))
    assert service.stats == {"batches": 1, "requests": 4, "rows": 8}


def test_ledger_accounts_for_every_episode() -> None:
    monitor = FleetMonitor()
    monitor.call_started(0, 7, 0)
    monitor.episodes_started(7, 3)
    monitor.episode_finished(7, 100, {"length": 5.0})
    monitor.episode_written(7, 100)
    monitor.episode_finished(7, 101, {"length": 4.0})  # killed during its write
    entry = monitor.call_ledger(7)
    assert entry["known"] and entry["started"] == 3 and entry["written"] == [100] and not monitor.call_ledger(8)["known"]
    ledger = RoundLedger()
    ledger.killed_calls[7] = entry
    ledger.expected = {100, 200}
    row = ledger.reconcile({"taken": [100, 200, 300], "learned": [100, 300]})
    assert row["lost"] == 0 and row["duplicates"] == 0 and row["writes_cut_by_fault"] == 1
    assert row["episodes_learned"] == 2 and row["episodes_discarded_at_clear"] == 1
    assert RoundLedger().reconcile({"taken": [1, 1], "learned": [1]})["duplicates"] == 1
    ledger.expected = {5}
    assert ledger.reconcile({"taken": [], "learned": []})["lost"] == 1


def test_operator_stop_and_pause() -> None:
    monitor = FleetMonitor()
    monitor.status(0, {"step": 3})
    monitor.status(1, {"step": 1})
    monitor.request_stop()
    assert monitor.take_stop(0) and monitor.take_stop(1) and not monitor.take_stop(0)
    monitor.set_paused(True)
    assert monitor.paused() and monitor.snapshot()["paused"]


def test_a_pause_set_between_rounds_holds_the_next_rounds_first_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The actor side of the monitor polls the pause before new episodes, not only while
    stepping: set while no episode ran, it is seen at the next poll interval."""
    import types

    from efm.self_improve import distributed

    monitor = FleetMonitor()

    def remote(method: object) -> types.SimpleNamespace:
        return types.SimpleNamespace(remote=method)

    handle = types.SimpleNamespace(paused=remote(monitor.paused), take_stop=remote(monitor.take_stop))
    monkeypatch.setattr(distributed.ray, "get", lambda x: x)  # the fake handle answers at once
    clock = [100.0]
    monkeypatch.setattr(distributed.time, "monotonic", lambda: clock[0])
    actor_side = distributed.RemoteMonitor(handle, poll_s=0.2)
    assert not actor_side.paused() and not actor_side.take_stop(0)  # a round's steps
    monitor.set_paused(True)  # the operator, between rounds
    clock[0] += 0.3
    assert actor_side.paused()
    monitor.set_paused(False)
    assert not actor_side.paused()  # while paused it asks every time
