"""Fleet scaling on this machine: environment steps/s and round time with 1, 2 and 4 Ray
actors against the single-process mode on the same config (pointmass, N*B = 1024, 32 envs per
actor), the steps-to-go service's batching (rows and requests per forward pass, latency), and
the policy's latency per control step, Version 2 (on the actor) and Version 1 (served by the
learner), as p50/p99 against the 100 ms of 10 Hz control. Fresh initialisations (episodes run
to 100 steps); round 0 (compilation, actor start) is left out of the rates.

  .venv/bin/python benchmarks/fleet_scaling.py --out benchmarks/results/fleet_scaling.json

`--compare` runs, for each K of --actors, the single-process runtime (K actors in turn) and the
fleet (K Ray actors, Version 2 and Version 1) on the same config and the same practice budget (`--episodes`): wall time from the
start (Ray, compilation and actor start included), environment steps/s over the whole run, and
the final success (detected and ground truth, last round and the last `--final-rounds`). With
`--select DIR` (an `efm select` output) the policy and reward model are those checkpoints, as
in the pipeline; without, fresh initialisations (episodes then run their 100 steps). Each run
is written as it ends, and a rerun with the same --out skips the runs already there.

  .venv/bin/python benchmarks/fleet_scaling.py --compare --actors 2 --episodes 400 \
      --select D/select --out benchmarks/results/fleet_vs_single.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from fleet_faults import init_params

from efm.config import RunConfig, debug_config, default_config
from efm.self_improve.builder import FleetBuilder
from efm.self_improve.coordinator import coordinate
from efm.sft.select import POLICY, REWARD, load_selected


def config(runtime: str, actors: int, inference: str, rounds: int, num_envs: int,
           episodes: int = 100_000, debug: bool = False) -> RunConfig:
    base = debug_config("pointmass") if debug else default_config("pointmass")
    si = dataclasses.replace(base.self_improve, runtime=runtime, num_actors=actors, num_envs=num_envs,
                             max_rounds=rounds, max_episodes=episodes,
                             fleet=dataclasses.replace(base.self_improve.fleet, policy_inference=inference))
    return base.replace(self_improve=si)


def starting_params(cfg: RunConfig, select: Path | None) -> tuple[Any, Any]:
    """(policy, reward): the selected checkpoints, or fresh initialisations."""
    if select is not None:
        return load_selected(select, POLICY), load_selected(select, REWARD)
    return init_params(cfg, 0), init_params(cfg, 1)


def measure(runtime: str, actors: int, inference: str, rounds: int, num_envs: int, episodes: int = 100_000,
            select: Path | None = None, final_rounds: int = 3, debug: bool = False) -> dict[str, Any]:
    cfg = config(runtime, actors, inference, rounds, num_envs, episodes, debug)
    si = cfg.self_improve
    policy, reward = starting_params(cfg, select)
    t0 = time.perf_counter()
    fleet = FleetBuilder(cfg).build(policy, reward)
    startup = time.perf_counter() - t0
    try:
        result = coordinate(si, policy, fleet.collect_round, fleet.learn_round, progress=False)
        stats = fleet.stats()
    finally:
        fleet.close()
    wall = time.perf_counter() - t0
    last = result.rounds[-final_rounds:]
    steps = [r["env_steps"] for r in result.rounds][1:]
    collect_s = [r["collect_seconds"] for r in result.rounds][1:]
    learn_s = [r["learn_seconds"] for r in result.rounds][1:]
    round_s = list(np.add(collect_s, learn_s))
    return {"runtime": runtime, "actors": actors, "policy_inference": inference, "envs_per_actor": num_envs,
            "starting_params": str(select) if select is not None else "fresh initialisation",
            "wall_s": wall, "rounds": len(result.rounds), "episodes": result.total_episodes,
            "env_steps": result.total_env_steps, "env_steps_per_s_overall": result.total_env_steps / wall,
            "final_success_rate": result.rounds[-1]["success_rate"],
            "final_ground_truth_success_rate": result.rounds[-1]["ground_truth_success_rate"],
            "final_mean_episode_length": result.rounds[-1]["mean_episode_length"],
            f"last_{len(last)}_rounds_success_rate": float(np.average([r["success_rate"] for r in last],
                                                                     weights=[r["episodes"] for r in last])),
            f"last_{len(last)}_rounds_ground_truth_success_rate": float(np.average(
                [r["ground_truth_success_rate"] for r in last], weights=[r["episodes"] for r in last])),
            "startup_s": startup, "rounds_timed": len(steps),
            "env_steps_per_s": float(np.sum(steps) / np.sum(collect_s)) if steps else None,
            "round_s": float(np.mean(round_s)) if steps else None,
            "collect_s": float(np.mean(collect_s)) if steps else None,
            "learn_s": float(np.mean(learn_s)) if steps else None,
            "episodes_per_round": float(np.mean([r["episodes"] for r in result.rounds][1:])) if steps else None,
            **stats}


def run_name(runtime: str, actors: int, inference: str) -> str:
    return f"{runtime}-x{actors}-{inference}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fleet_scaling.json"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--compare", action="store_true",
                        help="the fleet against the single-process runtime on the same practice budget")
    parser.add_argument("--episodes", type=int, default=400, help="--compare: the practice budget of every run")
    parser.add_argument("--select", type=Path, default=None, help="--compare: an `efm select` output to start from")
    parser.add_argument("--final-rounds", type=int, default=3, help="--compare: rounds pooled for the final success")
    parser.add_argument("--debug", action="store_true", help="the debug config (tiny model, batch 16, N = 2): seconds")
    args = parser.parse_args()
    if args.compare:
        plan = [(rt, k, inf) for k in args.actors  # the single-process runtime runs the K actors in turn
                for rt, inf in (("single_process", "actor"), ("ray", "actor"), ("ray", "learner"))]
        rounds, episodes = 1_000_000, args.episodes
    else:
        plan = [("single_process", 1, "actor")] + [("ray", k, "actor") for k in args.actors] + [("ray", 2, "learner")]
        rounds, episodes = args.rounds, 100_000
    settings = {"compare": args.compare, "rounds": rounds, "episodes": episodes, "num_envs": args.num_envs,
                "select": str(args.select) if args.select else None, "debug": args.debug,
                "final_rounds": args.final_rounds}  # the rows' last_<n>_rounds_* fields
    done: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if done and {"final_rounds": 3, **done.get("settings", {})} != settings:  # files before it was recorded: 3
        raise SystemExit(f"{args.out} holds runs of other settings ({done.get('settings')}): choose another --out")
    runs: list[dict[str, Any]] = done.get("runs", [])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for runtime, actors, inference in plan:  # written after each run: a long benchmark leaves what it measured
        if any(r["name"] == run_name(runtime, actors, inference) for r in runs):
            continue  # measured by an earlier, interrupted invocation
        row = measure(runtime, actors, inference, rounds, args.num_envs, episodes, args.select, args.final_rounds,
                      args.debug)
        runs.append({"name": run_name(runtime, actors, inference), **row, "load_average": os.getloadavg()})
        args.out.write_text(json.dumps({"cpus": os.cpu_count(), "settings": settings, "runs": runs}, indent=1))
    for r in runs:
        service = r.get("service", {})
        if args.compare:
            print(f"{r['name']:>24}: {r['wall_s']:6.0f} s, {r['episodes']} episodes, {r['env_steps']} env steps, "
                  f"{r['env_steps_per_s_overall']:6.0f} steps/s, final success {r['final_success_rate']:.2f} "
                  f"(ground truth {r['final_ground_truth_success_rate']:.2f}), load {r['load_average'][0]:.1f}")
            continue
        print(f"{r['runtime']:>14} x{r['actors']} {r['policy_inference']:>7}: {r['env_steps_per_s']:7.0f} steps/s, "
              f"round {r['round_s']:.2f} s, service {service.get('rows_per_batch', 0):.0f} rows/batch "
              f"p50 {service.get('latency_ms_p50', 0):.1f} ms, policy p50/p99 "
              f"{r.get('policy_latency_ms_p50', 0):.1f}/{r.get('policy_latency_ms_p99', 0):.1f} ms")


if __name__ == "__main__":
    main()
