"""The Self-Improvement actor (Appendix J, Version 2: local policy inference).

It steps N environments with the current policy, asks the steps-to-go service for d(o, g) on
every observation (success detection during the episode, rewards after it), labels finished
episodes with Monte Carlo returns and writes them whole into the replay, each sample stamped
with the policy version that produced it.

When a round stops (Algorithm 1 as clarified in DESIGN.md): the actor stops *starting*
episodes once the replay's samples plus a lower bound on what its running episodes will still
deliver (their steps so far, plus one each) reach N*B, and finishes every episode it started.
The bound is conservative in the sense that the replay then surely reaches N*B; the price is
some samples beyond N*B (the running episodes' remaining steps), which the learner's uniform
draw of N*B leaves unused. No started episode is dropped, so a round's episodes are not biased
towards the quick ones, and every started episode counts in the practice budget.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from efm import math
from efm.config import RunConfig
from efm.data.features import FrameHistory, InputSpec, input_spec
from efm.domains import episode_progress, make_env
from efm.envs.base import Array, Episode, TimeStep, VectorEnv, counters
from efm.models.efm import EFMFunctions
from efm.models.frame_cache import FrameCache
from efm.models.prefix_lm import INPUTS
from efm.rollout import ACTION, SUCCESS, rollout_steps
from efm.self_improve.replay import Replay

STEPS_TO_GO = "steps_to_go"
ACTION_TOKENS = "action_tokens"
RETURN = "return"
SAMPLE_ID = "sample_id"  # (actor, episode, step): lets the learner draw reproducibly
POLICY_VERSION = "policy_version"  # the learner round whose weights acted (0: the SFT policy)


class StepsToGoClient(Protocol):
    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class PolicyClient(Protocol):
    """Where actions come from: the actor's own copy of the weights (Version 2) or the
    learner's devices (Version 1)."""

    def update(self, params: Any) -> None: ...

    def sample(self, inputs: dict[str, np.ndarray], key: jax.Array) -> tuple[np.ndarray, np.ndarray]: ...


class LocalPolicy:
    """Version 2: inference on the actor, with the weights broadcast after each round."""

    def __init__(self, fns: EFMFunctions, params: Any):
        self._fns, self._params = fns, params
        self._frames = FrameCache(fns, params)

    def update(self, params: Any) -> None:
        self._params = params
        self._frames = FrameCache(self._fns, params)  # codes of the old weights' tower

    def sample(self, inputs: dict[str, np.ndarray], key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        inputs = self._frames(inputs)
        actions, tokens = self._fns.sample_actions(self._params, {k: jnp.asarray(v) for k, v in inputs.items()}, key)
        return np.asarray(actions), np.asarray(tokens)


class Monitor(Protocol):
    """The part of `monitor.FleetMonitor` an actor reports to (directly, or through Ray)."""

    def call_started(self, actor: int, call: int, round_index: int) -> None: ...

    def episodes_started(self, call: int, n: int) -> None: ...

    def episode_finished(self, call: int, key: int, summary: dict[str, float]) -> None: ...

    def episode_written(self, call: int, key: int) -> None: ...

    def status(self, actor: int, status: dict[str, Any]) -> None: ...

    def claim_in_flight(self, actor: int, call: int, samples: int) -> int: ...

    def take_stop(self, actor: int) -> bool: ...

    def paused(self) -> bool: ...


class PolicyAgent:
    """Samples actions from the EFM policy and records d(o, g) for each observation."""

    def __init__(self, fns: EFMFunctions, params: Any, steps_to_go: StepsToGoClient | None, seed: int,
                 policy: PolicyClient | None = None):
        self._fns = fns
        self._policy = policy if policy is not None else LocalPolicy(fns, params)
        self._stg = steps_to_go
        self.last_steps_to_go: np.ndarray | None = None
        self._rng = jax.random.PRNGKey(seed)
        self._spec = input_spec(fns.vocab)  # a vocabulary with text: the model reads frames + text
        self._history = FrameHistory()
        self._last: tuple[TimeStep, dict[str, np.ndarray]] | None = None

    def inputs(self, ts: TimeStep) -> dict[str, np.ndarray]:
        """The model's inputs for this time step (computed once; frame pairs need history)."""
        if self._last is None or self._last[0] is not ts:
            previous = self._history(ts.observation)
            self._last = (ts, self._spec.inputs(ts.observation, previous, ts.goal, ts.instruction))
        return self._last[1]

    def update(self, params: Any) -> None:
        """New policy weights (broadcast by the coordinator after each round)."""
        self._policy.update(params)

    def reset(self, mask: Array) -> None:
        self._history.reset(mask)

    def observe(self, ts: TimeStep) -> dict[str, Array]:
        inputs = self.inputs(ts)
        if self._stg is None:
            return {}
        self.last_steps_to_go = np.asarray(self._stg.steps_to_go(inputs))
        return {STEPS_TO_GO: self.last_steps_to_go}

    def act(self, ts: TimeStep) -> dict[str, Array]:
        self._rng, key = jax.random.split(self._rng)
        actions, tokens = self._policy.sample(self.inputs(ts), key)
        return {ACTION: actions, ACTION_TOKENS: tokens}


def detected_success(threshold: float) -> Callable[[TimeStep, dict[str, Array]], Array]:
    """End an episode when the frozen model says the goal is reached (Eq. 3)."""

    def end_on(ts: TimeStep, extras: dict[str, Array]) -> Array:
        del ts
        return np.asarray(math.detect_success(extras[STEPS_TO_GO], threshold))

    return end_on


def label_episode(episode: Episode, gamma: float, spec: InputSpec, success_bonus: float = 0.0,
                  ) -> dict[str, np.ndarray]:
    """Replay samples (o_t, a_t, g, R_t) for t < T, from the recorded d(o_t, g), plus
    `success_bonus` on each step into a ground-truth success (self_improve.success_bonus). [T, ...]"""
    stg = np.asarray(episode.observation_extras[STEPS_TO_GO], np.float32)  # [T+1]
    rewards = math.self_improvement_reward(stg[:-1], stg[1:])  # [T]
    if success_bonus:
        success = np.asarray(episode.observation_extras[SUCCESS], bool)  # [T+1] ground truth
        rewards = math.success_bonus_reward(rewards, success[1:], success_bonus)
    returns = np.asarray(math.monte_carlo_returns(jnp.asarray(rewards), gamma))
    inputs = {f"{INPUTS}{k}": v[:-1] for k, v in spec.episode_inputs(episode).items()}
    return {**inputs, ACTION_TOKENS: episode.action_extras[ACTION_TOKENS].astype(np.int32),
            RETURN: returns.astype(np.float32)}


def episode_key(actor_index: int, call: int, episode_index: int) -> int:
    """Unique id of an episode: (actor, round call, episode within the call); a restarted
    actor gets a new call, so its episodes never collide with its previous life's."""
    if not (0 <= actor_index < 1 << 11 and 0 <= call < 1 << 20 and 0 <= episode_index < 1 << 20):
        raise ValueError(f"episode key out of range: actor {actor_index}, call {call}, episode {episode_index}")
    return (actor_index << 40) | (call << 20) | episode_index


def sample_ids(key: int, length: int) -> np.ndarray:
    """Unique, ordered ids of an episode's samples; `ids >> 12` is the episode key. [T] int64"""
    if length > 1 << 12:
        raise ValueError(f"episode of {length} steps: sample ids hold at most 4096 per episode")
    return ((np.int64(key) << 12) + np.arange(length)).astype(np.int64)


def episode_summary(episode: Episode, threshold: float, progress: dict[str, bool]) -> dict[str, float]:
    """What the coordinator needs to know of an episode (no arrays), with the task stages it
    reached (`efm.domains.episode_progress`), reported like ground-truth success."""
    return {"length": float(episode.length),
            "detected": float(math.detect_success(episode.observation_extras[STEPS_TO_GO][-1], threshold)),
            "success": float(episode.observation_extras[SUCCESS][-1]), **{k: float(v) for k, v in progress.items()}}


STATUS_EVERY_S = 0.1  # live status to the monitor at most this often
CURVE_POINTS = 100  # the d(o, g) curve of env 0's running episode, for the console


class Actor:
    """Environments + a policy + a steps-to-go client + a replay writer (one per robot station).

    `run_round` collects with the given weights: it starts episodes while the shared replay's
    samples plus the in-flight lower bound of the whole fleet (its own, and the other actors'
    through the monitor) stay below `target_size` and this actor has started fewer than
    `max_episodes`, and runs every started episode to its end (detected success, max length
    or an operator stop) into the replay. With a `monitor` it reports each start,
    each finished episode (before its write) and each write, and its live status; an
    operator's stop there ends its running episodes, a pause holds new starts.
    """

    def __init__(self, cfg: RunConfig, fns: EFMFunctions, params: Any, steps_to_go: StepsToGoClient,
                 replay: Replay, seed: int, interrupt: Callable[[], Array | bool] | None = None,
                 actor_index: int = 0, monitor: Monitor | None = None, policy: PolicyClient | None = None,
                 env: VectorEnv | None = None):
        """`env`: a robot station (`station.StationEnv`) or any VectorEnv; default the
        config's simulator with self_improve.num_envs copies."""
        self._cfg = cfg
        self._index = actor_index
        self._env = env if env is not None else make_env(cfg.env, cfg.self_improve.num_envs, seed=seed)
        self._agent = PolicyAgent(fns, params, steps_to_go, seed=seed, policy=policy)
        self._spec = input_spec(fns.vocab)
        self._replay = replay
        self._interrupt = interrupt
        self._monitor = monitor
        self._last_status = 0.0
        self._curve: list[float] = []

    def counters(self) -> dict[str, int]:
        """The env's counters since this actor started (`efm.envs.base.counters`)."""
        return counters(self._env)

    def close(self) -> None:
        close = getattr(self._env, "close", None)
        if close is not None:
            close()

    def _stop_requested(self) -> Array | bool:
        stop = bool(self._monitor is not None and self._monitor.take_stop(self._index))
        return (self._interrupt() if self._interrupt is not None else False) | np.asarray(stop)

    def _report(self, version: int, call: int, steps: Array, force: bool = False) -> None:
        now = time.monotonic()
        if self._monitor is None or (not force and now - self._last_status < STATUS_EVERY_S):
            return
        self._last_status = now
        stg = getattr(self._agent, "last_steps_to_go", None)
        running = np.asarray(steps) >= 0
        self._monitor.status(self._index, {
            "policy_version": version, "call": call, "pid": os.getpid(), "in_flight": int(running.sum()),
            "in_flight_steps": int(np.sum(np.where(running, steps, 0))),
            "step": int(steps[0]) if len(steps) else -1,
            "steps_to_go": None if stg is None else float(stg[0]),
            "detected": None if stg is None else bool(math.detect_success(stg[0], self._cfg.self_improve.success_threshold)),
            "steps_to_go_curve": list(self._curve)})

    def run_round(self, params: Any, version: int, max_episodes: int, target_size: int,
                  call: int | None = None) -> list[dict[str, float]]:
        """Summaries of every episode started this round (all finished and, if not empty, in
        the replay). `version` is the policy version of `params` (the learner's round); `call`
        numbers this request (default: the round), for episode keys and the ledger."""
        si = self._cfg.self_improve
        call = version if call is None else call
        self._agent.update(params)
        summaries: list[dict[str, float]] = []
        if max_episodes <= 0:
            return summaries
        monitor = self._monitor
        if monitor is not None:
            monitor.call_started(self._index, call, version)

        running_steps = 0  # actions taken so far in this actor's running episodes
        # The other actors' steps in flight this round, as of this actor's last claim: made at
        # the start and whenever episodes end, just before may_start is asked.
        others = monitor.claim_in_flight(self._index, call, 0) if monitor is not None else 0

        def may_start(in_flight: int) -> bool:
            nonlocal others
            if monitor is not None and monitor.paused():  # the operator holds new episodes
                while monitor.paused():
                    time.sleep(STATUS_EVERY_S)
                others = monitor.claim_in_flight(self._index, call, running_steps)  # the fleet moved on meanwhile
            return self._replay.size() + in_flight + others < target_size

        def on_start(n: int) -> None:
            if monitor is not None:
                monitor.episodes_started(call, n)

        def on_step(steps: Array) -> None:
            nonlocal running_steps
            running_steps = int(np.sum(np.where(steps >= 0, steps, 0)))
            stg = getattr(self._agent, "last_steps_to_go", None)
            if stg is not None:  # env 0's running episode
                self._curve = ([] if steps[0] <= 0 else self._curve[-CURVE_POINTS + 1:]) + [float(stg[0])]
            self._report(version, call, steps)

        interrupt = self._stop_requested if (monitor is not None or self._interrupt is not None) else None
        for finished in rollout_steps(self._env, self._agent, max_steps=self._cfg.env.max_episode_steps,
                                      end_on=detected_success(si.success_threshold), max_episodes=max_episodes,
                                      interrupt=interrupt, may_start=may_start, id_prefix=f"si-r{version}",
                                      on_start=on_start, on_step=on_step):
            if monitor is not None:  # out of flight before they are in the replay: never counted twice
                running_steps -= sum(e.length for e in finished)
                others = monitor.claim_in_flight(self._index, call, running_steps)
            for episode in finished:
                key = episode_key(self._index, call, len(summaries))
                progress = episode_progress(self._cfg.env, episode)
                summary = {**episode_summary(episode, si.success_threshold, progress), "key": float(key)}
                summaries.append(summary)
                if monitor is not None:
                    monitor.episode_finished(call, key, summary)
                if episode.length:
                    samples = label_episode(episode, si.gamma, self._spec, si.success_bonus)
                    samples[SAMPLE_ID] = sample_ids(key, episode.length)
                    samples[POLICY_VERSION] = np.full(episode.length, version, np.int64)
                    self._replay.add_episode(samples)
                if monitor is not None:
                    monitor.episode_written(call, key)
        return summaries
