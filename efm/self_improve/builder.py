"""The one place where the config meets Stage 2's roles (Acme's builder pattern).

`FleetBuilder` makes the replay, the steps-to-go service, actors, the learner and the policy
from a `RunConfig`; `build` wires them for the configured runtime into a `Fleet`, the handful
of calls the coordinator makes. In one process the roles are plain objects; on Ray
(`distributed.py`) each role is a Ray actor whose body is made by this same builder, so both
runtimes run the same library code. The builder is a small frozen value: it travels to Ray
workers by pickling.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from efm.config import RunConfig
from efm.data.features import input_spec
from efm.domains import make_env
from efm.envs.base import add_counts
from efm.models.efm import EFMFunctions, make_functions
from efm.models.prefix_lm import INPUTS, split_inputs
from efm.models.tokenizers import make_vocabulary
from efm.self_improve.actor import (
    ACTION_TOKENS,
    POLICY_VERSION,
    RETURN,
    SAMPLE_ID,
    Actor,
    LocalPolicy,
    Monitor,
    PolicyClient,
    StepsToGoClient,
)
from efm.self_improve.coordinator import CollectFn, LearnFn
from efm.self_improve.learner import Learner
from efm.self_improve.monitor import FleetMonitor
from efm.self_improve.replay import Replay, ReverbReplay, SampleSpec
from efm.self_improve.service import StepsToGoService


def with_fleet(cfg: RunConfig, actors: int | None = None, ray_address: str | None = None) -> RunConfig:
    """`--actors K` / `--ray-address A`: K actors on Ray (embedded on this machine, or on the
    cluster at A). None (or 0 / "") leaves the config as it is."""
    si = cfg.self_improve
    if actors:
        si = dataclasses.replace(si, num_actors=actors, runtime="ray")
    if ray_address:
        si = dataclasses.replace(si, runtime="ray", fleet=dataclasses.replace(si.fleet, ray_address=ray_address))
    return cfg.replace(self_improve=si)


def actor_seed(seed: int, index: int, life: int = 0, rounds_done: int = 0) -> int:
    """The seed of actor `index`'s envs and action sampling in its `life`-th process (Ray
    restarts it) of a task resumed after `rounds_done` rounds (0: a fresh task).

    Actor 0's first life in a fresh task keeps the branch `seed`: every committed result was
    measured so. Any other draws its own stream from a hash of all four, at or above 2**31 so
    that it meets no branch seed: `seed + index` gave branch s's actor k+1 the boards of branch
    s+1's actor k, and a resumed task redrew the boards of round 0 onward. (Strides of large
    primes still meet: seed + 1_000_003 k + 1_000_033 l is branch s+30's actor 1 for branch
    s's actor 0 in its second life.) Below 2**32: JAX keeps only a seed's low 32 bits.
    """
    if index == life == rounds_done == 0:
        return seed
    return int(np.random.SeedSequence([seed, index, life, rounds_done]).generate_state(1)[0]) | 1 << 31


def replay_spec(fns: EFMFunctions, cfg: RunConfig) -> SampleSpec:
    """Shapes of one replay sample (o_t, a_t, g, R_t), read off a reset environment."""
    env = make_env(cfg.env, 1, 0)
    ts = env.reset()
    close = getattr(env, "close", None)
    if close is not None:
        close()
    inputs = input_spec(fns.vocab).inputs(ts.observation, None, ts.goal, ts.instruction)
    spec: dict[str, tuple[tuple[int, ...], Any]] = {f"{INPUTS}{k}": (tuple(v.shape[1:]), v.dtype)
                                                     for k, v in inputs.items()}
    spec[ACTION_TOKENS] = ((fns.vocab.action.num_tokens,), np.int32)
    spec[RETURN] = ((), np.float32)
    spec[SAMPLE_ID] = ((), np.int64)
    spec[POLICY_VERSION] = ((), np.int64)
    return spec


@dataclass
class Fleet:
    """The built roles, as the coordinator and the stage see them."""

    collect_round: CollectFn
    learn_round: LearnFn
    get_learner_state: Callable[[], dict[str, Any]]
    set_learner_state: Callable[[dict[str, Any]], None]
    monitor: Any  # FleetMonitor, or a Ray handle to one
    view: Any = None  # the monitor as the console and coordinator call it: snapshot, request_stop, set_paused, round_ended
    stats: Callable[[], dict[str, Any]] = dict  # faults survived, service batching, ...
    close: Callable[[], None] = lambda: None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetBuilder:
    cfg: RunConfig

    @functools.cached_property
    def fns(self) -> EFMFunctions:
        return make_functions(self.cfg.model, make_vocabulary(self.cfg.tokenizer))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FleetBuilder, (self.cfg,))  # the compiled functions are rebuilt where it lands

    def spec(self) -> SampleSpec:
        return replay_spec(self.fns, self.cfg)

    def init_params(self, seed: int) -> Any:
        """Fresh weights for the config's model and inputs (fleet tests and benchmarks, where
        the accounting, not learning, is measured; the pipeline starts from Stage 1's)."""
        inputs, _ = split_inputs({k: np.zeros((1, *shape), dtype) for k, (shape, dtype) in self.spec().items()})
        return self.fns.init(jax.random.PRNGKey(seed), inputs)

    def make_replay_server(self, advertise_host: str = "localhost") -> ReverbReplay:
        """The Reverb server (in the calling process), its address naming `advertise_host`."""
        return ReverbReplay.local(self.spec(), host=advertise_host)

    def connect_replay(self, address: str) -> ReverbReplay:
        return ReverbReplay.connect(address, self.spec())

    def make_service(self, reward_params: Any) -> StepsToGoService:
        return StepsToGoService(self.fns, reward_params)

    def make_policy(self, params: Any) -> LocalPolicy:
        return LocalPolicy(self.fns, params)

    def make_learner(self, policy_params: Any) -> Learner:
        return Learner(self.fns, policy_params, self.cfg.self_improve)

    def make_actor(self, index: int, params: Any, steps_to_go: StepsToGoClient, replay: Replay,
                   monitor: Monitor | None = None, policy: PolicyClient | None = None,
                   interrupt: Callable[[], Any] | None = None, life: int = 0, rounds_done: int = 0,
                   env: Any = None) -> Actor:
        """Actor `index` in its `life`-th process, of a task resumed after `rounds_done` rounds,
        seeded by `actor_seed`; `env`: a robot station instead of the simulator."""
        seed = actor_seed(self.cfg.self_improve.seed, index, life, rounds_done)
        return Actor(self.cfg, self.fns, params, steps_to_go, replay, seed=seed,
                     interrupt=interrupt, actor_index=index, monitor=monitor, policy=policy, env=env)

    def build(self, policy_params: Any, reward_params: Any, interrupt: Callable[[], Any] | None = None,
              rounds_done: int = 0) -> Fleet:
        """The roles for `self_improve.runtime`; `rounds_done`: the rounds a resumed task has
        behind it (its actors draw other boards than those rounds')."""
        if self.cfg.self_improve.runtime == "ray":
            from efm.self_improve.distributed import build_ray_fleet

            return build_ray_fleet(self, policy_params, reward_params, interrupt, rounds_done)
        return self.build_single_process(policy_params, reward_params, interrupt, rounds_done)

    def build_single_process(self, policy_params: Any, reward_params: Any,
                             interrupt: Callable[[], Any] | None = None, rounds_done: int = 0) -> Fleet:
        si = self.cfg.self_improve
        with ExitStack() as made:  # a failure part-way closes what was made (env workers, the server)
            replay = self.make_replay_server()
            made.callback(replay.close)
            service = self.make_service(reward_params)
            monitor = FleetMonitor()
            actors = []
            for i in range(si.num_actors):
                actors.append(self.make_actor(i, policy_params, service, replay, monitor=monitor, interrupt=interrupt,
                                              rounds_done=rounds_done))
                made.callback(actors[-1].close)
            learner = self.make_learner(policy_params)
            cleanup = made.pop_all()

        def collect_round(params: Any, r: int, budget: int) -> list[dict[str, float]]:
            monitor.round_started(r)
            out: list[dict[str, float]] = []
            for actor in actors:  # in turn: one process
                out += actor.run_round(params, learner.version, budget - len(out), si.samples_per_round)
            return out

        def learn_round(learning_rate: float) -> tuple[dict[str, float], Any]:
            return learner.run_round(replay, learning_rate), learner.get_variables()

        def stats() -> dict[str, Any]:
            events = add_counts(*(a.counters() for a in actors))
            return {"env_counters": events} if events else {}

        # Actors, then the replay; every one is closed though another's close fails.
        return Fleet(collect_round, learn_round, learner.get_state, learner.set_state, monitor, view=monitor,
                     stats=stats, close=cleanup.close)
