"""Algorithm 1 on Ray (Appendix J): the roles as Ray actors, each a thin shell over what
`FleetBuilder` makes for the one-process run.

- steps-to-go service: one Ray actor (threaded), batching concurrent requests from all actors
  into one forward pass (`service.BatchingStepsToGo`); restarted by Ray if its process dies,
  while actors retry their requests;
- actors: one Ray actor per robot station or simulator (`{"robot": 1}`-style resources pin them
  to the right nodes), restarted by Ray if killed; a killed actor's half-finished episodes
  never reach the replay (one Reverb item per episode), and it rejoins the round;
- the Reverb server, in the coordinator's process, its address advertised for the cluster;
- the learner: one Ray actor (GPUs/TPUs); in Version 1 it also serves actions between updates;
- the monitor: the ledger of episodes started and finished, live status, operator controls.

Locally Ray starts embedded on loopback; with `self_improve.fleet.ray_address` it joins a
cluster (KubeRay, Ray on Vertex AI; see infra/). Ray trusts its network: keep it on loopback or
a private network with TLS (RAY_USE_TLS, see the README).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import jax
import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from efm.config import RoleResources
from efm.envs.base import add_counts
from efm.models.frame_cache import FrameCache
from efm.self_improve.builder import Fleet, FleetBuilder
from efm.self_improve.coordinator import cut_episodes
from efm.self_improve.monitor import FleetMonitor
from efm.self_improve.service import LATENCY_WINDOW, BatchingStepsToGo

ACTOR_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)
STARTS = 3  # tries at starting embedded Ray
MAX_CONCURRENCY = 64  # threads of the service and learner actors (concurrent actor requests)


class MonitorWorker(FleetMonitor):
    """The monitor as a Ray actor. Restarted by Ray it has forgotten the lives it handed out, so
    it counts them on from a random base: a restarted actor must not draw an earlier life's
    episodes again."""

    def __init__(self) -> None:
        reborn = ray.get_runtime_context().was_current_actor_reconstructed
        super().__init__(first_life=secrets.randbits(48) + 1 if reborn else 0)


class ServiceWorker:
    """The steps-to-go service as a Ray actor."""

    def __init__(self, builder: FleetBuilder, reward_params: Any, max_callers: int):
        fleet = builder.cfg.self_improve.fleet
        self._service = BatchingStepsToGo(builder.make_service(reward_params), fleet.service_batch_wait_s, max_callers)

    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self._service.steps_to_go(inputs)

    def stats(self) -> dict[str, Any]:
        lat = np.asarray(self._service.latencies_s) * 1000
        s = self._service.stats
        return {**s, "rows_per_batch": s["rows"] / max(1, s["batches"]),
                "requests_per_batch": s["requests"] / max(1, s["batches"]),
                "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else 0.0,
                "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else 0.0}

    def pid(self) -> int:
        return os.getpid()


class RemoteStepsToGo:
    """The actor side of the service: when a request fails, waits until Ray has restarted the
    service (however long its model takes to load on a busy machine) and sends it again, up to
    `retries` times."""

    def __init__(self, handle: Any, retries: int, delay_s: float):
        self._handle, self._retries, self._delay_s = handle, retries, delay_s
        self.retried = 0

    def steps_to_go(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        for attempt in range(self._retries + 1):
            try:
                return ray.get(self._handle.steps_to_go.remote(inputs))
            except ACTOR_FAILURES as e:
                if attempt == self._retries or not died(e):
                    raise
                self.retried += 1
                wait_alive(self._handle, poll_s=self._delay_s)
        raise AssertionError("unreachable")


class RemotePolicy:
    """Version 1: actions from the learner's devices (its current weights)."""

    def __init__(self, handle: Any):
        self._handle = handle
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def update(self, params: Any) -> None:
        del params  # the learner holds the weights

    def sample(self, inputs: dict[str, np.ndarray], key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        out = ray.get(self._handle.act.remote(inputs, np.asarray(key)))
        self.latencies_s.append(time.perf_counter() - t0)
        return out


class TimedPolicy:
    """Version 2's local policy, timed (the 100 ms budget of 10 Hz control)."""

    def __init__(self, policy: Any):
        self._policy = policy
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def update(self, params: Any) -> None:
        self._policy.update(params)

    def sample(self, inputs: dict[str, np.ndarray], key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        out = self._policy.sample(inputs, key)
        self.latencies_s.append(time.perf_counter() - t0)
        return out


class RemoteMonitor:
    """The actor side of the monitor: reports are fire-and-forget (they arrive in order);
    the operator's stop and pause are polled, at most every `poll_s`."""

    def __init__(self, handle: Any, poll_s: float = 0.2):
        self._handle, self._poll_s = handle, poll_s
        self._polled = self._pause_polled = 0.0
        self._paused = False

    def call_started(self, actor: int, call: int, round_index: int) -> None:
        ray.get(self._handle.call_started.remote(actor, call, round_index))  # before any episode

    def episodes_started(self, call: int, n: int) -> None:
        self._handle.episodes_started.remote(call, n)

    def episode_finished(self, call: int, key: int, summary: dict[str, float]) -> None:
        ray.get(self._handle.episode_finished.remote(call, key, summary))  # on record before the write

    def episode_written(self, call: int, key: int) -> None:
        self._handle.episode_written.remote(call, key)

    def status(self, actor: int, status: dict[str, Any]) -> None:
        self._handle.status.remote(actor, status)

    def claim_in_flight(self, actor: int, call: int, samples: int) -> int:
        return int(ray.get(self._handle.claim_in_flight.remote(actor, call, samples)))

    def take_stop(self, actor: int) -> bool:
        now = time.monotonic()
        if now - self._polled < self._poll_s:
            return False
        self._polled = self._pause_polled = now
        stop, self._paused = ray.get([self._handle.take_stop.remote(actor), self._handle.paused.remote()])
        return bool(stop)

    def paused(self) -> bool:
        """Asked before each new episode: while paused, every time; otherwise at most every
        poll_s (a pause set between rounds holds the next round's first episodes too)."""
        now = time.monotonic()
        if self._paused or now - self._pause_polled >= self._poll_s:
            self._pause_polled = now
            self._paused = bool(ray.get(self._handle.paused.remote()))
        return self._paused


class RayMonitorView:
    """The monitor's Ray actor, called synchronously (for the console and the coordinator)."""

    def __init__(self, handle: Any):
        self._handle = handle

    def snapshot(self) -> dict[str, Any]:
        return ray.get(self._handle.snapshot.remote())

    def request_stop(self, actor: int | None = None) -> None:
        ray.get(self._handle.request_stop.remote(actor))

    def set_paused(self, paused: bool) -> None:
        ray.get(self._handle.set_paused.remote(paused))

    def round_ended(self, row: dict[str, float]) -> None:
        ray.get(self._handle.round_ended.remote(row))


class ActorWorker:
    """One actor (a simulator or a robot station) as a Ray actor."""

    def __init__(self, builder: FleetBuilder, index: int, params: Any, service: Any, replay_address: str,
                 monitor: Any, learner: Any | None, rounds_done: int = 0):
        fleet = builder.cfg.self_improve.fleet
        life = ray.get(monitor.actor_started.remote(index))
        self._stg = RemoteStepsToGo(service, fleet.service_retries, fleet.retry_delay_s)
        self._policy = RemotePolicy(learner) if learner is not None else TimedPolicy(builder.make_policy(params))
        # A restarted actor draws other episodes than each of its earlier lives (the monitor's count).
        self._actor = builder.make_actor(index, params, self._stg, builder.connect_replay(replay_address),
                                         monitor=RemoteMonitor(monitor), policy=self._policy,
                                         life=life, rounds_done=rounds_done)

    def run_round(self, params: Any, version: int, max_episodes: int, target_size: int, call: int,
                  ) -> list[dict[str, float]]:
        return self._actor.run_round(params, version, max_episodes, target_size, call=call)

    def close(self) -> None:
        self._actor.close()  # its env: subprocess workers, a robot station's connection

    def stats(self) -> dict[str, Any]:
        return {"policy_latencies_s": list(self._policy.latencies_s), "service_retries": self._stg.retried,
                "env_counters": self._actor.counters()}

    def pid(self) -> int:
        return os.getpid()


class LearnerWorker:
    """The learner as a Ray actor; in Version 1 also the action server between updates."""

    def __init__(self, builder: FleetBuilder, params: Any, replay_address: str):
        self._learner = builder.make_learner(params)
        self._replay = builder.connect_replay(replay_address)
        self._fns = builder.fns
        self._lock = threading.Lock()
        self._served: dict[int, int] = {}  # Version 1: actions served, by the policy version that chose them
        self._frames: FrameCache | None = None  # the served weights' image tower work, per frame

    def run_round(self, learning_rate: float) -> tuple[dict[str, float], Any, dict[str, list[int]]]:
        metrics = self._learner.run_round(self._replay, learning_rate)
        return metrics, self._learner.get_variables(), self._learner.last_episodes

    def act(self, inputs: dict[str, np.ndarray], key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        version, params = self._learner.version, self._learner.get_variables()
        with self._lock:
            if self._frames is None or self._frames.params is not params:
                self._frames = FrameCache(self._fns, params)
            frames = self._frames
        actions, tokens = self._fns.sample_actions(params, frames(inputs), key)
        with self._lock:
            self._served[version] = self._served.get(version, 0) + len(actions)
        return np.asarray(actions), np.asarray(tokens)

    def actions_served(self) -> dict[int, int]:
        with self._lock:
            return dict(self._served)

    def version(self) -> int:
        return self._learner.version

    def get_state(self) -> dict[str, Any]:
        return jax.device_get(self._learner.get_state())

    def set_state(self, state: dict[str, Any]) -> None:
        self._learner.set_state(state)


def ray_options(resources: RoleResources, **extra: Any) -> dict[str, Any]:
    """Ray actor options for a role's configured resources."""
    opts: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus, **extra}
    if resources.resources:
        opts["resources"] = dict(resources.resources)
    return opts


def died(error: BaseException) -> bool:
    """The actor's process died (or is restarting), as opposed to its method raising: Ray
    raises a method's own exception as a RayTaskError that is also an instance of the cause's
    class, so an actor that gave up on a dead service raises an "ActorDiedError" of its own."""
    return isinstance(error, ACTOR_FAILURES) and not isinstance(error, RayTaskError)


def wait_alive(handle: Any, timeout_s: float = 600.0, poll_s: float = 0.5) -> None:
    """Blocks until a (restarting) Ray actor answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(handle.pid.remote(), timeout=poll_s * 20)
            return
        except (*ACTOR_FAILURES, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(poll_s)


def split_budget(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def advertised_host(fleet_bind_host: str, advertise_host: str, joined_cluster: bool) -> str:
    """The host in the Reverb address the actors dial: loopback when the fleet is embedded on
    this machine, this node's address when actors may run on other nodes."""
    if advertise_host:
        return advertise_host
    if not joined_cluster:
        return fleet_bind_host
    return ray.util.get_node_ip_address() if ray.is_initialized() else socket.gethostname()


def start_ray(address: str, bind_host: str) -> bool:
    """Joins `address`, or starts Ray embedded on `bind_host`; True if this call started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("EFM_RAY_ADDRESS", "")
    for attempt in range(STARTS):
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"_node_ip_address": bind_host}))
            return True
        except Exception as e:  # Ray gives its raylet 30 s, too little on a saturated machine
            if address or "timed out during startup" not in str(e) or attempt == STARTS - 1:
                raise
            ray.shutdown()
    return True


def build_ray_fleet(builder: FleetBuilder, policy_params: Any, reward_params: Any,
                    interrupt: Callable[[], Any] | None = None, rounds_done: int = 0) -> Fleet:
    """The roles as Ray actors; `interrupt()` (the operator's STOP file) ends every actor's
    running episodes through the monitor; `rounds_done`: see `FleetBuilder.build`."""
    cfg = builder.cfg
    si = cfg.self_improve
    fc = si.fleet
    # What is made is undone in reverse (actors, learner, service, monitor, the replay, Ray),
    # every step though another fails, on close or on a failure part-way through this build.
    with ExitStack() as made:
        if start_ray(fc.ray_address, fc.bind_host):
            made.callback(ray.shutdown)
        joined = bool(fc.ray_address or os.environ.get("EFM_RAY_ADDRESS"))
        replay = ReverbHolder(builder, advertised_host(fc.bind_host, fc.advertise_host, joined))
        made.callback(replay.close)
        # Restarted actors are rebuilt from their constructor arguments: keep them in the object store.
        builder_ref, policy_ref, reward_ref = ray.put(builder), ray.put(policy_params), ray.put(reward_params)
        monitor = ray.remote(MonitorWorker).options(num_cpus=0, max_restarts=-1).remote()
        made.callback(ray.kill, monitor)
        service = ray.remote(ServiceWorker).options(
            **ray_options(fc.service, max_restarts=-1, max_concurrency=MAX_CONCURRENCY)).remote(
            builder_ref, reward_ref, si.num_actors)
        made.callback(ray.kill, service)
        learner = ray.remote(LearnerWorker).options(**ray_options(fc.learner, max_concurrency=MAX_CONCURRENCY)).remote(
            builder_ref, policy_ref, replay.address)
        made.callback(ray.kill, learner)
        serve = learner if fc.policy_inference == "learner" else None
        actors = [ray.remote(ActorWorker).options(**ray_options(fc.actor, max_restarts=fc.max_actor_restarts))
                  .remote(builder_ref, i, policy_ref, service, replay.address, monitor, serve, rounds_done)
                  for i in range(si.num_actors)]
        made.callback(close_actors, actors)
        cleanup = made.pop_all()
    ledger = RoundLedger()
    calls = iter(range(1 << 20))

    def collect_round(params: Any, r: int, budget: int) -> list[dict[str, float]]:
        ray.get(monitor.round_started.remote(r))
        version = ray.get(learner.version.remote())
        # Version 2: one broadcast of the new weights to every actor; Version 1: the learner
        # holds them, nothing goes out.
        ref = ray.put(params) if serve is None else None
        running: dict[Any, tuple[int, int, int]] = {}  # future -> (actor, call, cap)

        def launch(i: int, cap: int) -> None:
            call = next(calls)
            running[actors[i].run_round.remote(ref, version, cap, si.samples_per_round, call)] = (i, call, cap)

        if interrupt is not None:  # a STOP made while no episode ran (the learner's turn) ends nothing:
            interrupt()  # seen once the actors started, it would cut this round's first episodes
        for i, cap in enumerate(split_budget(budget, len(actors))):
            launch(i, cap)
        out: list[dict[str, float]] = []

        def account_killed_call(i: int, call: int, entry: dict[str, Any], out: list[dict[str, float]]) -> None:
            live = ray.get(monitor.snapshot.remote())["actors"].get(str(i), {})
            finished = list(entry["finished"].values())
            steps = int(live.get("in_flight_steps", 0)) if live.get("call") == call else 0
            # Running when it died, never in the replay: they count in the budget, and their
            # (last reported) steps in env_steps.
            cut = cut_episodes(entry["started"], len(finished), steps)
            ledger.cut_episodes += len(cut)
            ledger.cut_steps += steps if cut else 0  # between episodes the report is stale
            out += finished + cut
            ledger.killed_calls[call] = entry
            ledger.expected |= {int(k) for k in entry["written"] if entry["finished"][k]["length"] > 0}

        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
            if interrupt is not None and np.any(interrupt()):
                monitor.request_stop.remote(None)
            if not done:
                continue
            i, call, cap = running.pop(done[0])
            try:
                summaries = ray.get(done[0])
                out += summaries
                ledger.expected |= {int(e["key"]) for e in summaries if e["length"] > 0}
            except ACTOR_FAILURES as e:
                if not died(e):
                    raise  # the actor's round failed (e.g. the service stayed down): not a kill
                # The actor died mid-round; Ray restarts it. What it did is in the ledger.
                entry = ray.get(monitor.call_ledger.remote(call))
                monitor.actor_died.remote(i)
                if entry["known"]:
                    ledger.kills += 1
                    account_killed_call(i, call, entry, out)
                left = cap - entry["started"]
                wait_alive(actors[i])
                if left > 0 and replay.size() < si.samples_per_round:
                    launch(i, left)  # the restarted actor rejoins the round
        return out

    def learn_round(learning_rate: float) -> tuple[dict[str, float], Any]:
        metrics, params, episodes = ray.get(learner.run_round.remote(learning_rate))
        return {**metrics, **ledger.reconcile(episodes)}, params

    def stats() -> dict[str, Any]:
        service_stats = ray.get(service.stats.remote())
        actor_stats = ray.get([a.stats.remote() for a in actors])
        lat = [x for a in actor_stats for x in a["policy_latencies_s"]]
        policy_ms = np.asarray(lat) * 1000
        events = add_counts(*(a["env_counters"] for a in actor_stats))  # since each actor's last start
        return {"faults": ledger.totals(), "service": service_stats,
                "service_retries": sum(a["service_retries"] for a in actor_stats),  # since each actor's last start
                "policy_inference": fc.policy_inference,
                **({"actions_served_by_learner": ray.get(learner.actions_served.remote())} if serve is not None else {}),
                "policy_latency_ms_p50": float(np.percentile(policy_ms, 50)) if len(lat) else 0.0,
                "policy_latency_ms_p99": float(np.percentile(policy_ms, 99)) if len(lat) else 0.0,
                **({"env_counters": events} if events else {})}

    def get_state() -> dict[str, Any]:
        return ray.get(learner.get_state.remote())

    def set_state(state: dict[str, Any]) -> None:
        ray.get(learner.set_state.remote(state))

    return Fleet(collect_round, learn_round, get_state, set_state, monitor, view=RayMonitorView(monitor),
                 stats=stats, close=cleanup.close,
                 extras={"refs": (builder_ref, policy_ref, reward_ref), "actors": actors, "service": service, "learner": learner, "replay_address": replay.address})


def close_actors(handles: list[Any], timeout_s: float = 10.0) -> None:
    """Lets every actor close its env (a robot station lets go of its robot), all at once and
    for at most `timeout_s` in all, then ends them; a dead, hung or busy one (its close waits
    behind a running round) is ended all the same."""
    try:
        ray.wait([h.close.remote() for h in handles], num_returns=len(handles), timeout=timeout_s)
    finally:
        for handle in handles:
            ray.kill(handle)


class ReverbHolder:
    """The Reverb server, in the coordinator's process."""

    def __init__(self, builder: FleetBuilder, host: str):
        self._replay = builder.make_replay_server(host)
        self.address = self._replay.address

    def size(self) -> int:
        return self._replay.size()

    def close(self) -> None:
        self._replay.close()


class RoundLedger:
    """What happened to every episode: learned from, discarded at the clear, cut by a fault."""

    def __init__(self) -> None:
        self.kills = 0
        self.cut_episodes = 0
        self.cut_steps = 0
        self.expected: set[int] = set()  # keys of non-empty episodes known to be written
        self.killed_calls: dict[int, dict[str, Any]] = {}
        self.rows: list[dict[str, float]] = []

    def reconcile(self, episodes: dict[str, list[int]]) -> dict[str, float]:
        taken, learned = episodes["taken"], set(episodes["learned"])
        # Episodes a killed actor finished: in the replay if their write completed (whole
        # items); those it reported written must be there.
        written = {int(k) for e in self.killed_calls.values() for k in e["written"]}
        finished_killed = {int(k) for e in self.killed_calls.values() for k, v in e["finished"].items() if v["length"] > 0}
        row = {"actor_kills": float(self.kills), "episodes_cut_by_fault": float(self.cut_episodes),
               "env_steps_cut_by_fault": float(self.cut_steps),
               "episodes_learned": float(len(learned)), "episodes_discarded_at_clear": float(len(set(taken) - learned)),
               "duplicates": float(len(taken) - len(set(taken))),
               "lost": float(len(self.expected - set(taken))),
               "writes_cut_by_fault": float(len(finished_killed - written - set(taken)))}
        self.rows.append(row)
        self.kills = self.cut_episodes = self.cut_steps = 0
        self.killed_calls = {}
        self.expected = set()
        return row

    def totals(self) -> dict[str, float]:
        return {k: float(sum(r[k] for r in self.rows)) for k in (self.rows[0] if self.rows else {})}


def wait_mid_episode(fleet: Fleet, index: int, version: int, spared: set[int] = frozenset(),  # type: ignore[assignment]
                     max_step: int = 10, poll_s: float = 0.02, timeout_s: float = 300.0) -> int | None:
    """The pid of actor `index` once it reports env 0 between steps 1 and `max_step` of a
    running episode, collecting with policy `version` (early, so the episode still runs when
    the status, up to 0.1 s old, is acted on); None if it never does in time. `spared`: pids
    already killed (a stale status names a dead process)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        live = ray.get(fleet.monitor.snapshot.remote())["actors"].get(str(index), {})
        if live.get("policy_version") == version and 1 <= live.get("step", -1) <= max_step and live.get("pid") not in spared:
            return int(live["pid"])
        time.sleep(poll_s)
    return None


def kill_actor_mid_episode(fleet: Fleet, index: int, version: int, spared: set[int] = frozenset(),  # type: ignore[assignment]
                           ) -> int | None:
    """A fault drill: SIGKILLs actor `index`'s process mid-episode (not through Ray: as a crash
    would); Ray restarts it. The pid killed, or None."""
    pid = wait_mid_episode(fleet, index, version, spared)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    return pid


def drilled_collect(fleet: Fleet, drill: Callable[[int], Any]) -> Callable[[Any, int, int], list[dict[str, float]]]:
    """`fleet.collect_round`, with `drill(round)` run in a thread during each round (a fault
    drill such as `kill_actor_mid_episode`); give it to `coordinator.coordinate`."""

    def collect(params: Any, r: int, budget: int) -> list[dict[str, float]]:
        thread = threading.Thread(target=drill, args=(r,))
        thread.start()
        try:
            return fleet.collect_round(params, r, budget)
        finally:
            thread.join()

    return collect


def kill_service(fleet: Fleet) -> int:
    """A fault drill: SIGKILLs the steps-to-go service's process; Ray restarts it."""
    pid = int(ray.get(fleet.extras["service"].pid.remote()))
    os.kill(pid, signal.SIGKILL)
    return pid
