"""A VectorEnv whose N environments are stepped by worker processes, one contiguous share each.

Each worker holds an in-process env of its share (`efm.domains.make_local_env` with the share's
first index, so its environments draw the same episodes as in one env of all N) and steps it
when told; the parent sends every worker its command before waiting for any, so the shares step
in parallel. Observations come back through pipes (a [N/W, 72, 128, 3] uint8 share is ~28 KB an
env; pickling it costs far less than rendering it). Workers start with the 'spawn' method: the
parent may hold JAX/TF threads, which makes fork unsafe. A worker that fails sends its exception,
which the parent raises; a parent that dies closes the pipes, which ends the workers.

    with SubprocessVectorEnv(cfg.env, num_envs=64, seed=0, num_workers=4) as env:
        ts = env.reset()
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from efm.config import EnvConfig
from efm.envs.base import Array, TimeStep, add_counts, counters, step_rows

START_METHOD = "spawn"
JOIN_TIMEOUT_S = 10.0


def shares(num_envs: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) env ranges, as even as possible, one per worker."""
    bounds = np.linspace(0, num_envs, num_workers + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def _share_step(env: Any, command: str, arg: Any) -> Any:
    if command == "reset":
        ts = env.reset(*arg)
        return ts, np.asarray(env.optimal_length())
    if command == "counters":
        return counters(env)
    return env.step(*arg), None


def _worker(conn: Connection, cfg: EnvConfig, num_envs: int, seed: int, first_env: int) -> None:
    """A worker's loop: ("reset", (mask | None, tasks | None)) and ("step", actions) answer ("ok", (timestep,
    optimal lengths after a reset)); ("counters", None) answers ("ok", the env's counters);
    ("close", None) ends it. Errors answer ("error", exception)."""
    from efm.domains import make_local_env

    env = None
    try:
        env = make_local_env(cfg, num_envs, seed, first_env)
        conn.send(("ok", env.action_dim))
        while True:
            try:
                command, arg = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if command == "close":
                conn.send(("ok", None))
                return
            try:
                conn.send(("ok", _share_step(env, command, arg)))
            except Exception as e:
                e.add_note(f"in env worker {first_env}..{first_env + num_envs - 1}:\n{traceback.format_exc()}")
                conn.send(("error", e))
    except Exception as e:
        with contextlib.suppress(Exception):
            e.add_note(traceback.format_exc())
            conn.send(("error", e))
    finally:
        if env is not None and hasattr(env, "close"):
            env.close()
        conn.close()


def merge(steps: Sequence[TimeStep]) -> TimeStep:
    """The TimeStep of all envs from the shares' TimeSteps, in share order."""
    first = steps[0]
    return TimeStep(
        observation={k: np.concatenate([s.observation[k] for s in steps]) for k in first.observation},
        goal={k: np.concatenate([s.goal[k] for s in steps]) for k in first.goal},
        instruction=tuple(i for s in steps for i in s.instruction),
        success=np.concatenate([np.asarray(s.success) for s in steps]),
    )


class SubprocessVectorEnv:
    """The `VectorEnv` of `efm.domains.make_local_env(cfg, num_envs, seed)`, stepped by
    `num_workers` processes; close it (or use it as a context manager) to end them."""

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int, num_workers: int):
        if not 1 <= num_workers <= num_envs:
            raise ValueError(f"num_workers must be in [1, num_envs={num_envs}], got {num_workers}")
        self.num_envs = num_envs
        self._shares = shares(num_envs, num_workers)
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._last: list[TimeStep | None] = [None] * num_workers
        self._optimal = np.zeros(num_envs)
        ctx = mp.get_context(START_METHOD)
        try:
            for start, stop in self._shares:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, cfg, stop - start, seed, start), daemon=True,
                                   name=f"efm-env-{start}-{stop - 1}")
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            self.action_dim = int(self._receive_all()[0])
        except BaseException:
            self.close()
            raise

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def _receive(self, conn: Connection) -> Any:
        try:
            status, value = conn.recv()
        except EOFError as e:
            raise RuntimeError("an env worker exited unexpectedly") from e
        if status == "error":
            raise value
        return value

    def _receive_all(self, workers: Sequence[int] | None = None) -> list[Any]:
        workers = range(len(self._conns)) if workers is None else workers
        results, error = [], None
        for w in workers:  # read every answer, so that no worker is left mid-conversation
            try:
                results.append(self._receive(self._conns[w]))
            except BaseException as e:
                error = error or e
                results.append(None)
        if error is not None:
            raise error
        return results

    def _ask(self, requests: dict[int, tuple[str, Any]]) -> list[Any]:
        """Each worker's answer to its request, in `requests`' order. A worker that died takes
        no request (the pipe is broken): the others' answers are still read, so none is left
        mid-conversation, and the death is raised as the one a read would have found."""
        sent, broken = [], None
        for w, request in requests.items():
            try:
                self._conns[w].send(request)
                sent.append(w)
            except OSError as e:  # BrokenPipeError, ConnectionResetError
                broken = broken or e
        results = self._receive_all(sent)
        if broken is not None:
            raise RuntimeError("an env worker exited unexpectedly") from broken
        return results

    def _timestep(self) -> TimeStep:
        return merge([s for s in self._last if s is not None])

    def reset(self, mask: Array | None = None, tasks: Array | None = None) -> TimeStep:
        """Resets where mask is True, to the named `tasks` if given (as VectorEnv.reset); shares
        without any keep their last TimeStep (nothing moved there since)."""
        mask = None if mask is None else np.asarray(mask, bool)
        tasks = None if tasks is None else np.asarray(tasks)
        if mask is not None and mask.shape != (self.num_envs,):
            raise ValueError(f"mask must have shape {(self.num_envs,)}, got {mask.shape}")
        todo = [w for w, (a, b) in enumerate(self._shares)
                if mask is None or mask[a:b].any() or self._last[w] is None]
        requests = {w: ("reset", (None if mask is None else mask[a:b], None if tasks is None else tasks[a:b]))
                    for w, (a, b) in ((w, self._shares[w]) for w in todo)}
        for w, (ts, optimal) in zip(todo, self._ask(requests), strict=True):
            a, b = self._shares[w]
            self._last[w] = ts
            self._optimal[a:b] = optimal
        return self._timestep()

    def step(self, actions: Array, mask: Array | None = None) -> TimeStep:
        """Steps the shares holding an env where mask is True; the others keep their last
        TimeStep (as VectorEnv.step)."""
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, self.action_dim):
            raise ValueError(f"actions must have shape {(self.num_envs, self.action_dim)}, got {actions.shape}")
        rows = step_rows(mask, self.num_envs)
        moved = np.ones(self.num_envs, bool) if rows is None else np.isin(np.arange(self.num_envs), rows)
        todo = [w for w, (a, b) in enumerate(self._shares) if moved[a:b].any()]
        requests = {w: ("step", (actions[a:b], None if rows is None else moved[a:b]))
                    for w, (a, b) in ((w, self._shares[w]) for w in todo)}
        for w, (ts, _) in zip(todo, self._ask(requests), strict=True):
            self._last[w] = ts
        return self._timestep()

    def optimal_length(self) -> Array:
        return self._optimal.copy()

    def counters(self) -> dict[str, int]:
        """The shares' counters, summed."""
        return add_counts(*self._ask({w: ("counters", None) for w in range(len(self._conns))}))

    def close(self) -> None:
        """Ends every worker (asked first, then terminated if it does not exit) and reaps it."""
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.send(("close", None))
        for proc in self._procs:
            proc.join(JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.terminate()
                proc.join(JOIN_TIMEOUT_S)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> SubprocessVectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105 (contextlib.suppress: at interpreter exit module globals may be None already)
            self.close()
        except Exception:
            pass
