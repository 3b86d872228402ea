"""ReverbReplay against a real in-process Reverb server on a free localhost port."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import numpy as np
import pytest

from efm.self_improve.replay import (
    Replay,
    ReverbReplay,
    SampleSpec,
    normalize_spec,
    spec_from_samples,
)

SPEC: SampleSpec = normalize_spec(
    {
        "id": ((), np.int64),  # unique per step, so every drawn row is identifiable
        "observation/position": ((2,), np.float32),
        "observation/image": ((4, 5, 3), np.uint8),
        "goal/target": ((2,), np.float32),
        "instruction_tokens": ((6,), np.int32),
        "action_tokens": ((4,), np.int32),
        "return": ((), np.float32),
    }
)


def make_episode(first_id: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + first_id)
    return {
        "id": np.arange(first_id, first_id + length, dtype=np.int64),
        "observation/position": rng.normal(size=(length, 2)).astype(np.float32),
        "observation/image": rng.integers(0, 256, (length, 4, 5, 3), dtype=np.uint8),
        "goal/target": rng.normal(size=(length, 2)).astype(np.float32),
        "instruction_tokens": rng.integers(-5, 2**31 - 1, (length, 6), dtype=np.int32),
        "action_tokens": rng.integers(0, 256, (length, 4), dtype=np.int32),
        "return": rng.normal(size=length).astype(np.float32),
    }


def add_episodes(replay: Replay, lengths: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """Adds episodes with consecutive ids; returns id -> the exact row inserted."""
    rows: dict[int, dict[str, np.ndarray]] = {}
    next_id = 0
    for length in lengths:
        episode = make_episode(next_id, length)
        replay.add_episode(episode)
        for t in range(length):
            rows[next_id + t] = {k: v[t] for k, v in episode.items()}
        next_id += length
    return rows


def assert_exact_rows(batch: dict[str, np.ndarray], rows: dict[int, dict[str, np.ndarray]]) -> None:
    assert set(batch) == set(SPEC)
    for key, (shape, dtype) in SPEC.items():
        assert batch[key].dtype == dtype, key
        assert batch[key].shape == (len(batch["id"]), *shape), key
    ids = batch["id"].tolist()
    assert len(set(ids)) == len(ids), "duplicate draws"
    for i, step_id in enumerate(ids):
        for key in SPEC:
            np.testing.assert_array_equal(batch[key][i], rows[step_id][key], err_msg=key)


@pytest.fixture
def replay() -> Iterator[ReverbReplay]:
    with ReverbReplay.local(SPEC, timeout_s=5.0) as r:
        yield r


def test_is_a_replay(replay: ReverbReplay) -> None:
    assert isinstance(replay, Replay)
    assert replay.address.startswith("localhost:")


def test_size_counts_steps(replay: ReverbReplay) -> None:
    assert replay.size() == 0
    add_episodes(replay, [3, 7, 1, 12])
    assert replay.size() == 23
    replay.add_episode(make_episode(100, 0))  # an empty episode adds nothing
    assert replay.size() == 23


def take_all(replay: Replay) -> dict[str, np.ndarray]:
    """Every held episode, steps concatenated in episode order."""
    episodes = replay.take_episodes(replay.num_episodes())
    return {k: np.concatenate([e[k] for e in episodes]) for k in SPEC}


def test_take_returns_whole_exact_episodes_and_consumes_them(replay: ReverbReplay) -> None:
    rows = add_episodes(replay, [5, 9, 2, 14])
    assert replay.num_episodes() == 4
    episodes = replay.take_episodes(2)
    assert len(episodes) == 2
    for e in episodes:  # whole: consecutive ids of one inserted episode
        ids = e["id"]
        assert len(ids) in (5, 9, 2, 14)
        np.testing.assert_array_equal(ids, np.arange(ids[0], ids[0] + len(ids)))
        assert_exact_rows(e, rows)
    assert replay.num_episodes() == 2


def test_taking_everything_returns_each_row_once(replay: ReverbReplay) -> None:
    rows = add_episodes(replay, [5, 9, 2, 14, 30])
    first = replay.take_episodes(2)
    rest = take_all(replay)
    drawn = [i for e in first for i in e["id"].tolist()] + rest["id"].tolist()
    assert sorted(drawn) == sorted(rows)
    assert_exact_rows(rest, rows)
    assert replay.num_episodes() == 0


def test_episode_is_one_item_never_partial(replay: ReverbReplay) -> None:
    """The write is atomic: the table holds exactly one item per added episode."""
    add_episodes(replay, [40, 1, 7])
    assert replay.num_episodes() == 3
    assert replay.size() == 48
    lengths = sorted(len(e["id"]) for e in replay.take_episodes(3))
    assert lengths == [1, 7, 40]


def test_clear_empties_and_replay_is_reusable(replay: ReverbReplay) -> None:
    add_episodes(replay, [4, 6])
    replay.clear()
    assert replay.size() == 0 and replay.num_episodes() == 0
    with pytest.raises(ValueError, match="holds 0"):
        replay.take_episodes(1)
    rows = add_episodes(replay, [3, 2])
    assert replay.size() == 5
    assert_exact_rows(take_all(replay), rows)


def test_more_than_held_raises_and_leaves_data(replay: ReverbReplay) -> None:
    add_episodes(replay, [3, 4])
    with pytest.raises(ValueError, match="cannot take 3"):
        replay.take_episodes(3)
    with pytest.raises(ValueError):
        replay.take_episodes(0)
    assert replay.size() == 7 and replay.num_episodes() == 2


def test_take_times_out_instead_of_blocking(
    replay: ReverbReplay, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates another consumer draining the table between the count check and the draw.
    add_episodes(replay, [2])
    fast = ReverbReplay.connect(replay.address, SPEC, timeout_s=0.3)
    monkeypatch.setattr(fast, "num_episodes", lambda: 10)
    with pytest.raises(TimeoutError, match="of 3"):
        fast.take_episodes(3)


def test_second_client_by_address_sees_same_data(replay: ReverbReplay) -> None:
    other = ReverbReplay.connect(replay.address, SPEC)
    rows = add_episodes(other, [8, 3])
    assert replay.size() == 11
    assert_exact_rows(take_all(replay), rows)
    assert other.num_episodes() == 0
    # And the other direction; the spec can also be read from the server.
    rows = add_episodes(replay, [6])
    reader = ReverbReplay.connect(replay.address)
    assert reader.spec == SPEC
    assert_exact_rows(take_all(reader), rows)


def test_pickled_replay_is_a_client_to_the_same_table(replay: ReverbReplay) -> None:
    clone = pickle.loads(pickle.dumps(replay))
    rows = add_episodes(clone, [4])
    assert_exact_rows(take_all(replay), rows)
    clone.close()  # closing a client must not stop the owner's server
    assert replay.num_episodes() == 0


def test_connect_rejects_mismatched_spec(replay: ReverbReplay) -> None:
    wrong = dict(SPEC)
    wrong["return"] = ((), np.float64)
    with pytest.raises(ValueError, match="does not match"):
        ReverbReplay.connect(replay.address, wrong)
    with pytest.raises(ValueError, match="no table"):
        ReverbReplay.connect(replay.address, SPEC, table="other")


def test_add_episode_validates(replay: ReverbReplay) -> None:
    episode = make_episode(0, 4)
    with pytest.raises(ValueError, match="missing"):
        replay.add_episode({k: v for k, v in episode.items() if k != "return"})
    with pytest.raises(ValueError, match="shape"):
        replay.add_episode({**episode, "goal/target": np.zeros((4, 3), np.float32)})
    with pytest.raises(ValueError, match="length"):
        replay.add_episode({**episode, "return": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="cannot store"):
        replay.add_episode({**episode, "action_tokens": np.zeros((4, 4), np.float32)})
    assert replay.size() == 0
    # Same-kind narrowing is accepted (float64 returns from numpy math).
    replay.add_episode({**episode, "return": episode["return"].astype(np.float64)})
    assert replay.size() == 4


def test_spec_from_samples_matches_episode() -> None:
    assert spec_from_samples(make_episode(0, 3)) == SPEC
    with pytest.raises(ValueError, match="leading"):
        spec_from_samples({"x": np.float32(1.0)})
    with pytest.raises(ValueError, match="unsupported"):
        spec_from_samples({"x": np.array(["a", "b"])})


def test_close_stops_server() -> None:
    r = ReverbReplay.local(SPEC)
    r.close()
    r.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        r.size()
