"""The coordinator of Algorithm 1 (Appendix J): rounds of collect, pause, N updates, clear,
publish weights, resume, within the practice budget; and which round's policy to keep.

It knows nothing of processes: `collect_round` and `learn_round` are given by whoever built the
roles (one process, or Ray actors; see `builder.py`), so the same rounds run in every runtime.
Success is not monotone over rounds (Section 6), so the policy of the best round is kept,
judged on detected success and then episode length, never on ground truth. One round's
episodes are few (about 70 on pointmass), and the best of some 60 noisy round scores is an
optimistic pick; a round is therefore scored on the episodes of the `best_round_window` rounds
centred on it (shifted inward at the practice's ends), whose policies differ by a few updates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from efm.config import SelfImproveConfig
from efm.progress import progress_bar
from efm.types import Logger

CUT_BY_FAULT = "cut_by_fault"  # an episode running on an actor that died: started, never finished


SUMMARY_KEYS = {"length", "detected", "success", "key", CUT_BY_FAULT}  # the rest: task stages reached


def round_metrics(episodes: list[dict[str, float]]) -> dict[str, float]:
    """What a round's episode summaries say about the policy that collected them. Episodes cut
    by a fault count as started (the budget) and by their steps, not in success or length.
    The task stages the episodes report (Aloha's objects lifted) become ground_truth_<stage>:
    the share that reached each, reported like ground-truth success and never used."""
    finished = [e for e in episodes if not e.get(CUT_BY_FAULT)]
    ended = finished or [{"length": 0.0, "detected": 0.0, "success": 0.0}]
    stages = sorted(set(ended[0]) - SUMMARY_KEYS)
    return {
        **{f"ground_truth_{k}": float(np.mean([e[k] for e in ended])) for k in stages},
        "episodes": float(len(episodes)),  # every episode started this round
        "env_steps": float(sum(e["length"] for e in episodes)),
        # the episodes the rates below are over, and their steps: what `round_score` weighs
        "ended_episodes": float(len(finished)),
        "ended_env_steps": float(sum(e["length"] for e in finished)),
        "success_rate": float(np.mean([e["detected"] for e in ended])),  # learned detector, no ground truth
        "mean_episode_length": float(np.mean([e["length"] for e in ended])),
        "ground_truth_success_rate": float(np.mean([e["success"] for e in ended])),  # reported, never used
        # detected at the first observation, before any action: the reward model, not the policy
        "detected_at_start": float(np.mean([e["detected"] > 0 and e["length"] == 0 for e in ended])),
    }


def round_rate_series(rounds: list[dict[str, float]]) -> dict[str, tuple[list[float], list[float]]]:
    """Per-round rates to plot against the practice episodes: detected and ground-truth success,
    and the shares of the task stages a domain reports (Aloha's objects lifted), which show
    progress where success stays at zero."""
    x = [r["total_episodes"] for r in rounds]
    stages = sorted(k for k in (rounds[0] if rounds else {}) if k.startswith("ground_truth_")
                    and k != "ground_truth_success_rate")
    names = {"success_rate": "detected success rate", "ground_truth_success_rate": "ground-truth success rate",
             **{k: "ground truth: " + k.removeprefix("ground_truth_").replace("_", " ") for k in stages}}
    return {name: (x, [r[k] for r in rounds]) for k, name in names.items()}


def cut_episodes(started: int, finished: int, steps: int) -> list[dict[str, float]]:
    """Summaries of the episodes an actor was running when it died (`started - finished`),
    sharing the `steps` it last reported in flight; none where it died between episodes."""
    cut = max(0, started - finished)
    return [{"length": steps / cut, "detected": 0.0, "success": 0.0, CUT_BY_FAULT: 1.0}] * cut if cut else []


def window_positions(p: int, window: int, n: int) -> range:
    """The `window` consecutive positions centred on position p of n, shifted inward where the
    start or the end would cut them short: every round is then scored on as many rounds, so a
    single detection weighs the same at the practice's ends as in its middle."""
    lo = min(max(0, p - window // 2), max(0, n - window))
    return range(lo, min(n, lo + window))


def round_score(rounds: list[dict[str, float]], r: int, window: int) -> tuple[float, float]:
    """(detected success rate, -mean episode length) of the `window` complete rounds centred on
    round r (`window_positions`), pooled over the episodes the policy acted in. Round r must be
    complete; incomplete rounds are neither scored nor pooled.

    Episodes the reward model called a success at their first observation (`detected_at_start`)
    are left out: no action was taken, so they score the task draw, not the policy, and would
    count as successes of length 0. So are episodes cut by a fault: the rates are over the
    episodes that ended, and a cut episode's partial steps would make the round look shorter."""
    complete = [i for i, row in enumerate(rounds) if row["complete"]]
    pool = [rounds[complete[p]] for p in window_positions(complete.index(r), window, len(complete))]
    at_start = [row.get("detected_at_start", 0.0) for row in pool]  # absent from rounds.json before it
    ended = [_ended(row) for row in pool]
    acted = sum(n * (1.0 - s) for (n, _), s in zip(ended, at_start, strict=True))
    if acted <= 0:
        return 0.0, -math.inf
    success = sum((row["success_rate"] - s) * n for row, (n, _), s in zip(pool, ended, at_start, strict=True)) / acted
    length = sum(steps for _, steps in ended) / acted
    return success, -length


def _ended(row: dict[str, float]) -> tuple[float, float]:
    """(episodes, env steps) of the round's ended episodes; rounds.json rows written before
    they were recorded hold only every started episode's (the same where no actor died)."""
    return row.get("ended_episodes", row["episodes"]), row.get("ended_env_steps", row["env_steps"])


def _best_of(rounds: list[dict[str, float]], candidates: list[int], window: int) -> int:
    """The candidate round with the best pooled score, the latest on ties (see `best_round`)."""
    return max(candidates, key=lambda r: (round_score(rounds, r, window), r))


def best_round(rounds: list[dict[str, float]], window: int) -> int:
    """The complete round with the best pooled score, the latest on ties; round 0 if none is
    complete (a budget too small for one full round). Ties are where the detector tells rounds
    apart no better than chance (on the table: no success detected, every episode at the length
    limit): there the most practised policy is kept, not round 0's, which is Stage 1's."""
    candidates = [r for r, row in enumerate(rounds) if row["complete"] and row["episodes"] > 0]
    if not candidates:
        return 0
    return _best_of(rounds, candidates, window)


@dataclass(frozen=True)
class SelfImproveResult:
    rounds: list[dict[str, float]]
    best_round: int
    total_episodes: int  # every episode started (the practice budget)
    total_env_steps: int  # environment steps those episodes executed
    policy: Any
    fleet: dict[str, Any] = field(default_factory=dict)  # a fleet's own figures: faults survived, batching


CollectFn = Callable[[Any, int, int], list[dict[str, float]]]  # (params, round, max episodes) -> summaries
LearnFn = Callable[[float], tuple[dict[str, float], Any]]  # (learning rate) -> (metrics, new params)


@dataclass
class CoordinatorState:
    """Everything a restarted coordinator needs to carry on after the last completed round.

    `candidates` holds the policies of rounds whose pooled score is not final yet (the centred
    window reaches past the last round, so it still moves with each new one) and of the best
    round so far; older ones are dropped.
    """

    rounds: list[dict[str, float]] = field(default_factory=list)
    params: Any = None  # the weights the next round collects with
    candidates: dict[int, Any] = field(default_factory=dict)

    @property
    def total_episodes(self) -> int:
        return int(self.rounds[-1]["total_episodes"]) if self.rounds else 0

    @property
    def total_env_steps(self) -> int:
        return int(self.rounds[-1]["total_env_steps"]) if self.rounds else 0


def prune_candidates(state: CoordinatorState, window: int) -> None:
    """Drops the params of rounds that can no longer be the best: among rounds whose score is
    final, only the best is kept; the last window//2 complete rounds, whose windows still move
    with each new round, are all kept. (Before `window` rounds are complete, the rounds this
    settles all share the first window, so their order is final too: a tie, the latest wins.)"""
    complete = [r for r, row in enumerate(state.rounds) if row["complete"]]
    open_from = min(complete[max(0, len(complete) - window // 2):], default=len(state.rounds))
    settled = sorted(r for r in state.candidates if r < open_from)
    scored = [r for r in settled if state.rounds[r]["complete"] and state.rounds[r]["episodes"] > 0]
    keep = {_best_of(state.rounds, scored, window)} if scored else set(settled[:1])
    for r in settled:
        if r not in keep:
            del state.candidates[r]


def coordinate(cfg: SelfImproveConfig, params: Any, collect_round: CollectFn, learn_round: LearnFn,
               log: Logger | None = None, progress: bool = True, state: CoordinatorState | None = None,
               on_round: Callable[[CoordinatorState], None] | None = None) -> SelfImproveResult:
    """Rounds of collect-then-learn within the episode budget; no math.

    `state` resumes a restarted coordinator (rounds, weights, candidate policies);
    `on_round(state)` is called after each completed round (to checkpoint it).
    """
    state = state if state is not None else CoordinatorState(params=params)
    bar = progress_bar(total=cfg.max_episodes, desc="self-improve episodes", enabled=progress)
    bar.update(state.total_episodes)
    for r in range(len(state.rounds), cfg.max_rounds):
        total = state.total_episodes
        if total >= cfg.max_episodes:
            break
        t0 = time.perf_counter()
        episodes = collect_round(state.params, r, cfg.max_episodes - total)
        if not episodes:
            break
        total += len(episodes)
        bar.update(len(episodes))
        t1 = time.perf_counter()
        metrics, new_params = learn_round(cfg.learning_rate_at(total / cfg.max_episodes))
        seconds = {"collect_seconds": t1 - t0, "learn_seconds": time.perf_counter() - t1}  # where practice time goes
        # A round cut short by the budget saw fewer, shorter episodes: not a fair score.
        complete = metrics["updates"] == cfg.updates_per_round
        row = {"round": float(r), "total_episodes": float(total), **round_metrics(episodes), **metrics,
               "complete": float(complete), **seconds}
        row["total_env_steps"] = float(state.total_env_steps + row["env_steps"])
        state.rounds.append(row)
        state.candidates[r] = state.params  # the weights that collected this round
        state.params = new_params
        prune_candidates(state, cfg.best_round_window)
        bar.set_postfix(success=f"{row['success_rate']:.2f}", length=f"{row['mean_episode_length']:.1f}")
        if log is not None:
            log({f"self_improve/{k}": v for k, v in row.items() if k != "round"}, r)
        if on_round is not None:
            on_round(state)
    bar.close()
    if not state.rounds:
        raise ValueError("self-improvement ran no round: raise self_improve.max_episodes")
    best = best_round(state.rounds, cfg.best_round_window)
    policy = state.candidates[best] if cfg.keep_best_round else state.params
    return SelfImproveResult(state.rounds, best, state.total_episodes, state.total_env_steps, policy)
