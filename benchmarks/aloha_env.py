"""Aloha Single-Insertion: environment throughput and the scripted demonstrator's success.

Throughput: env steps (action chunks of 5 joint targets at 10 Hz, i.e. 0.5 s of simulated time
and 250 physics steps each) per second, in state mode and with the four cameras rendered and
stacked (Appendix D.3), in-process, per wall second and per CPU second (the wall rate depends on
what else runs on the machine). The demonstrator: `--episodes` episodes in state mode within the
default 300-step limit, success rate (Wilson 95% interval), lengths, and how many needed a
recovery (a re-grasp or a second insertion: longer than the noise-free 17 steps + 2).

    .venv/bin/python benchmarks/aloha_env.py --episodes 100
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

from efm.config import default_config
from efm.domains import make_demonstrator
from efm.envs.aloha.env import JOINTS, NOMINAL_LENGTH, AlohaInsertionEnv
from efm.envs.base import TimeStep
from efm.evaluation.stats import wilson_interval
from efm.rollout import rollout

RESULTS = Path(__file__).parent / "results" / "aloha_env.json"


def throughput(num_envs: int, render: bool, steps: int) -> dict:
    """Steps/s holding the current joints with small noise (the arms move, nothing is grasped)."""
    base = default_config("aloha-insertion").env
    cfg = dataclasses.replace(base, aloha=dataclasses.replace(base.aloha, render_images=render))
    env = AlohaInsertionEnv(cfg, num_envs, seed=0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    ts = env.reset()
    reset_s = time.perf_counter() - t0

    def act(ts: TimeStep) -> np.ndarray:
        return np.tile(ts.observation[JOINTS], (1, cfg.aloha.chunk_length)) + rng.normal(0, 0.02, (num_envs, 70))

    ts = env.step(act(ts))  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        ts = env.step(act(ts))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    env.close()
    n = steps * num_envs
    return {"envs": num_envs, "render_images": render, "steps": n, "reset_seconds_per_env": reset_s / num_envs,
            "steps_per_second": n / wall, "steps_per_cpu_second": n / cpu,
            "physics_steps_per_second": n * 250 / wall, "view": [cfg.aloha.view_height, cfg.aloha.view_width]}


def demonstrator(episodes: int, num_envs: int) -> dict:
    cfg = default_config("aloha-insertion").env
    env = AlohaInsertionEnv(cfg, num_envs, seed=0)
    demo = make_demonstrator(cfg, num_envs, seed=1)
    wall, cpu = time.perf_counter(), time.process_time()
    eps = list(rollout(env, demo, max_steps=cfg.max_episode_steps, max_episodes=episodes,
                       interrupt=demo.gave_up))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    env.close()
    ok = [e for e in eps if e.success]
    lengths = np.array([e.length for e in ok])
    lo, hi = wilson_interval(len(ok), len(eps))
    return {
        "episodes": len(eps), "success_rate": len(ok) / len(eps), "success_rate_95": [lo, hi],
        "mean_length_successful": float(lengths.mean()), "median_length_successful": float(np.median(lengths)),
        "max_length_successful": int(lengths.max()),
        "mean_length_failed": float(np.mean([e.length for e in eps if not e.success])) if len(ok) < len(eps) else None,
        "successful_with_recovery": int((lengths > NOMINAL_LENGTH + 2).sum()),
        "noise_free_length": NOMINAL_LENGTH, "simulated_seconds_per_step": 0.5,
        "wall_seconds": wall, "cpu_seconds": cpu,
        "steps_per_second": sum(e.length for e in eps) / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20, help="env steps per throughput measurement")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    t0 = time.time()
    result = {
        "command": f"benchmarks/aloha_env.py --episodes {args.episodes} --steps {args.steps}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                    "mujoco_gl": os.environ.get("MUJOCO_GL")},
        "throughput": [throughput(1, False, args.steps), throughput(8, False, max(args.steps // 4, 2)),
                       throughput(1, True, max(args.steps // 4, 2))],
        "demonstrator": demonstrator(args.episodes, num_envs=8),
    }
    result["machine"]["load_average_after"] = os.getloadavg()
    result["seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
