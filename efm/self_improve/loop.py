"""Stage 2, Algorithm 1: the coordinator alternating collection and learning.

Each round: broadcast the learner's weights to the actors; collect whole episodes (ending on
detected success, max length or an operator stop): actors stop *starting* episodes once the
replay plus their in-flight episodes will reach N*B samples and finish every episode they
started; run N REINFORCE updates on N*B samples drawn uniformly without replacement from all of
them; clear the rest. Every started episode counts in the practice budget (`total_episodes`);
the environment steps executed are reported beside it (`total_env_steps`). Success is not
monotone over rounds (Section 6), so the policy of the best round is kept (`coordinator.py`:
detected success, then the shortest episodes, pooled over neighbouring rounds; no ground truth).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from efm import checkpoints
from efm.config import RunConfig
from efm.data.features import input_spec
from efm.domains import make_env
from efm.models.efm import EFMFunctions, make_functions
from efm.models.tokenizers import make_vocabulary
from efm.self_improve.actor import ACTION_TOKENS, INPUTS, POLICY_VERSION, RETURN, SAMPLE_ID, Actor
from efm.self_improve.coordinator import SelfImproveResult, coordinate
from efm.self_improve.learner import Learner, check_freeze
from efm.self_improve.replay import ReverbReplay, SampleSpec
from efm.self_improve.service import StepsToGoService
from efm.sft.select import POLICY, REWARD, load_selected
from efm.types import Logger

ROUNDS = "rounds.json"
STOP = "STOP"


def replay_spec(fns: EFMFunctions, cfg: RunConfig) -> SampleSpec:
    """Shapes of one replay sample (o_t, a_t, g, R_t), read off a reset environment."""
    ts = make_env(cfg.env, 1, 0).reset()
    inputs = input_spec(fns.vocab).inputs(ts.observation, None, ts.goal, ts.instruction)
    spec: dict[str, tuple[tuple[int, ...], Any]] = {f"{INPUTS}{k}": (tuple(v.shape[1:]), v.dtype)
                                                     for k, v in inputs.items()}
    spec[ACTION_TOKENS] = ((fns.vocab.action.num_tokens,), np.int32)
    spec[RETURN] = ((), np.float32)
    spec[SAMPLE_ID] = ((), np.int64)
    spec[POLICY_VERSION] = ((), np.int64)
    return spec


def self_improve(cfg: RunConfig, fns: EFMFunctions, policy_params: Any, reward_params: Any,
                 log: Logger | None = None, progress: bool = True,
                 interrupt: Callable[[], np.ndarray | bool] | None = None) -> SelfImproveResult:
    """Algorithm 1. `interrupt` is the external stop (a human operator ending episodes)."""
    si = cfg.self_improve
    check_freeze(policy_params, si.freeze, fns.model)  # a typo would freeze nothing: fail before any rollout
    if si.runtime == "ray":
        from efm.self_improve.distributed import self_improve_on_ray

        return self_improve_on_ray(cfg, policy_params, reward_params, log=log, progress=progress)
    with ReverbReplay.local(replay_spec(fns, cfg)) as replay:
        service = StepsToGoService(fns, reward_params)
        actors = [Actor(cfg, fns, policy_params, service, replay, seed=si.seed + i, interrupt=interrupt,
                        actor_index=i) for i in range(si.num_actors)]
        learner = Learner(fns, policy_params, si)

        def collect_round(params: Any, r: int, budget: int) -> list[dict[str, float]]:
            out: list[dict[str, float]] = []
            for actor in actors:  # in turn: one process
                out += actor.run_round(params, r, budget - len(out), si.samples_per_round)
            return out

        def learn_round(learning_rate: float) -> tuple[dict[str, float], Any]:
            return learner.run_round(replay, learning_rate), learner.get_variables()

        return coordinate(si, policy_params, collect_round, learn_round, log=log, progress=progress)


def stop_file(path: Path) -> Callable[[], bool]:
    """An external stop signal: True once each time `path` appears (the file is removed)."""

    def interrupt() -> bool:
        if path.exists():
            path.unlink(missing_ok=True)
            return True
        return False

    return interrupt


def run_self_improve(cfg: RunConfig, select_dir: str | Path, out_dir: str | Path, log: Logger | None = None,
                     progress: bool = True) -> SelfImproveResult:
    """Reads the selected checkpoints, runs Stage 2, writes out_dir/policy and rounds.json.

    An operator ends the running episodes by creating out_dir/STOP (consumed when seen).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    result = self_improve(cfg, fns, load_selected(select_dir, POLICY), load_selected(select_dir, REWARD),
                          log=log, progress=progress, interrupt=stop_file(out_dir / STOP))
    checkpoints.save_params(out_dir / POLICY, jax.device_get(result.policy))
    (out_dir / ROUNDS).write_text(json.dumps(
        {"best_round": result.best_round, "total_episodes": result.total_episodes,
         "total_env_steps": result.total_env_steps, "rounds": result.rounds},
        indent=1))
    return result
