"""What each domain provides: vectorized environments and a scripted demonstrator."""

from __future__ import annotations

from efm.config import EnvConfig
from efm.envs import pointmass
from efm.envs.base import VectorEnv
from efm.rollout import Agent


def make_env(cfg: EnvConfig, num_envs: int, seed: int) -> VectorEnv:
    if cfg.domain == "pointmass":
        return pointmass.PointmassEnv(cfg, num_envs, seed)
    if cfg.domain == "tabletop":  # PyBullet is imported only for the domains that need it
        from efm.envs.tabletop import TabletopEnv

        return TabletopEnv(cfg, num_envs, seed)
    if cfg.domain == "bananatable":
        from efm.envs.bananatable import BananaTableEnv

        return BananaTableEnv(cfg, num_envs, seed)
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
    raise ValueError(f"unknown domain {cfg.domain!r}")
