"""Fleet scaling on this machine: environment steps/s and round time with 1, 2 and 4 Ray
actors against the single-process mode on the same config (pointmass, N*B = 1024, 32 envs per
actor), the steps-to-go service's batching (rows and requests per forward pass, latency), and
the policy's latency per control step, Version 2 (on the actor) and Version 1 (served by the
learner), as p50/p99 against the 100 ms of 10 Hz control. Fresh initialisations (episodes run
to 100 steps); round 0 (compilation, actor start) is left out of the rates.

  .venv/bin/python benchmarks/fleet_scaling.py --out benchmarks/results/fleet_scaling.json
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

from efm.config import default_config
from efm.self_improve.builder import FleetBuilder
from efm.self_improve.coordinator import coordinate


def measure(runtime: str, actors: int, inference: str, rounds: int, num_envs: int) -> dict[str, Any]:
    base = default_config("pointmass")
    si = dataclasses.replace(base.self_improve, runtime=runtime, num_actors=actors, num_envs=num_envs,
                             max_rounds=rounds, max_episodes=100_000,
                             fleet=dataclasses.replace(base.self_improve.fleet, policy_inference=inference))
    cfg = base.replace(self_improve=si)
    t0 = time.perf_counter()
    fleet = FleetBuilder(cfg).build(init_params(cfg, 0), init_params(cfg, 1))
    startup = time.perf_counter() - t0
    times: list[dict[str, float]] = []

    def collect(params: object, r: int, budget: int) -> list[dict[str, float]]:
        t = time.perf_counter()
        out = fleet.collect_round(params, r, budget)
        times.append({"collect_s": time.perf_counter() - t})
        return out

    def learn(lr: float) -> tuple[dict[str, float], Any]:
        t = time.perf_counter()
        out = fleet.learn_round(lr)
        times[-1]["learn_s"] = time.perf_counter() - t
        return out

    try:
        result = coordinate(si, init_params(cfg, 0), collect, learn, progress=False)
        stats = fleet.stats()
    finally:
        fleet.close()
    steps = [r["env_steps"] for r in result.rounds][1:]
    collect_s = [t["collect_s"] for t in times][1:]
    round_s = [t["collect_s"] + t["learn_s"] for t in times][1:]
    return {"runtime": runtime, "actors": actors, "policy_inference": inference, "envs_per_actor": num_envs,
            "startup_s": startup, "rounds_timed": len(steps),
            "env_steps_per_s": float(np.sum(steps) / np.sum(collect_s)), "round_s": float(np.mean(round_s)),
            "collect_s": float(np.mean(collect_s)), "learn_s": float(np.mean([t["learn_s"] for t in times][1:])),
            "episodes_per_round": float(np.mean([r["episodes"] for r in result.rounds][1:])), **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fleet_scaling.json"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    plan = [("single_process", 1, "actor")] + [("ray", k, "actor") for k in args.actors] + [("ray", 2, "learner")]
    runs: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for runtime, actors, inference in plan:  # written after each run: a long benchmark leaves what it measured
        runs.append({**measure(runtime, actors, inference, args.rounds, args.num_envs), "load_average": os.getloadavg()})
        args.out.write_text(json.dumps({"cpus": os.cpu_count(), "runs": runs}, indent=1))
    for r in runs:
        service = r.get("service", {})
        print(f"{r['runtime']:>14} x{r['actors']} {r['policy_inference']:>7}: {r['env_steps_per_s']:7.0f} steps/s, "
              f"round {r['round_s']:.2f} s, service {service.get('rows_per_batch', 0):.0f} rows/batch "
              f"p50 {service.get('latency_ms_p50', 0):.1f} ms, policy p50/p99 "
              f"{r.get('policy_latency_ms_p50', 0):.1f}/{r.get('policy_latency_ms_p99', 0):.1f} ms")


if __name__ == "__main__":
    main()
