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
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from efm import checkpoints
from efm.config import RunConfig
from efm.models.efm import EFMFunctions, make_functions
from efm.models.tokenizers import make_vocabulary
from efm.self_improve.builder import FleetBuilder, replay_spec
from efm.self_improve.coordinator import CoordinatorState, SelfImproveResult, coordinate
from efm.self_improve.learner import check_freeze
from efm.sft.select import POLICY, REWARD, load_selected
from efm.types import Logger

__all__ = ["ROUNDS", "STOP", "SelfImproveResult", "replay_spec", "run_self_improve", "self_improve", "stop_file"]

ROUNDS = "rounds.json"
STOP = "STOP"
RESUME = "resume"  # the last completed round's coordinator and learner state


def self_improve(cfg: RunConfig, fns: EFMFunctions, policy_params: Any, reward_params: Any,
                 log: Logger | None = None, progress: bool = True,
                 interrupt: Callable[[], np.ndarray | bool] | None = None,
                 resume_dir: Path | None = None, on_round: Callable[[], None] | None = None,
                 ) -> SelfImproveResult:
    """Algorithm 1 on the roles `self_improve.runtime` names. `interrupt` is the external stop
    (a human operator ending episodes). With `resume_dir`, each completed round is saved there
    and a restarted run carries on from the last one; `on_round()` follows each save (to mirror
    it to the task's output artifact)."""
    si = cfg.self_improve
    check_freeze(policy_params, si.freeze, fns.model)  # a typo would freeze nothing: fail before any rollout
    fleet = FleetBuilder(cfg).build(policy_params, reward_params, interrupt=interrupt,
                                    rounds_done=saved_rounds(resume_dir))
    console = None
    try:
        if si.fleet.console_port:
            from efm.self_improve.console import Console

            console = Console(fleet.view, si.fleet.bind_host, si.fleet.console_port)
            print(f"operator console: {console.url}", flush=True)
        state = None
        if resume_dir is not None and (resume_dir / "state.json").is_file():
            state, learner_state = load_round_state(resume_dir, policy_params, fleet.get_learner_state())
            fleet.set_learner_state(learner_state)

        def saved(s: CoordinatorState) -> None:
            fleet.view.round_ended(s.rounds[-1])
            if resume_dir is not None:
                save_round_state(resume_dir, s, fleet.get_learner_state())
            if on_round is not None:
                on_round()

        result = coordinate(si, policy_params, fleet.collect_round, fleet.learn_round, log=log, progress=progress,
                            state=state, on_round=saved)
        stats = fleet.stats()
        return result if not stats else SelfImproveResult(result.rounds, result.best_round, result.total_episodes,
                                                          result.total_env_steps, result.policy, stats)
    finally:
        if console is not None:
            console.close()
        fleet.close()


def save_round_state(directory: Path, state: CoordinatorState, learner: dict[str, Any]) -> None:
    """The coordinator after a completed round: rounds, weights, candidate policies, learner.

    Written to a new round directory, then `state.json` names it (written last), so a task
    killed mid-save resumes from the previous round."""
    r = len(state.rounds)
    tree = {"params": state.params, "learner": learner["state"],
            "candidates": {str(k): v for k, v in state.candidates.items()}}
    checkpoints.save_params(directory / f"round_{r}", jax.device_get(tree))
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps({"round_dir": f"round_{r}", "rounds": state.rounds, "version": learner["version"],
                               "candidates": sorted(state.candidates)}))
    tmp.replace(directory / "state.json")
    for old in directory.glob("round_*"):
        if old.name != f"round_{r}":
            shutil.rmtree(old, ignore_errors=True)


def saved_rounds(directory: Path | None) -> int:
    """The rounds a restarted task completed before (0: a fresh one): its actors must not
    draw those rounds' boards again."""
    state = None if directory is None else directory / "state.json"
    return len(json.loads(state.read_text())["rounds"]) if state is not None and state.is_file() else 0


def load_round_state(directory: Path, params: Any, learner: dict[str, Any]) -> tuple[CoordinatorState, dict[str, Any]]:
    meta = json.loads((directory / "state.json").read_text())
    like = {"params": params, "learner": learner["state"], "candidates": {str(k): params for k in meta["candidates"]}}
    tree = checkpoints.load_params(directory / meta["round_dir"], like=jax.device_get(like))
    state = CoordinatorState(rounds=meta["rounds"], params=tree["params"],
                             candidates={int(k): v for k, v in tree["candidates"].items()})
    return state, {"state": tree["learner"], "version": meta["version"]}


def stop_file(path: Path) -> Callable[[], bool]:
    """An external stop signal: True once each time `path` appears (the file is removed)."""

    def interrupt() -> bool:
        if path.exists():
            path.unlink(missing_ok=True)
            return True
        return False

    return interrupt


def run_self_improve(cfg: RunConfig, select_dir: str | Path, out_dir: str | Path, log: Logger | None = None,
                     progress: bool = True, on_round: Callable[[], None] | None = None) -> SelfImproveResult:
    """Reads the selected checkpoints, runs Stage 2, writes out_dir/policy and rounds.json.

    An operator ends the running episodes by creating out_dir/STOP (consumed when seen; made
    while none runs, between rounds, it ends nothing, not the next round's first). Each
    completed round is saved in out_dir/resume, so a restarted task carries on from the last
    one (policy, optimizer state, round counter, best round); it is removed at the end.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    result = self_improve(cfg, fns, load_selected(select_dir, POLICY), load_selected(select_dir, REWARD),
                          log=log, progress=progress, interrupt=stop_file(out_dir / STOP),
                          resume_dir=out_dir / RESUME, on_round=on_round)
    checkpoints.save_params(out_dir / POLICY, jax.device_get(result.policy))
    (out_dir / ROUNDS).write_text(json.dumps(
        {"best_round": result.best_round, "total_episodes": result.total_episodes,
         "total_env_steps": result.total_env_steps, "rounds": result.rounds, "fleet": result.fleet},
        indent=1))
    shutil.rmtree(out_dir / RESUME, ignore_errors=True)
    return result
