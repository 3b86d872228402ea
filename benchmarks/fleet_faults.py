"""The fleet under faults: a pointmass fleet of 3 actors on Ray (embedded, real Reverb) runs
Algorithm 1 rounds while one actor process is SIGKILLed mid-episode in every round.

Writes JSON with the round count, the kills, and what happened to every episode: started,
completed, learned from (at least one step in the learner's N*B draw), discarded at the
end-of-round clear, cut by a fault (running when their actor died: counted as started, never
in the replay), lost (finished and written, yet absent from the replay: must be 0) and
duplicates (an episode in the replay twice: must be 0). The policy and reward model are fresh
initialisations: the accounting, not learning, is measured here.

  .venv/bin/python benchmarks/fleet_faults.py --out benchmarks/results/fleet_faults.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from efm.config import RunConfig, default_config
from efm.self_improve.builder import FleetBuilder
from efm.self_improve.coordinator import coordinate
from efm.self_improve.distributed import drilled_collect, kill_actor_mid_episode


def init_params(cfg: RunConfig, seed: int) -> dict:
    return FleetBuilder(cfg).init_params(seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fleet_faults.json"))
    parser.add_argument("--actors", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-envs", type=int, default=16)
    args = parser.parse_args()
    base = default_config("pointmass")
    si = dataclasses.replace(base.self_improve, runtime="ray", num_actors=args.actors, num_envs=args.num_envs,
                             max_rounds=args.rounds, max_episodes=100_000)
    cfg = base.replace(self_improve=si)
    t0 = time.time()
    fleet = FleetBuilder(cfg).build(init_params(cfg, 0), init_params(cfg, 1))
    killed: list[int] = []

    def drill(r: int) -> None:  # one actor SIGKILLed mid-episode in every round
        killed.append(kill_actor_mid_episode(fleet, r % args.actors, r, set(killed)))

    try:
        result = coordinate(si, init_params(cfg, 0), drilled_collect(fleet, drill), fleet.learn_round, progress=False)
        stats = fleet.stats()
    finally:
        fleet.close()
    rounds = result.rounds
    total = {k: int(sum(r[k] for r in rounds)) for k in ("actor_kills", "episodes_cut_by_fault", "writes_cut_by_fault",
                                                          "episodes_learned", "episodes_discarded_at_clear",
                                                          "duplicates", "lost")}
    started = int(sum(r["episodes"] for r in rounds))
    completed = started - total["episodes_cut_by_fault"]
    out = {"rounds": len(rounds), "actors": args.actors, "envs_per_actor": args.num_envs,
           "kills_attempted": len(killed), "kills_done": sum(p is not None for p in killed),
           "episodes_started": started, "episodes_completed": completed, **total,
           "every_completed_episode_learned_or_discarded":
               completed - total["writes_cut_by_fault"] == total["episodes_learned"] + total["episodes_discarded_at_clear"],
           "complete_rounds": int(sum(r["complete"] for r in rounds)),
           "env_steps": int(result.total_env_steps), "service": stats["service"],
           "service_retries": stats["service_retries"], "seconds": time.time() - t0, "per_round": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k not in ("per_round", "service")}, indent=1))


if __name__ == "__main__":
    main()
