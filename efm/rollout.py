"""The one episode loop: demonstrations, evaluation and Self-Improvement actors all use it.

An agent acts on N vectorized environments; `observe` lets it attach per-observation values
to the episode (the steps-to-go prediction d(o, g), computed once per observation and used both
for success detection during the episode and for reward labelling after it). `end_on` decides
which episodes end at the current observation: ground-truth success for demonstrations and
evaluation, detected success for Self-Improvement. Episodes also end at `max_steps` actions and
when `interrupt` says so (a human operator's stop).

Two controls make the episodes a caller gets independent of timing. `may_start` lets a caller
stop *starting* episodes (the Self-Improvement actor, once its replay will hold N*B samples)
while every episode already started still runs to its end: nothing is ever cut or dropped.
`fixed_tasks` hands env i its k-th task as task index k * num_envs + i (the env's `reset`
maps a task index to a task deterministically), so two policies evaluated with the same seed
see the same task list however long their episodes take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from efm.envs.base import Array, Episode, TimeStep, VectorEnv


class Agent(Protocol):
    def reset(self, mask: Array) -> None:
        """New episodes start in the environments where mask [N] is True."""

    def observe(self, ts: TimeStep) -> dict[str, Array]:
        """Per-observation values to record, each [N] (may be empty)."""

    def act(self, ts: TimeStep) -> dict[str, Array]:
        """{"action": [N, action_dim], ...}: other keys are recorded per step (e.g. tokens)."""


@runtime_checkable
class GivesUp(Protocol):
    """A scripted demonstrator that can tell when it has given up on an episode: the episode ends
    there (a failure) instead of idling to the maximum length."""

    def gave_up(self) -> Array:
        """[N] bool."""


ACTION = "action"
SUCCESS = "success"  # ground truth at each observation, recorded for evaluation only
EndFn = Callable[[TimeStep, dict[str, Array]], Array]


def end_on_ground_truth(ts: TimeStep, extras: dict[str, Array]) -> Array:
    del extras
    return ts.success


def rollout(env: VectorEnv, agent: Agent, **kwargs: Any) -> Iterator[Episode]:
    """Finished episodes one by one; see `rollout_steps` for the arguments."""
    for finished in rollout_steps(env, agent, **kwargs):
        yield from finished


def rollout_steps(
    env: VectorEnv,
    agent: Agent,
    *,
    max_steps: int,
    end_on: EndFn = end_on_ground_truth,
    episodes_per_env: int | Array | None = None,
    max_episodes: int | None = None,
    interrupt: Callable[[], Array | bool] | None = None,
    may_start: Callable[[int], bool] | None = None,
    fixed_tasks: bool = False,
    id_prefix: str = "ep",
    on_start: Callable[[int], None] | None = None,
    on_step: Callable[[Array], None] | None = None,
) -> Iterator[list[Episode]]:
    """Yields the episodes that end at each step, until every env ran `episodes_per_env`.

    With `episodes_per_env=None` it runs until the caller stops iterating; an [N] array gives
    each env its own quota. A fixed quota per env matters for evaluation: stopping at a total
    count would drop the longest episodes.
    Yielding per step lets a caller that stops early keep every episode that already ended.
    `max_episodes` caps the episodes started in all (a practice budget is never overshot).
    `may_start(in_flight)` is asked before episodes start (at the beginning, and after the
    episodes ending at a step have been yielded and consumed); `in_flight` is a lower bound on
    the samples the running episodes will still deliver: their steps so far plus the one each
    takes next. When it answers False no episode starts any more; the running ones finish.
    `interrupt()` ends the running episodes that have taken an action (an operator's stop,
    a demonstrator giving up); an episode at its first observation runs on.
    Episode k of env i is `{id_prefix}-{i}-{k}`; with `fixed_tasks` it runs task k * N + i.
    `on_start(n)` hears of every n episodes started, `on_step(steps)` of the actions taken so
    far in each running episode (-1 where none runs) after every step: a fleet's ledger and
    live view, which must know what an actor killed mid-episode had started.
    """
    n = env.num_envs
    if may_start is not None and not may_start(0):
        return
    ts = env.reset(tasks=np.arange(n)) if fixed_tasks else env.reset()
    agent.reset(np.ones(n, bool))
    obs_buf: list[list[dict[str, Array]]] = [[] for _ in range(n)]
    act_buf: list[list[dict[str, Array]]] = [[] for _ in range(n)]
    ext_buf: list[list[dict[str, Array]]] = [[] for _ in range(n)]
    act_specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}  # per-step action extras, from the first act
    started = np.ones(n, np.int64)  # episodes begun per env
    active = np.ones(n, bool) if episodes_per_env is None else np.full(n, episodes_per_env > 0)
    if max_episodes is not None:
        active &= np.arange(n) < max_episodes
    launched = int(active.sum())
    if on_start is not None and launched:
        on_start(launched)
    while active.any():
        extras = {**agent.observe(ts), SUCCESS: np.asarray(ts.success, bool)}
        for i in np.flatnonzero(active):
            obs_buf[i].append({k: v[i] for k, v in ts.observation.items()})
            ext_buf[i].append({k: v[i] for k, v in extras.items()})
        steps = np.array([len(a) for a in act_buf])
        done = np.asarray(end_on(ts, extras), bool) | (steps >= max_steps)
        if interrupt is not None:  # ends the episodes that have acted: a stop seen before an
            # episode's first action (asked between rounds) has nothing of it to end, and would
            # leave a 0-step failure
            done = done | (np.asarray(interrupt(), bool) & (steps > 0))
        done &= active
        optimal = env.optimal_length() if done.any() else None
        finished = []
        for i in np.flatnonzero(done):
            finished.append(Episode(
                observations={k: np.stack([o[k] for o in obs_buf[i]]) for k in ts.observation},
                actions=np.asarray([a[ACTION] for a in act_buf[i]], np.float32).reshape(-1, env.action_dim),
                instruction=ts.instruction[i],
                goal={k: v[i] for k, v in ts.goal.items()},
                success=bool(ts.success[i]),
                episode_id=f"{id_prefix}-{i}-{started[i] - 1}",
                optimal_length=float(optimal[i]),
                observation_extras={k: np.asarray([e[k] for e in ext_buf[i]]) for k in extras},
                action_extras={k: np.asarray([a[k] for a in act_buf[i]], dtype).reshape(-1, *shape)
                               for k, (shape, dtype) in act_specs.items()},
            ))
            obs_buf[i], act_buf[i], ext_buf[i] = [], [], []
        if finished:
            yield finished
        if episodes_per_env is not None:
            active &= ~(done & (started >= episodes_per_env))
        if max_episodes is not None:  # restart envs in order while the budget lasts
            restartable = np.flatnonzero(done & active)
            allowed = max(max_episodes - launched, 0)
            active[restartable[allowed:]] = False
        if may_start is not None and (done & active).any():
            running = np.flatnonzero(active & ~done)
            if not may_start(int(sum(len(act_buf[i]) + 1 for i in running))):
                active &= ~done
        if not active.any():
            return
        actions = agent.act(ts)
        act_specs = {k: (v.shape[1:], v.dtype) for k, v in actions.items() if k != ACTION}
        for i in np.flatnonzero(active & ~done):
            act_buf[i].append({k: v[i] for k, v in actions.items()})
        ts = env.step(actions[ACTION], active & ~done)  # ended episodes' envs wait for their reset
        restart = done & active
        if restart.any():
            ts = env.reset(restart, tasks=started * n + np.arange(n)) if fixed_tasks else env.reset(restart)
            agent.reset(restart)
            started += restart
            launched += int(restart.sum())
            if on_start is not None:
                on_start(int(restart.sum()))
        if on_step is not None:
            on_step(np.where(active, [len(a) for a in act_buf], -1))

