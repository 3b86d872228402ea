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

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from efm import math
from efm.config import RunConfig
from efm.data.features import FrameHistory, InputSpec, input_spec
from efm.domains import make_env
from efm.envs.base import Array, Episode, TimeStep
from efm.models.efm import EFMFunctions
from efm.rollout import ACTION, SUCCESS, rollout_steps
from efm.self_improve.replay import Replay

STEPS_TO_GO = "steps_to_go"
ACTION_TOKENS = "action_tokens"
RETURN = "return"
INPUTS = "inputs/"  # prefix of the model's inputs among a replay sample's fields
SAMPLE_ID = "sample_id"  # (actor, episode, step): lets the learner draw reproducibly
POLICY_VERSION = "policy_version"  # the learner round whose weights acted (0: the SFT policy)


class StepsToGoClient(Protocol):
    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class PolicyAgent:
    """Samples actions from the EFM policy and records d(o, g) for each observation."""

    def __init__(self, fns: EFMFunctions, params: Any, steps_to_go: StepsToGoClient | None, seed: int):
        self._fns = fns
        self._params = params
        self._stg = steps_to_go
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
        self._params = params

    def reset(self, mask: Array) -> None:
        self._history.reset(mask)

    def observe(self, ts: TimeStep) -> dict[str, Array]:
        inputs = self.inputs(ts)
        if self._stg is None:
            return {}
        return {STEPS_TO_GO: self._stg.steps_to_go(inputs)}

    def act(self, ts: TimeStep) -> dict[str, Array]:
        self._rng, key = jax.random.split(self._rng)
        inputs = {k: jnp.asarray(v) for k, v in self.inputs(ts).items()}
        actions, tokens = self._fns.sample_actions(self._params, inputs, key)
        return {ACTION: actions, ACTION_TOKENS: tokens}


def detected_success(threshold: float) -> Callable[[TimeStep, dict[str, Array]], Array]:
    """End an episode when the frozen model says the goal is reached (Eq. 3)."""

    def end_on(ts: TimeStep, extras: dict[str, Array]) -> Array:
        del ts
        return np.asarray(math.detect_success(extras[STEPS_TO_GO], threshold))

    return end_on


def label_episode(episode: Episode, gamma: float, spec: InputSpec) -> dict[str, np.ndarray]:
    """Replay samples (o_t, a_t, g, R_t) for t < T, from the recorded d(o_t, g). [T, ...]"""
    stg = np.asarray(episode.observation_extras[STEPS_TO_GO], np.float32)  # [T+1]
    rewards = math.self_improvement_reward(stg[:-1], stg[1:])  # [T]
    returns = np.asarray(math.monte_carlo_returns(jnp.asarray(rewards), gamma))
    inputs = {f"{INPUTS}{k}": v[:-1] for k, v in spec.episode_inputs(episode).items()}
    return {**inputs, ACTION_TOKENS: episode.action_extras[ACTION_TOKENS].astype(np.int32),
            RETURN: returns.astype(np.float32)}


def sample_ids(actor_index: int, episode_index: int, length: int) -> np.ndarray:
    """Unique, ordered ids of an episode's samples. [T] int64"""
    return ((np.int64(actor_index) << 40) + (np.int64(episode_index) << 12) + np.arange(length)).astype(np.int64)


def episode_summary(episode: Episode, threshold: float) -> dict[str, float]:
    """What the coordinator needs to know of an episode (no arrays)."""
    return {"length": float(episode.length),
            "detected": float(episode.observation_extras[STEPS_TO_GO][-1] <= threshold),
            "success": float(episode.observation_extras[SUCCESS][-1])}


class Actor:
    """Environments + local policy + steps-to-go client + replay writer (one per robot station).

    `run_round` collects with the given weights: it starts episodes while the shared replay's
    samples plus its in-flight lower bound stay below `target_size` and this actor has started
    fewer than `max_episodes`, and runs every started episode to its end (detected success,
    max length or an operator stop) into the replay.
    """

    def __init__(self, cfg: RunConfig, fns: EFMFunctions, params: Any, steps_to_go: StepsToGoClient,
                 replay: Replay, seed: int, interrupt: Callable[[], Array | bool] | None = None,
                 actor_index: int = 0):
        self._cfg = cfg
        self._index = actor_index
        self._episodes = 0
        self._env = make_env(cfg.env, cfg.self_improve.num_envs, seed=seed)
        self._agent = PolicyAgent(fns, params, steps_to_go, seed=seed)
        self._spec = input_spec(fns.vocab)
        self._replay = replay
        self._interrupt = interrupt

    def run_round(self, params: Any, version: int, max_episodes: int, target_size: int) -> list[dict[str, float]]:
        """Summaries of every episode started this round (all finished and, if not empty, in
        the replay). `version` is the policy version of `params` (the learner's round)."""
        si = self._cfg.self_improve
        self._agent.update(params)
        summaries: list[dict[str, float]] = []
        if max_episodes <= 0:
            return summaries

        def may_start(in_flight: int) -> bool:
            return self._replay.size() + in_flight < target_size

        for finished in rollout_steps(self._env, self._agent, max_steps=self._cfg.env.max_episode_steps,
                                      end_on=detected_success(si.success_threshold), max_episodes=max_episodes,
                                      interrupt=self._interrupt, may_start=may_start, id_prefix=f"si-r{version}"):
            for episode in finished:
                summaries.append(episode_summary(episode, si.success_threshold))
                if episode.length:
                    samples = label_episode(episode, si.gamma, self._spec)
                    samples[SAMPLE_ID] = sample_ids(self._index, self._episodes, episode.length)
                    samples[POLICY_VERSION] = np.full(episode.length, version, np.int64)
                    self._replay.add_episode(samples)
                self._episodes += 1
        return summaries
