"""Tabletop and BananaTable environments: throughput and scripted-demonstrator success.

Measures env steps per second (random actions, no resets) with and without camera images for
1 and 8 vectorized environments, then runs the scripted demonstrators for `--episodes`
episodes per task family (Block2Block, block to location, block to relative location,
BananaTable) within the default step limit and reports success rates (Wilson 95% intervals)
and episode length against the optimal-length estimate. Rates are per CPU second as well as
per wall second, since the wall rate depends on what else runs on the machine.

    .venv/bin/python benchmarks/tabletop_env.py --episodes 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from efm.config import TABLETOP_TASK_FAMILIES, BananaTableConfig, EnvConfig, TabletopConfig
from efm.domains import make_demonstrator, make_env
from efm.evaluation.stats import wilson_interval
from efm.rollout import rollout

RESULTS = Path(__file__).parent / "results" / "tabletop_env.json"


def env_config(
    domain: str, render: bool, families: tuple[str, ...] = TABLETOP_TASK_FAMILIES
) -> EnvConfig:
    return EnvConfig(
        domain=domain,
        tabletop=TabletopConfig(render_images=render, task_families=families),
        bananatable=BananaTableConfig(render_images=render),
    )


def throughput(domain: str, num_envs: int, render: bool, steps: int) -> dict:
    """Env steps per second under random actions (each of the N envs stepping counts once)."""
    cfg = env_config(domain, render)
    env = make_env(cfg, num_envs, seed=0)
    t0 = time.perf_counter()
    env.reset()
    reset_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    for _ in range(5):  # warm-up
        env.step(rng.uniform(-1, 1, (num_envs, 2)))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        env.step(rng.uniform(-1, 1, (num_envs, 2)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    env.close()
    n = steps * num_envs
    return {
        "domain": domain,
        "num_envs": num_envs,
        "render": render,
        "image": [cfg.tabletop.image_height, cfg.tabletop.image_width] if render else None,
        "steps": n,
        "steps_per_s": n / wall,
        "steps_per_cpu_s": n / max(cpu, 1e-9),
        "reset_ms_per_env": 1000 * reset_s / num_envs,
    }


def demonstrator(
    domain: str, families: tuple[str, ...], episodes: int, num_envs: int, seed: int
) -> dict:
    cfg = env_config(domain, render=False, families=families)
    env, demo = make_env(cfg, num_envs, seed), make_demonstrator(cfg, num_envs, seed + 1)
    t0 = time.perf_counter()
    eps = list(rollout(env, demo, max_steps=cfg.max_episode_steps, max_episodes=episodes))
    seconds = time.perf_counter() - t0
    env.close()
    wins = sum(e.success for e in eps)
    done = [e for e in eps if e.success]
    lengths = np.array([e.length for e in done], float)
    optimal = np.array([e.optimal_length for e in done], float)
    lo, hi = wilson_interval(wins, len(eps))
    return {
        "family": "bananatable" if domain == "bananatable" else families[0],
        "episodes": len(eps),
        "success_rate": wins / len(eps),
        "success_ci95": [lo, hi],
        "max_steps": cfg.max_episode_steps,
        "mean_length": float(lengths.mean()) if len(done) else None,
        "mean_optimal_length": float(optimal.mean()) if len(done) else None,
        "length_over_optimal": float(lengths.mean() / optimal.mean()) if len(done) else None,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--episodes", type=int, default=100, help="demonstrator episodes per task family"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument(
        "--steps", type=int, default=100, help="vector steps per throughput measurement"
    )
    parser.add_argument(
        "--num-envs", type=int, default=8, help="vectorized envs for the demonstrator runs"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.episodes < 1 or args.steps < 1 or args.num_envs < 1:
        parser.error("--episodes, --steps and --num-envs must be >= 1")
    t0 = time.perf_counter()
    speed = [
        throughput(d, n, r, args.steps)
        for d in ("tabletop", "bananatable")
        for r in (False, True)
        for n in (1, 8)
    ]
    print("| domain | envs | images | steps/s (wall) | steps/s (CPU) | reset ms/env |")
    print("|---|---|---|---|---|---|")
    for s in speed:
        image = "x".join(map(str, s["image"])) if s["image"] else "off"
        print(
            f"| {s['domain']} | {s['num_envs']} | {image} | {s['steps_per_s']:.0f} "
            f"| {s['steps_per_cpu_s']:.0f} | {s['reset_ms_per_env']:.1f} |"
        )
    runs = [("tabletop", (f,)) for f in TABLETOP_TASK_FAMILIES] + [
        ("bananatable", TABLETOP_TASK_FAMILIES)
    ]
    demos = [demonstrator(d, fams, args.episodes, args.num_envs, args.seed) for d, fams in runs]
    print("\n| family | episodes | success | 95% CI | mean length | optimal | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in demos:
        lo, hi = r["success_ci95"]
        print(
            f"| {r['family']} | {r['episodes']} | {r['success_rate']:.3f} | [{lo:.3f}, {hi:.3f}] "
            f"| {r['mean_length']:.1f} | {r['mean_optimal_length']:.1f} "
            f"| {r['length_over_optimal']:.2f} |"
        )
    out = {
        "seconds": time.perf_counter() - t0,
        "args": {k: str(v) for k, v in vars(args).items() if k != "out"},  # no machine paths in results
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "tabletop_config": dataclasses.asdict(TabletopConfig()),
        "bananatable_config": dataclasses.asdict(BananaTableConfig()),
        "throughput": speed,
        "demonstrator": demos,
        "all_families_at_least_90pct": all(r["success_rate"] >= 0.9 for r in demos),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    ok = out["all_families_at_least_90pct"]
    print(f"\nall families >= 90%: {ok}  ({out['seconds']:.0f} s; {args.out})")


if __name__ == "__main__":
    main()
