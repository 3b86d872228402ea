"""The steps-to-go service: a frozen Stage-1 checkpoint answering d(o, g) in batches.

Used for success detection during episodes (Eq. 3) and reward labelling after them (Eq. 2).
Actors call `steps_to_go` on it directly in single-process runs, or through a Ray actor handle.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import jax.numpy as jnp
import numpy as np

from efm.models.efm import EFMFunctions
from efm.models.frame_cache import FrameCache, bucket_size

# Latency percentiles are over the most recent requests: a run of many hours keeps no more.
LATENCY_WINDOW = 100_000


class StepsToGoService:
    def __init__(self, fns: EFMFunctions, params: Any, version: str = "reward-sft"):
        self._fns = fns
        self._params = params
        self._frames = FrameCache(fns, params)  # each request's previous frames were a request ago
        self.version = version
        self.num_queries = 0

    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """d(o, g) for a batch of observations. [B]"""
        self.num_queries += 1
        inputs = self._frames(inputs)
        return np.asarray(self._fns.steps_to_go(self._params, {k: jnp.asarray(v) for k, v in inputs.items()}))


def concat_padded(requests: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int]]:
    """One batch of every request's rows (padded by repeating the last row) and their sizes."""
    sizes = [len(next(iter(r.values()))) for r in requests]
    total = sum(sizes)
    pad = bucket_size(total) - total
    batch = {k: np.concatenate([r[k] for r in requests] + [np.repeat(requests[-1][k][-1:], pad, axis=0)])
             for k in requests[0]}
    return batch, sizes


def split_rows(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(np.asarray(values)[:sum(sizes)], np.cumsum(sizes)[:-1])


class _Request:
    def __init__(self, inputs: dict[str, np.ndarray]):
        self.inputs = inputs
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class BatchingStepsToGo:
    """The service for many concurrent callers (a fleet's actors): requests that arrive while
    one is gathering (up to `wait_s`, or until `max_callers` wait) are answered by one forward
    pass. The first caller of a batch leads it; the others wait for their rows.
    """

    def __init__(self, service: StepsToGoService, wait_s: float = 0.002, max_callers: int = 1):
        self._service = service
        self._wait_s = wait_s
        self._max_callers = max(1, max_callers)
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._leading = False
        self.version = service.version
        self.stats = {"batches": 0, "requests": 0, "rows": 0}
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_WINDOW)  # per request, arrival to answer

    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        request = _Request(inputs)
        with self._cond:
            self._pending.append(request)
            self._cond.notify_all()
            lead = not self._leading
            if lead:
                self._leading = True
                deadline = t0 + self._wait_s
                while len(self._pending) < self._max_callers and (left := deadline - time.perf_counter()) > 0:
                    self._cond.wait(left)
                batch, self._pending = self._pending, []
                self._leading = False
        if lead:
            try:
                stacked, sizes = concat_padded([r.inputs for r in batch])
                for r, values in zip(batch, split_rows(self._service.steps_to_go(stacked), sizes), strict=True):
                    r.result = values
                self.stats["batches"] += 1
                self.stats["requests"] += len(batch)
                self.stats["rows"] += sum(sizes)
            except BaseException as e:  # every waiting caller gets the error
                for r in batch:
                    r.error = e
            finally:
                for r in batch:
                    r.done.set()
        request.done.wait()
        self.latencies_s.append(time.perf_counter() - t0)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result
