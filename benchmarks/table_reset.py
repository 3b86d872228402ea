"""What a fresh world per episode costs the table domains, and that an episode no longer depends
on the steps its env took before its reset.

Times `reset` (a fresh PyBullet world with the episode's bodies, and its camera frame where
images are on) and `step` of one environment, per domain, as medians over `--repeats` calls in
wall and CPU time (CPU time is the steadier figure on a shared machine). Then runs `--episodes`
scripted demonstrations on `--num-envs` environments twice, images off: once as the episode
loop does (an env whose episode ended waits, masked, until it resets) and once with every env
stepped at every step (the mask ignored, as before the masked step); each episode, keyed by its
env and its number there, is hashed (observations and actions). With a fresh world per episode
no hash differs.

    .venv/bin/python benchmarks/table_reset.py --out benchmarks/results/table_reset.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from resumable import code_version

from efm.config import default_config
from efm.domains import make_demonstrator, make_env
from efm.envs.base import Array, TimeStep, VectorEnv
from efm.rollout import GivesUp, rollout

RESULTS = Path(__file__).parent / "results" / "table_reset.json"
DOMAINS = ("tabletop", "bananatable")


def env_config(domain: str, render: bool):
    """The domain's default env, in this process (no worker processes), images on or off."""
    e = default_config(domain).env
    return dataclasses.replace(e, num_workers=1, **{domain: dataclasses.replace(getattr(e, domain), render_images=render)})


def medians(call: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median wall and CPU milliseconds of `call` over `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu)}


def timings(domain: str, render: bool, repeats: int) -> dict:
    env = make_env(env_config(domain, render), 1, seed=0)
    env.reset()
    every = np.array([True])
    rng = np.random.default_rng(0)
    reset = medians(lambda: env.reset(every), repeats)
    step = medians(lambda: env.step(rng.uniform(-1, 1, (1, 2))), repeats)
    env.close()
    return {"domain": domain, "render": render, "repeats": repeats, "reset": reset, "step": step}


class EveryEnvSteps:
    """A vector env whose `step` ignores the mask: envs whose episode ended step on."""

    def __init__(self, env: VectorEnv):
        self._env = env

    def __getattr__(self, name: str):
        return getattr(self._env, name)

    def step(self, actions: Array, mask: Array | None = None) -> TimeStep:
        del mask
        return self._env.step(actions)


def episode_hashes(domain: str, episodes: int, num_envs: int, masked: bool) -> dict[str, str]:
    """Each demonstration's hash, keyed `d-<env>-<episode number>`."""
    cfg = env_config(domain, render=False)
    env = make_env(cfg, num_envs, seed=0)
    demo = make_demonstrator(cfg, num_envs, seed=1)
    loop_env = env if masked else EveryEnvSteps(env)
    hashes = {}
    for ep in rollout(loop_env, demo, max_steps=cfg.max_episode_steps, max_episodes=episodes, id_prefix="d",
                      interrupt=demo.gave_up if isinstance(demo, GivesUp) else None):
        h = hashlib.sha256()
        for k in sorted(ep.observations):
            h.update(np.ascontiguousarray(ep.observations[k]).tobytes())
        h.update(ep.actions.tobytes())
        hashes[ep.episode_id] = h.hexdigest()
    env.close()
    return hashes


def history_check(domain: str, episodes: int, num_envs: int) -> dict:
    masked = episode_hashes(domain, episodes, num_envs, masked=True)
    stepped = episode_hashes(domain, episodes, num_envs, masked=False)
    both = masked.keys() & stepped.keys()
    return {"domain": domain, "episodes": episodes, "num_envs": num_envs, "compared": len(both),
            "differ": sum(masked[k] != stepped[k] for k in both)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="calls per timing")
    parser.add_argument("--episodes", type=int, default=600, help="demonstrations per domain and way of stepping")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if min(args.repeats, args.episodes, args.num_envs) < 1:
        parser.error("--repeats, --episodes and --num-envs must be >= 1")
    t0 = time.perf_counter()
    times = [timings(d, r, args.repeats) for d in DOMAINS for r in (False, True)]
    print("| domain | images | reset ms (wall / CPU) | step ms (wall / CPU) |\n|---|---|---|---|")
    for t in times:
        print(f"| {t['domain']} | {'on' if t['render'] else 'off'} | {t['reset']['wall_ms']:.2f} / "
              f"{t['reset']['cpu_ms']:.2f} | {t['step']['wall_ms']:.2f} / {t['step']['cpu_ms']:.2f} |")
    checks = [history_check(d, args.episodes, args.num_envs) for d in DOMAINS]
    for c in checks:
        print(f"{c['domain']}: {c['differ']} of {c['compared']} demonstrations differ between masked and every-env stepping")
    out = {"seconds": time.perf_counter() - t0, "commit": code_version(),
           "args": {k: v for k, v in vars(args).items() if k != "out"},
           "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
           "timings": times, "history": checks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"{out['seconds']:.0f} s; {args.out}")


if __name__ == "__main__":
    main()
