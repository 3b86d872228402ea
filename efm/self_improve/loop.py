"""Stage 2, Algorithm 1: the coordinator alternating collection and learning.

Each round: broadcast the learner's weights to the actors; collect whole episodes (ending on
detected success or max length) until the replay holds N*B samples; run N REINFORCE updates
on N*B samples drawn without replacement; clear the replay. Success is not monotone over rounds
(Section 6), so the policy of the round with the best detected success (then the shortest
episodes) is kept; neither uses ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from efm import checkpoints
from efm.config import RunConfig
from efm.domains import make_env
from efm.envs.base import Episode
from efm.models.efm import EFMFunctions, make_functions
from efm.models.tokenizers import make_vocabulary
from efm.rollout import SUCCESS
from efm.self_improve.actor import (
    ACTION_TOKENS,
    RETURN,
    STEPS_TO_GO,
    PolicyAgent,
    collect,
    label_episode,
)
from efm.self_improve.learner import Learner
from efm.self_improve.replay import ReverbReplay, SampleSpec
from efm.self_improve.service import StepsToGoService
from efm.sft.select import POLICY, REWARD, load_selected

Logger = Callable[[dict[str, float], int], None]
ROUNDS = "rounds.json"
LAST_POLICY = "last_policy"


def replay_spec(fns: EFMFunctions, cfg: RunConfig) -> SampleSpec:
    """Shapes of one replay sample (o_t, a_t, g, R_t), read off a reset environment."""
    ts = make_env(cfg.env, 1, 0).reset()
    spec: dict[str, tuple[tuple[int, ...], Any]] = {}
    for prefix, arrays in (("observation", ts.observation), ("goal", ts.goal)):
        for k, v in arrays.items():
            spec[f"{prefix}/{k}"] = (tuple(v.shape[1:]), v.dtype)
    spec[ACTION_TOKENS] = ((fns.vocab.action.num_tokens,), np.int32)
    spec[RETURN] = ((), np.float32)
    return spec


def round_metrics(episodes: list[Episode], threshold: float) -> dict[str, float]:
    """What a round's episodes say about the policy that collected them."""
    detected = [bool(e.observation_extras[STEPS_TO_GO][-1] <= threshold) for e in episodes]
    return {
        "episodes": float(len(episodes)),
        "success_rate": float(np.mean(detected)),  # the learned detector: no ground truth
        "mean_episode_length": float(np.mean([e.length for e in episodes])),
        "ground_truth_success_rate": float(np.mean([e.observation_extras[SUCCESS][-1] for e in episodes])),
    }


@dataclass(frozen=True)
class SelfImproveResult:
    rounds: list[dict[str, float]]
    best_round: int
    total_episodes: int
    policy: Any


def self_improve(cfg: RunConfig, fns: EFMFunctions, policy_params: Any, reward_params: Any,
                 log: Logger | None = None, progress: bool = True) -> SelfImproveResult:
    """Algorithm 1 in one process: the actor, the steps-to-go service and the learner."""
    si = cfg.self_improve
    service = StepsToGoService(fns, reward_params)
    agent = PolicyAgent(fns, policy_params, service, seed=si.seed)
    env = make_env(cfg.env, si.num_envs, seed=si.seed)
    learner = Learner(fns, policy_params, si)
    rounds: list[dict[str, float]] = []
    best: tuple[tuple[float, float], int, Any] | None = None
    total = 0
    bar = tqdm(total=si.max_episodes, desc="self-improve episodes", disable=not progress, mininterval=2.0)
    with ReverbReplay.local(replay_spec(fns, cfg)) as replay:
        for r in range(si.max_rounds):
            if total >= si.max_episodes:
                break
            params = learner.get_variables()
            agent.update(params)
            episodes: list[Episode] = []
            source = collect(env, agent, max_steps=cfg.env.max_episode_steps, threshold=si.success_threshold,
                             id_prefix=f"si-r{r}")
            for episode in source:
                episodes.append(episode)
                if episode.length:
                    replay.add_episode(label_episode(episode, si.gamma))
                if replay.size() >= si.samples_per_round or total + len(episodes) >= si.max_episodes:
                    break
            source.close()  # unfinished episodes are dropped: the next round runs a new policy
            total += len(episodes)
            bar.update(len(episodes))
            num_updates = min(si.updates_per_round, replay.size() // si.batch_size)
            data = replay.sample(num_updates * si.batch_size) if num_updates else {}
            replay.clear()
            losses = []
            for i in range(num_updates):
                batch = {k: v[i * si.batch_size:(i + 1) * si.batch_size] for k, v in data.items()}
                losses.append(learner.step(batch))
            complete = num_updates == si.updates_per_round
            row = {"round": float(r), "total_episodes": float(total), **round_metrics(episodes, si.success_threshold),
                   "updates": float(num_updates), "complete": float(complete),
                   **{k: float(np.mean([m[k] for m in losses])) for k in (losses[0] if losses else {})}}
            rounds.append(row)
            # A round cut short by the budget saw fewer, shorter episodes: not a fair score.
            score = (row["success_rate"], -row["mean_episode_length"])
            if best is None or (complete and score > best[0]):
                best = (score, r, params)
            bar.set_postfix(success=f"{row['success_rate']:.2f}", length=f"{row['mean_episode_length']:.1f}")
            if log is not None:
                log({f"self_improve/{k}": v for k, v in row.items() if k != "round"}, r)
    bar.close()
    if best is None:
        raise ValueError("self-improvement ran no round: raise self_improve.max_episodes")
    final = best[2] if si.keep_best_round else learner.get_variables()
    return SelfImproveResult(rounds, best[1], total, final)


def run_self_improve(cfg: RunConfig, select_dir: str | Path, out_dir: str | Path, log: Logger | None = None,
                     progress: bool = True) -> SelfImproveResult:
    """Reads the selected checkpoints, runs Stage 2, writes out_dir/policy and rounds.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    result = self_improve(cfg, fns, load_selected(select_dir, POLICY), load_selected(select_dir, REWARD),
                          log=log, progress=progress)
    checkpoints.save_params(out_dir / POLICY, jax.device_get(result.policy))
    (out_dir / ROUNDS).write_text(json.dumps(
        {"best_round": result.best_round, "total_episodes": result.total_episodes, "rounds": result.rounds},
        indent=1))
    return result
