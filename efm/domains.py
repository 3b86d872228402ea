"""What each domain provides: vectorized environments, a scripted demonstrator, and the
frames that show an episode in figures."""

from __future__ import annotations

import os

import numpy as np

from efm.config import EnvConfig
from efm.envs import pointmass
from efm.envs.base import Episode, VectorEnv
from efm.rollout import Agent

# Automatic worker count (env.num_workers 0): PyBullet domains get a worker per core, but never
# fewer than this many envs per worker (a message per step costs ~0.1 ms, an env step with
# images ~4 ms; starting a worker ~1 s).
MIN_ENVS_PER_WORKER = 8


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def env_workers(cfg: EnvConfig, num_envs: int) -> int:
    """How many processes step `num_envs` envs: `cfg.num_workers` if set (at most one per env),
    else every core for the simulated (PyBullet, MuJoCo) domains when there are enough envs, else 1 (in-process)."""
    if cfg.num_workers:
        return min(cfg.num_workers, num_envs)
    if cfg.domain == "pointmass":
        return 1
    return max(1, min(available_cores(), num_envs // MIN_ENVS_PER_WORKER))


def make_env(cfg: EnvConfig, num_envs: int, seed: int) -> VectorEnv:
    """The domain's vectorized env, stepped by `env_workers(cfg, num_envs)` processes (the same
    episodes for a seed whatever the number)."""
    workers = env_workers(cfg, num_envs)
    if workers > 1:
        from efm.envs.subprocess import SubprocessVectorEnv

        return SubprocessVectorEnv(cfg, num_envs, seed, workers)
    return make_local_env(cfg, num_envs, seed)


def make_local_env(cfg: EnvConfig, num_envs: int, seed: int, first_env: int = 0) -> VectorEnv:
    """The domain's vectorized env in this process; `first_env` > 0 makes envs first_env.. of
    the envs made from `seed` (a worker's share; PyBullet domains only)."""
    if cfg.domain == "pointmass":
        if first_env:
            raise ValueError("pointmass envs share one random stream: they cannot be split over workers")
        return pointmass.PointmassEnv(cfg, num_envs, seed)
    if cfg.domain == "tabletop":  # PyBullet is imported only for the domains that need it
        from efm.envs.tabletop import TabletopEnv

        return TabletopEnv(cfg, num_envs, seed, first_env)
    if cfg.domain == "bananatable":
        from efm.envs.bananatable import BananaTableEnv

        return BananaTableEnv(cfg, num_envs, seed, first_env)
    if cfg.domain == "aloha-insertion":  # MuJoCo likewise
        from efm.envs.aloha.env import AlohaInsertionEnv

        return AlohaInsertionEnv(cfg, num_envs, seed, first_env)
    raise ValueError(f"unknown domain {cfg.domain!r}")


def make_demonstrator(cfg: EnvConfig, num_envs: int, seed: int) -> Agent:
    if cfg.domain == "pointmass":
        return pointmass.WaypointDemonstrator(cfg, num_envs, seed)
    if cfg.domain == "tabletop":
        from efm.envs.tabletop import TabletopDemonstrator

        return TabletopDemonstrator(cfg, num_envs, seed)
    if cfg.domain == "bananatable":
        from efm.envs.bananatable import BananaDemonstrator

        return BananaDemonstrator(cfg, num_envs, seed)
    if cfg.domain == "aloha-insertion":
        from efm.envs.aloha.demonstrator import AlohaDemonstrator

        return AlohaDemonstrator(cfg, num_envs, seed)
    raise ValueError(f"unknown domain {cfg.domain!r}")


RGB = "rgb"  # the camera observation the table domains record (efm.envs.render shows it too)


def figure_frames(cfg: EnvConfig, episode: Episode, steps: np.ndarray) -> np.ndarray | None:
    """Frames [len(steps), H, W, 3] showing an episode's observations `steps` (the steps-to-go
    strips of Figures 2-3): the camera image where there is one; for Aloha both stacked images,
    or in state mode the scene rendered from the recorded state; None where there is nothing to
    show (pointmass's figure is its trajectory plot)."""
    if cfg.domain == "aloha-insertion":
        from efm.envs.aloha.env import figure_frames as aloha_frames

        return aloha_frames(cfg.aloha, episode.observations, steps)
    if RGB in episode.observations:
        return np.asarray(episode.observations[RGB])[np.asarray(steps, int)]
    return None


def episode_progress(cfg: EnvConfig, episode: Episode) -> dict[str, bool]:
    """Which intermediate stages of the task an episode reached, where the domain defines them
    (Aloha: the peg and the socket lifted); {} elsewhere. Ground truth, for reporting only."""
    if cfg.domain != "aloha-insertion":
        return {}
    from efm.envs.aloha.env import lift_progress

    return lift_progress(episode.observations)


def progress_metrics(cfg: EnvConfig, episodes: list[Episode]) -> dict[str, float]:
    """The share of `episodes` that reached each stage of `episode_progress`: how far policies
    that fail got."""
    stages = [episode_progress(cfg, e) for e in episodes]
    return {k: float(np.mean([s[k] for s in stages])) for k in (stages[0] if stages else {})}
