"""Algorithm 1 on Ray (Appendix J, Version 2): actors, a steps-to-go service and a learner
as Ray actors around one Reverb replay, driven by the same coordinator as the one-process run.

Locally Ray is embedded (`ray.init()` on loopback); set `EFM_RAY_ADDRESS` to join a cluster
(KubeRay, Ray on Vertex AI) where robot stations are nodes offering e.g. a {"robot": 1}
resource. Ray trusts its network: keep it on loopback or a private network with TLS
(RAY_USE_TLS, see the README).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import ray

from efm.config import RunConfig
from efm.models.efm import make_functions
from efm.models.tokenizers import make_vocabulary
from efm.self_improve.actor import Actor
from efm.self_improve.coordinator import SelfImproveResult, coordinate
from efm.self_improve.learner import Learner
from efm.self_improve.loop import replay_spec
from efm.self_improve.replay import ReverbReplay
from efm.self_improve.service import StepsToGoService
from efm.types import Logger


class _ServiceWorker:
    def __init__(self, cfg_json: str, params: Any):
        cfg = RunConfig.from_json(cfg_json)
        self._service = StepsToGoService(make_functions(cfg.model, make_vocabulary(cfg.tokenizer)), params)

    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self._service.steps_to_go(inputs)


class _RemoteStepsToGo:
    """The actor-side client of the steps-to-go service."""

    def __init__(self, handle: Any):
        self._handle = handle

    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return ray.get(self._handle.steps_to_go.remote(inputs))


class _ActorWorker:
    def __init__(self, cfg_json: str, params: Any, service: Any, replay_address: str, seed: int, index: int):
        cfg = RunConfig.from_json(cfg_json)
        fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
        replay = ReverbReplay.connect(replay_address)
        self._actor = Actor(cfg, fns, params, _RemoteStepsToGo(service), replay, seed=seed, actor_index=index)

    def run_round(self, params: Any, round_index: int, max_episodes: int, target_size: int) -> list[dict[str, float]]:
        return self._actor.run_round(params, round_index, max_episodes, target_size)


class _LearnerWorker:
    def __init__(self, cfg_json: str, params: Any, replay_address: str):
        cfg = RunConfig.from_json(cfg_json)
        self._learner = Learner(make_functions(cfg.model, make_vocabulary(cfg.tokenizer)), params, cfg.self_improve)
        self._replay = ReverbReplay.connect(replay_address)

    def run_round(self, learning_rate: float) -> tuple[dict[str, float], Any]:
        return self._learner.run_round(self._replay, learning_rate), self._learner.get_variables()


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def self_improve_on_ray(cfg: RunConfig, policy_params: Any, reward_params: Any, log: Logger | None = None,
                        progress: bool = True) -> SelfImproveResult:
    si = cfg.self_improve
    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("EFM_RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"_node_ip_address": "127.0.0.1"}))
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    cfg_json = cfg.to_json()
    try:
        with ReverbReplay.local(replay_spec(fns, cfg)) as replay:
            service = ray.remote(_ServiceWorker).options(num_cpus=0).remote(cfg_json, reward_params)
            actors = [ray.remote(_ActorWorker).options(num_cpus=0).remote(
                cfg_json, policy_params, service, replay.address, si.seed + i, i) for i in range(si.num_actors)]
            learner = ray.remote(_LearnerWorker).options(num_cpus=0).remote(cfg_json, policy_params, replay.address)

            def collect_round(params: Any, r: int, budget: int) -> list[dict[str, float]]:
                ref = ray.put(params)  # one broadcast of the new weights to every actor
                caps = _split(budget, len(actors))
                futures = [a.run_round.remote(ref, r, cap, si.samples_per_round) for a, cap in zip(actors, caps, strict=True)]
                return [s for part in ray.get(futures) for s in part]

            def learn_round(learning_rate: float) -> tuple[dict[str, float], Any]:
                return ray.get(learner.run_round.remote(learning_rate))

            return coordinate(si, policy_params, collect_round, learn_round, log=log, progress=progress)
    finally:
        if started_here:
            ray.shutdown()
