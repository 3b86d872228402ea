"""On-policy replay for Self-Improvement (Stage 2, Algorithm 1).

Actors write whole episodes of per-step samples (o_t, a_t, g, R_t); each episode is ONE
item (as Acme's EpisodeAdder writes it), so an episode is in the replay whole or not at all.
Once the round's episodes are in, the learner takes every episode out, draws N*B steps from
them uniformly WITHOUT replacement and the rest is discarded, so no sample is ever reused.
Actors and learners only see the small `Replay` protocol; `ReverbReplay` is today's
implementation, so a successor can replace Reverb without touching either side.

Without-replacement comes from the table itself (`max_times_sampled=1` deletes an item as it is
drawn), so several learner processes cannot take the same episode twice either.

Reverb (and TensorFlow with it, seconds to import) is imported where it is used, so a process
that only names these types (a Ray steps-to-go service, a monitor) never loads it.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import reverb
    import tensorflow as tf

# key -> (per-step shape, dtype). Flat on purpose: keys like "observation/image" keep the
# structure readable while every backend (Reverb, arrays on disk, shared memory) can store it.
SampleSpec = dict[str, tuple[tuple[int, ...], np.dtype]]

DEFAULT_TABLE = "self_improve"


@runtime_checkable
class Replay(Protocol):
    """What actors and learners need from a replay buffer; nothing Reverb-specific."""

    def add_episode(self, samples: Mapping[str, np.ndarray]) -> None:
        """Adds one episode atomically (all of its steps or none); each array has a leading [T] axis."""

    def size(self) -> int:
        """Number of step samples currently held (in whole episodes)."""

    def num_episodes(self) -> int:
        """Number of episodes currently held."""

    def take_episodes(self, num: int) -> list[dict[str, np.ndarray]]:
        """Removes and returns `num` distinct whole episodes (uniformly drawn), each key [T, ...]."""

    def clear(self) -> None:
        """Drops everything: the next round must not see this round's data."""

    def close(self) -> None:
        """Releases connections (and the server, where this object owns it)."""


def normalize_spec(spec: Mapping[str, tuple[tuple[int, ...], Any]]) -> SampleSpec:
    """Canonical form (tuple shapes, np.dtype) so specs compare equal however they were written."""
    out: SampleSpec = {}
    for key, (shape, dtype) in spec.items():
        dt = np.dtype(dtype)
        if dt.kind not in "biuf":
            # Strings/objects would not round-trip as arrays of the same dtype.
            raise ValueError(f"{key!r}: dtype {dt} unsupported; use bool, int, uint or float")
        out[key] = (tuple(int(d) for d in shape), dt)
    if not out:
        raise ValueError("spec must have at least one field")
    return out


def spec_from_samples(samples: Mapping[str, np.ndarray]) -> SampleSpec:
    """Spec of one episode's arrays ([T, ...] each), so callers need not write it by hand."""
    spec = {}
    for key, value in samples.items():
        arr = np.asarray(value)
        if arr.ndim < 1:
            raise ValueError(f"{key!r}: expected a leading [T] axis, got a scalar")
        spec[key] = (arr.shape[1:], arr.dtype)
    return normalize_spec(spec)


def _signature(spec: SampleSpec) -> dict[str, tf.TensorSpec]:
    """An item is one episode: every field gets a leading [T] axis of any length."""
    import tensorflow as tf

    return {k: tf.TensorSpec((None, *shape), tf.as_dtype(dt)) for k, (shape, dt) in spec.items()}


def _spec_from_signature(signature: Mapping[str, tf.TensorSpec]) -> SampleSpec:
    return normalize_spec(
        {k: (tuple(s.shape.as_list()[1:]), s.dtype.as_numpy_dtype) for k, s in signature.items()}
    )


# The step tally: one tiny item per step, written with the episode's item by the same writer
# in the same flush, so that `size()` counts steps (Reverb's table info counts items).
_STEPS_COLUMN = "__steps"


def _tally_signature() -> dict[str, tf.TensorSpec]:
    import tensorflow as tf

    return {_STEPS_COLUMN: tf.TensorSpec((), tf.int32)}


_FLUSH_EVERY = 16  # tally items per flush: the episode item is sent (whole) by the first one


def _tally(table: str) -> str:
    return f"{table}.steps"


class ReverbReplay:
    """`Replay` on one Reverb table: each episode is one item, taken at most once.

    Table: Uniform sampler, Fifo remover, `max_times_sampled=1`, `MinSize(1)`; a second table
    `<table>.steps` holds one scalar item per step so that `size()` counts steps. Create with
    `local` (in-process server on a free port) or `connect` (client to a server elsewhere, e.g.
    from a Ray actor using another replay's `address`). Pickling yields a `connect`ed client.
    """

    def __init__(
        self,
        address: str,
        spec: SampleSpec,
        *,
        table: str = DEFAULT_TABLE,
        server: reverb.Server | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        """Prefer `local`/`connect`; `timeout_s` bounds every blocking call to the server."""
        import reverb
        import tensorflow as tf

        self._address = address
        self._spec = normalize_spec(spec)
        self._table = table
        self._server = server
        self._timeout_s = timeout_s
        self._client: reverb.Client | None = reverb.Client(address)
        self._dtypes = {k: tf.as_dtype(dt) for k, (_, dt) in self._spec.items()}
        self._shapes = {k: tf.TensorShape((None, *shape)) for k, (shape, _) in self._spec.items()}

    @classmethod
    def local(
        cls,
        spec: Mapping[str, tuple[tuple[int, ...], Any]],
        *,
        table: str = DEFAULT_TABLE,
        max_size: int = 1_000_000,
        port: int | None = None,
        host: str = "localhost",
        timeout_s: float = 30.0,
    ) -> ReverbReplay:
        """Starts a Reverb server in this process and returns a replay that owns it.

        `max_size` only caps memory (episodes; steps in the tally): past it the Fifo remover
        drops the oldest. `host` is
        what `address` advertises; pass `socket.gethostname()` (or use `advertise_host`) when
        actors on other machines must connect, the server listens on all interfaces anyway.
        """
        import reverb

        spec = normalize_spec(spec)

        def make_table(name: str, signature: dict[str, tf.TensorSpec]) -> reverb.Table:
            return reverb.Table(
                name=name,
                sampler=reverb.selectors.Uniform(),
                remover=reverb.selectors.Fifo(),
                max_size=max_size,
                rate_limiter=reverb.rate_limiters.MinSize(1),
                max_times_sampled=1,
                signature=signature,
            )

        server = reverb.Server(
            tables=[make_table(table, _signature(spec)), make_table(_tally(table), _tally_signature())],
            port=port,
        )
        return cls(f"{host}:{server.port}", spec, table=table, server=server, timeout_s=timeout_s)

    @classmethod
    def connect(
        cls,
        address: str,
        spec: Mapping[str, tuple[tuple[int, ...], Any]] | None = None,
        *,
        table: str = DEFAULT_TABLE,
        timeout_s: float = 30.0,
    ) -> ReverbReplay:
        """Client to an existing server; the spec is read from the table if not given.

        A given spec is checked against the table's signature so a mismatched actor fails
        here, not at its first write.
        """
        import reverb

        client = reverb.Client(address)
        info = client.server_info(timeout=max(1, int(np.ceil(timeout_s))))
        if table not in info or _tally(table) not in info:
            raise ValueError(f"no table {table!r} (with its step tally) at {address}; found {sorted(info)}")
        if not info[table].signature:
            raise ValueError(f"table {table!r} at {address} has no signature")
        server_spec = _spec_from_signature(info[table].signature)
        if spec is not None and normalize_spec(spec) != server_spec:
            raise ValueError(
                f"spec does not match table {table!r} at {address}:\n"
                f"  given:  {normalize_spec(spec)}\n  server: {server_spec}"
            )
        return cls(address, server_spec, table=table, timeout_s=timeout_s)

    @staticmethod
    def advertise_host() -> str:
        """This machine's name, for an `address` that other machines can reach."""
        return socket.gethostname()

    @property
    def address(self) -> str:
        """'host:port' for `ReverbReplay.connect` from other processes."""
        return self._address

    @property
    def spec(self) -> SampleSpec:
        return dict(self._spec)

    @property
    def table(self) -> str:
        return self._table

    def _live_client(self) -> reverb.Client:
        if self._client is None:
            raise RuntimeError("replay is closed")
        return self._client

    def _timeout_ms(self) -> int:
        return max(1, round(self._timeout_s * 1000))

    def _validate(self, samples: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        missing = self._spec.keys() - samples.keys()
        extra = samples.keys() - self._spec.keys()
        if missing or extra:
            raise ValueError(
                f"episode keys differ from spec: missing {sorted(missing)}, "
                f"unexpected {sorted(extra)}"
            )
        arrays: dict[str, np.ndarray] = {}
        lengths = set()
        for key, (shape, dtype) in self._spec.items():
            arr = np.asarray(samples[key])
            if arr.ndim < 1 or arr.shape[1:] != shape:
                raise ValueError(f"{key!r}: expected shape [T, *{shape}], got {arr.shape}")
            if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise ValueError(f"{key!r}: cannot store {arr.dtype} as {dtype}")
            arrays[key] = arr.astype(dtype, copy=False)
            lengths.add(arr.shape[0])
        if len(lengths) != 1:
            raise ValueError(f"fields disagree on episode length T: {sorted(lengths)}")
        return arrays, lengths.pop()

    def add_episode(self, samples: Mapping[str, np.ndarray]) -> None:
        """Writes the episode as one item and blocks until the server holds it.

        One item per episode (Acme's EpisodeAdder) makes the write atomic: a reader sees the
        whole episode or none of it. Blocking (bounded by the timeout) means `size()` right
        after reflects this episode, which the actors' stopping rule relies on.
        """
        arrays, length = self._validate(samples)
        if length == 0:
            return
        with self._live_client().trajectory_writer(
            num_keep_alive_refs=1, validate_items=False
        ) as writer:
            writer.append({**arrays, _STEPS_COLUMN: np.int32(length)})
            writer.create_item(self._table, 1.0, {k: writer.history[k][-1] for k in arrays})
            steps = {_STEPS_COLUMN: writer.history[_STEPS_COLUMN][-1]}
            for t in range(length):
                writer.create_item(_tally(self._table), 1.0, steps)
                if (t + 1) % _FLUSH_EVERY == 0:  # bounds the writer's pending tally items
                    writer.flush(timeout_ms=self._timeout_ms())
            writer.end_episode(timeout_ms=self._timeout_ms())

    def _info(self) -> Any:
        return self._live_client().server_info(timeout=max(1, int(np.ceil(self._timeout_s))))

    def size(self) -> int:
        return int(self._info()[_tally(self._table)].current_size)

    def num_episodes(self) -> int:
        return int(self._info()[self._table].current_size)

    def take_episodes(self, num: int) -> list[dict[str, np.ndarray]]:
        """Removes and returns `num` distinct whole episodes, uniformly among those held.

        Uses a `reverb.TrajectoryDataset` capped at `max_samples=num` (no prefetch beyond what
        is returned, which matters because every fetched item is consumed) with a rate-limiter
        timeout. The step tally is left as is: `clear` empties both tables.

        Raises:
          ValueError: if `num` < 1 or more than `num_episodes()`; asking for more would block.
          TimeoutError: if fewer than `num` arrived in time (another consumer drained the
            table meanwhile); the episodes drawn before the timeout are consumed.
        """
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        import reverb
        import tensorflow as tf

        held = self.num_episodes()
        if num > held:
            raise ValueError(f"cannot take {num} episodes without replacement: replay holds {held}")
        dataset = reverb.TrajectoryDataset(
            server_address=self._address,
            table=self._table,
            dtypes=self._dtypes,
            shapes=self._shapes,
            max_in_flight_samples_per_worker=num,
            rate_limiter_timeout_ms=self._timeout_ms(),
            max_samples=num,
        )
        episodes: list[dict[str, np.ndarray]] = []
        try:
            for item in dataset:
                episodes.append({k: item.data[k].numpy() for k in self._spec})
        except (tf.errors.OutOfRangeError, tf.errors.DeadlineExceededError):
            pass
        if len(episodes) != num:
            raise TimeoutError(
                f"took {len(episodes)} of {num} episodes within {self._timeout_s}s; "
                "another consumer may have drained the table"
            )
        return episodes

    def clear(self) -> None:
        client = self._live_client()
        client.reset(self._table)
        client.reset(_tally(self._table))

    def close(self) -> None:
        """Idempotent; stops the server only if this object started it."""
        self._client = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # A reverb.Server cannot cross processes; a Ray actor gets a client to the same table.
        return (_connect, (self._address, self._spec, self._table, self._timeout_s))

    def __repr__(self) -> str:
        owner = "server" if self._server is not None else "client"
        return f"ReverbReplay({owner}, address={self._address!r}, table={self._table!r})"


def _connect(address: str, spec: SampleSpec, table: str, timeout_s: float) -> ReverbReplay:
    return ReverbReplay.connect(address, spec, table=table, timeout_s=timeout_s)
