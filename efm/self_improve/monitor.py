"""The fleet's ledger and live view: what every actor started and finished, and what it is
doing now; plus the operator's controls (end the running episodes, pause the fleet).

The ledger is what lets a round survive a dead actor: episodes are reported as they start
and, with their summary, when they end (before their replay write), so the coordinator knows
what a killed actor's round call did, and afterwards which episodes reached the replay. One
object serves every runtime: called directly in one process, wrapped as a Ray actor on a
fleet (calls from one actor arrive in order). It holds only small values (no arrays).
"""

from __future__ import annotations

import threading
import time
from typing import Any

EPISODE_KEY_SHIFT = 12  # sample_id >> 12 is the episode's key (see actor.sample_ids)


class FleetMonitor:
    def __init__(self, first_life: int = 0) -> None:
        """`first_life`: where each actor's lives are counted from (above 0 for a monitor that
        was restarted and has forgotten the lives it handed out)."""
        self._lock = threading.Lock()
        self._started: dict[int, int] = {}  # call -> episodes started
        self._finished: dict[int, dict[int, dict[str, float]]] = {}  # call -> key -> summary
        self._written: dict[int, set[int]] = {}  # call -> keys whose replay write returned
        self._call_round: dict[int, int] = {}
        self._live: dict[int, dict[str, Any]] = {}  # actor -> latest status
        # actor -> (call, samples its running episodes will still deliver, at least)
        self._in_flight: dict[int, tuple[int, int]] = {}
        self._rounds: list[dict[str, float]] = []
        self._stop: set[int] = set()  # actors asked to end their running episodes
        self._paused = False
        self._round = -1
        self._first_life = first_life
        self._lives: dict[int, int] = {}  # actor -> its latest life

    def actor_started(self, actor: int) -> int:
        """Which life of `actor` this is: 0 for its first process, then 1, 2, ... per restart
        (counted from `first_life`)."""
        with self._lock:
            self._lives[actor] = self._lives.get(actor, self._first_life - 1) + 1
            return self._lives[actor]

    def actor_died(self, actor: int) -> None:
        """A dead actor's running episodes will deliver nothing: the others stop counting them."""
        with self._lock:
            self._in_flight.pop(actor, None)

    # -- reports from actors --
    def call_started(self, actor: int, call: int, round_index: int) -> None:
        with self._lock:
            self._call_round[call] = round_index
            self._started.setdefault(call, 0)
            self._finished.setdefault(call, {})
            self._written.setdefault(call, set())
            self._in_flight[actor] = (call, 0)  # a restarted actor's cut episodes never arrive

    def episodes_started(self, call: int, n: int) -> None:
        with self._lock:
            self._started[call] = self._started.get(call, 0) + n

    def episode_finished(self, call: int, key: int, summary: dict[str, float]) -> None:
        with self._lock:
            self._finished.setdefault(call, {})[key] = dict(summary)

    def episode_written(self, call: int, key: int) -> None:
        with self._lock:
            self._written.setdefault(call, set()).add(key)

    def status(self, actor: int, status: dict[str, Any]) -> None:
        with self._lock:
            self._live[actor] = {**status, "time": time.time()}
            if "call" in status and "in_flight_steps" in status:
                self._in_flight[actor] = (int(status["call"]), int(status["in_flight_steps"]))

    def claim_in_flight(self, actor: int, call: int, samples: int) -> int:
        """Records that `actor`'s running episodes (of `call`) will deliver at least `samples`
        more; returns what the other actors' running episodes of the same round will deliver.
        Actors report before each replay write, so an episode is never counted both in the
        replay and in flight (which could stop the fleet short of N*B)."""
        with self._lock:
            self._in_flight[actor] = (call, samples)
            round_index = self._call_round.get(call)
            return sum(n for a, (c, n) in self._in_flight.items()
                       if a != actor and self._call_round.get(c) == round_index)

    # -- the coordinator --
    def round_started(self, round_index: int) -> None:
        with self._lock:
            self._round = round_index

    def round_ended(self, row: dict[str, float]) -> None:
        with self._lock:
            self._rounds.append(dict(row))

    def call_ledger(self, call: int) -> dict[str, Any]:
        """Episodes started, finished (key -> summary) and written by one round call; `known`:
        the call reached its actor (a call to a restarting actor may fail before it starts)."""
        with self._lock:
            return {"known": call in self._call_round, "started": self._started.get(call, 0),
                    "finished": dict(self._finished.get(call, {})),
                    "written": sorted(self._written.get(call, set()))}

    # -- the operator --
    def request_stop(self, actor: int | None = None) -> None:
        """Ends the running episodes of one actor (or of every actor seen so far)."""
        with self._lock:
            self._stop |= set(self._live) if actor is None else {actor}

    def take_stop(self, actor: int) -> bool:
        """True once per request: the actor ends its running episodes now."""
        with self._lock:
            if actor in self._stop:
                self._stop.discard(actor)
                return True
            return False

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self._paused = paused

    def paused(self) -> bool:
        with self._lock:
            return self._paused

    def snapshot(self) -> dict[str, Any]:
        """Everything the console shows."""
        with self._lock:
            return {"round": self._round, "paused": self._paused, "rounds": list(self._rounds),
                    "actors": {str(k): dict(v) for k, v in sorted(self._live.items())}}
