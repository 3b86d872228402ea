"""The coordinator's rounds and its best-round rule, with fake collection and learning."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from efm.config import SelfImproveConfig
from efm.self_improve.coordinator import (
    CUT_BY_FAULT,
    CoordinatorState,
    best_round,
    coordinate,
    cut_episodes,
    round_metrics,
    round_rate_series,
    round_score,
)


def row(success: float, length: float, episodes: int = 10, complete: bool = True) -> dict[str, float]:
    return {"episodes": float(episodes), "env_steps": length * episodes, "success_rate": success,
            "complete": float(complete)}


def test_a_lucky_round_alone_does_not_win_with_a_window() -> None:
    # Rounds 6-8 are consistently short; round 2 was one lucky short round among long ones.
    lengths = [30, 30, 12, 30, 30, 16, 14, 14, 14, 16]
    rounds = [row(1.0, x) for x in lengths]
    assert best_round(rounds, window=1) == 2
    assert best_round(rounds, window=3) == 7
    assert round_score(rounds, 7, 3) == (1.0, -14.0)
    # Success still comes first; pooling weighs rounds by their episodes.
    rounds[0] = row(1.0, 50, episodes=1)
    rounds[1] = row(1.0, 20, episodes=3)
    assert round_score(rounds, 0, 3) == (1.0, -(50 + 60 + 120) / 14)  # rounds 0-2: the window shifted inward


def test_every_round_is_scored_on_as_many_rounds_at_the_practices_ends() -> None:
    # One detection in each of rounds 2 and 4 and two in round 3, three in the last round (9).
    # A window cut short at the end (rounds 7-9, 30 episodes) made the last round's 3/30 beat
    # the middle's 4/50; shifted inward (rounds 5-9), it pools 50 episodes like every other.
    rounds = [row(0.0, 100) for _ in range(10)]
    for r, detected in {2: 1, 3: 2, 4: 1, 9: 3}.items():
        rounds[r] = row(detected / 10, 100)
    assert [round_score(rounds, r, 5) for r in (7, 8, 9)] == [(3 / 50, -100.0)] * 3
    assert round_score(rounds, 0, 5) == round_score(rounds, 2, 5) == (4 / 50, -100.0)
    assert best_round(rounds, window=5) == 4  # rounds 0-4 all pool 4 of 50: the latest wins


def test_rounds_the_detector_cannot_tell_apart_keep_the_latest_policy() -> None:
    # Nothing detected and every episode at the length limit: round 0 would be Stage 1's policy.
    rounds = [row(0.0, 100) for _ in range(6)] + [row(0.0, 100, complete=False)]
    assert best_round(rounds, window=1) == 5 and best_round(rounds, window=5) == 5
    rounds[2] = row(0.1, 100)  # any signal still wins
    assert best_round(rounds, window=1) == 2


def test_incomplete_rounds_are_never_picked_nor_pooled() -> None:
    rounds = [row(0.5, 20), row(1.0, 5, complete=False), row(0.6, 20)]
    assert best_round(rounds, window=1) == 2
    assert round_score(rounds, 0, 3) == (0.55, -20.0)  # rounds 0 and 2: round 1 left out of the pool
    assert best_round([row(1.0, 5, complete=False)], window=3) == 0


def test_episodes_detected_before_any_action_do_not_score_the_policy() -> None:
    # Round 1 detects as often as round 0, but half of its detections are the reward model firing
    # at the first observation (length 0): the policy acted in 8 episodes and succeeded in 2.
    fooled = row(0.4, 10) | {"env_steps": 80.0, "detected_at_start": 0.2}
    rounds = [row(0.4, 10), fooled]
    assert round_score(rounds, 1, 1) == (0.25, -10.0)
    assert best_round(rounds, window=1) == 0  # scored as successes of length 0, they made round 1 win
    assert round_score([row(1.0, 0) | {"detected_at_start": 1.0}], 0, 1) == (0.0, -math.inf)


def test_episodes_cut_by_a_fault_do_not_score_the_round() -> None:
    """Two rounds of the same 10 episodes, the second with 8 more cut by an actor's death (3
    steps in flight): success and length are over the ended episodes, so they score the same,
    and the crash neither shortens the round nor lends its cut episodes the round's success."""
    ended = [{"length": 20.0, "detected": 1.0, "success": 1.0}] * 5 + [{"length": 40.0, "detected": 0.0, "success": 0.0}] * 5
    rounds = [round_metrics(ended + cut_episodes(started=8, finished=0, steps=3)) | {"complete": 1.0},
              round_metrics(ended) | {"complete": 1.0}]
    assert round_score(rounds, 0, 1) == round_score(rounds, 1, 1) == (0.5, -30.0)
    assert best_round(rounds, window=1) == 1  # a tie: the latest, not the crashed round
    # rows of rounds.json written before ended episodes were recorded score as they did
    old = {k: v for k, v in rounds[1].items() if not k.startswith("ended_")}
    assert round_score([old], 0, 1) == round_score([rounds[1]], 0, 1)


def test_coordinate_keeps_the_best_rounds_policy_and_few_candidates() -> None:
    cfg = dataclasses.replace(SelfImproveConfig(), max_episodes=100, best_round_window=3)
    lengths = [30, 30, 12, 30, 30, 16, 14, 14, 14, 16]
    sizes: list[int] = []

    def collect(params: int, r: int, budget: int) -> list[dict[str, float]]:
        assert params == r  # the weights published after round r-1
        return [{"length": float(lengths[r]), "detected": 1.0, "success": 1.0}] * min(10, budget)

    def learn(lr: float) -> tuple[dict[str, float], int]:
        learned.append(lr)
        return {"updates": float(cfg.updates_per_round)}, len(learned)

    learned: list[float] = []
    result = coordinate(cfg, 0, collect, learn, progress=False,
                        on_round=lambda s: sizes.append(len(s.candidates)))
    assert result.total_episodes == 100 and len(result.rounds) == 10
    assert result.best_round == 7 and result.policy == 7  # the weights that collected round 7
    assert max(sizes) <= 3  # the settled best plus the rounds whose window is open


@pytest.mark.parametrize("window", [1, 3, 5])
def test_pruning_never_drops_the_round_kept_in_the_end(window: int) -> None:
    """Random rounds, some cut short mid-practice (too few samples for every update): the
    policy kept from the pruned candidates is the best of all rounds, scored at the end."""
    rng = np.random.default_rng(window)
    cfg = dataclasses.replace(SelfImproveConfig(), max_episodes=240, best_round_window=window)
    detected = rng.integers(0, 4, size=24)
    short = set(rng.choice(24, size=4, replace=False).tolist())

    def collect(params: int, r: int, budget: int) -> list[dict[str, float]]:
        return [{"length": 10.0 + (i >= detected[r]) * 40, "detected": float(i < detected[r]), "success": 0.0}
                for i in range(min(10, budget))]

    def learn(lr: float) -> tuple[dict[str, float], int]:
        r = len(learned)  # the round just collected; its weights are params r + 1
        learned.append(r)
        return {"updates": float(cfg.updates_per_round - (r in short))}, r + 1

    learned: list[int] = []
    result = coordinate(cfg, 0, collect, learn, progress=False)
    assert result.best_round == best_round(result.rounds, window) and result.policy == result.best_round
    assert not all(row["complete"] for row in result.rounds)


def test_coordinate_resumes_from_a_saved_state() -> None:
    cfg = dataclasses.replace(SelfImproveConfig(), max_episodes=40, best_round_window=1)
    calls: list[int] = []

    def collect(params: int, r: int, budget: int) -> list[dict[str, float]]:
        calls.append(r)
        return [{"length": 10.0 - r, "detected": 1.0, "success": 0.0}] * 10

    def learn(lr: float) -> tuple[dict[str, float], int]:
        return {"updates": float(cfg.updates_per_round)}, len(calls)

    saved: list[CoordinatorState] = []
    coordinate(dataclasses.replace(cfg, max_episodes=20), 0, collect, learn, progress=False,
               on_round=lambda s: saved.append(dataclasses.replace(s, rounds=list(s.rounds),
                                                                   candidates=dict(s.candidates))))
    result = coordinate(cfg, 0, collect, learn, progress=False, state=saved[-1])
    assert calls == [0, 1, 2, 3]  # rounds 0 and 1 are not collected again
    assert [r["round"] for r in result.rounds] == [0.0, 1.0, 2.0, 3.0]
    assert result.total_episodes == 40 and result.best_round == 3 and result.policy == 3


def test_episodes_cut_by_a_fault_count_in_the_budget_and_steps_only() -> None:
    """An actor killed with 2 episodes running (of 5 started, 3 finished) and 30 steps in flight:
    5 episodes and 60 + 30 steps in the round, success and length from the 3 that ended. Killed
    between episodes (nothing running) it cuts none, and its stale step report adds nothing."""
    finished = [{"length": 20.0, "detected": 1.0, "success": 1.0}] * 3
    cut = cut_episodes(started=5, finished=3, steps=30)
    assert len(cut) == 2 and all(e[CUT_BY_FAULT] for e in cut) and sum(e["length"] for e in cut) == 30
    m = round_metrics(finished + cut)
    assert (m["episodes"], m["env_steps"], m["success_rate"], m["mean_episode_length"]) == (5, 90, 1.0, 20.0)
    assert cut_episodes(started=3, finished=3, steps=12) == []
    assert m["detected_at_start"] == 0.0
    at_start = {"length": 0.0, "detected": 1.0, "success": 0.0}  # the reward model fired before any action
    assert round_metrics([*finished, at_start])["detected_at_start"] == 0.25


def test_task_stages_reached_are_reported_per_round_beside_ground_truth_success() -> None:
    """Aloha's episodes report whether they lifted the peg and the socket: the round holds the
    share of its ended episodes that did (cut ones have no say); other domains add nothing."""
    ended = [{"length": 30.0, "detected": 0.0, "success": 0.0, "key": 1.0, "peg_lifted": 1.0, "socket_lifted": 1.0},
             {"length": 40.0, "detected": 1.0, "success": 0.0, "key": 2.0, "peg_lifted": 0.0, "socket_lifted": 1.0}]
    m = round_metrics(ended + cut_episodes(started=3, finished=2, steps=10))
    assert (m["ground_truth_peg_lifted"], m["ground_truth_socket_lifted"]) == (0.5, 1.0)
    assert not any(k.startswith("ground_truth_") and k != "ground_truth_success_rate"
                   for k in round_metrics([{"length": 3.0, "detected": 1.0, "success": 1.0, "key": 0.0}]))


def test_the_per_round_plot_shows_the_task_stages_a_domain_reports() -> None:
    """Aloha's rounds plot the objects lifted beside success (flat at zero there); others plot success only."""
    ended = [{"length": 30.0, "detected": 0.0, "success": 0.0, "key": 1.0, "peg_lifted": 1.0, "socket_lifted": 0.0}]
    rounds = [{**round_metrics(ended), "total_episodes": 32.0}, {**round_metrics(ended * 2), "total_episodes": 64.0}]
    series = round_rate_series(rounds)
    assert series["ground truth: peg lifted"] == ([32.0, 64.0], [1.0, 1.0])
    assert series["ground truth: socket lifted"][1] == [0.0, 0.0]
    plain = [{**round_metrics([{"length": 3.0, "detected": 1.0, "success": 1.0, "key": 0.0}]), "total_episodes": 8.0}]
    assert set(round_rate_series(plain)) == {"detected success rate", "ground-truth success rate"}
