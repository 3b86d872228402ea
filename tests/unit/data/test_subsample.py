"""Nested, deterministic subsampling: the pure functions, then the dataset wrapper."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from efm.data import rlds as rlds_io
from efm.data.subsample import (
    dataset_fingerprint,
    fraction_dirname,
    fraction_key,
    fraction_size,
    load_manifest,
    nested_fractions,
    split_validation,
    subsample_dataset,
)
from efm.envs.base import Episode

IDS = [f"ep-{i}" for i in range(200)]


def test_validation_is_held_out_disjoint_deterministic_and_seeded() -> None:
    train, val = split_validation(IDS, 25, seed=0)
    assert len(val) == 25 and len(train) == 175
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(IDS)
    assert train == [i for i in IDS if i in set(train)]  # source order kept
    assert split_validation(IDS, 25, seed=0) == (train, val)
    assert split_validation(IDS, 25, seed=1)[1] != val
    assert val != IDS[:25]  # a random draw, not the first episodes


def test_fractions_nest_and_have_the_right_sizes() -> None:
    train, val = split_validation(IDS, 25, seed=0)
    subsets = nested_fractions(train, (0.8, 0.1, 0.2), seed=0)
    assert list(subsets) == [0.1, 0.2, 0.8]
    assert [len(subsets[f]) for f in (0.1, 0.2, 0.8)] == [18, 35, 140]  # round(f * 175)
    assert set(subsets[0.1]) < set(subsets[0.2]) < set(subsets[0.8]) <= set(train)
    assert set(subsets[0.8]).isdisjoint(val)
    assert nested_fractions(train, (0.1, 0.2, 0.8), seed=0) == subsets
    assert nested_fractions(train, (0.1,), seed=1)[0.1] != subsets[0.1]
    assert nested_fractions(train, (1.0,), seed=0)[1.0] == train


def test_fraction_sizes_round_and_never_hit_zero() -> None:
    assert fraction_size(0.5, 5) == 3  # 2.5 rounds half up (not to even)
    assert fraction_size(0.01, 10) == 1
    assert fraction_size(1.0, 7) == 7
    with pytest.raises(ValueError, match="fraction 0"):
        fraction_size(0.0, 10)


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicated"):
        split_validation(["a", "b", "a"], 1, seed=0)
    with pytest.raises(ValueError, match="num_validation=3"):
        split_validation(["a", "b", "c"], 3, seed=0)
    with pytest.raises(ValueError, match=r"fraction 1\.5"):
        nested_fractions(["a", "b"], (1.5,), seed=0)


def _episode(i: int) -> Episode:
    n = 2 + i % 4
    return Episode(observations={"position": np.full((n + 1, 2), i, np.float32)},
                   actions=np.full((n, 2), 0.1 * i, np.float32), instruction=f"go {i}",
                   goal={"target": np.array([i, -i], np.float32)}, success=True,
                   episode_id=f"ep-{i}", optimal_length=float(n))


def test_subsample_dataset_writes_nested_datasets_and_manifest(tmp_path: Path) -> None:
    episodes = [_episode(i) for i in range(30)]
    rlds_io.write_episodes(episodes, tmp_path / "full")
    out = tmp_path / "subsets"
    manifest = subsample_dataset(tmp_path / "full", out, (0.1, 0.5), num_validation=5, seed=7)

    assert manifest == load_manifest(out) == json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["num_episodes"] == 30
    assert manifest["source"]["path"] == str((tmp_path / "full").absolute())
    train, val = split_validation([e.episode_id for e in episodes], 5, seed=7)
    expected = nested_fractions(train, (0.1, 0.5), seed=7)
    assert manifest["validation"]["episode_ids"] == val

    by_id = {e.episode_id: e for e in episodes}
    read_val = rlds_io.read_episodes(out / "validation", "validation")
    assert [e.episode_id for e in read_val] == val
    for f, key in ((0.1, "0.1"), (0.5, "0.5")):
        entry = manifest["fractions"][key]
        assert entry["episode_ids"] == expected[f] and entry["count"] == len(expected[f])
        back = rlds_io.read_episodes(out / entry["path"], entry["split"])
        assert [e.episode_id for e in back] == expected[f]
        for e in back:  # the episodes themselves, not just their ids
            np.testing.assert_array_equal(e.actions, by_id[e.episode_id].actions)
        assert rlds_io.read_metadata(out / entry["path"])["seed"] == 7
    assert (out / "fraction_0.1").is_dir() and (out / "fraction_0.5").is_dir()
    assert set(manifest["fractions"]["0.1"]["episode_ids"]) < set(
        manifest["fractions"]["0.5"]["episode_ids"])


def test_subsample_dataset_refuses_a_non_empty_out_dir(tmp_path: Path) -> None:
    rlds_io.write_episodes([_episode(i) for i in range(6)], tmp_path / "full")
    out = tmp_path / "subsets"
    out.mkdir()
    (out / "other.txt").write_text("x")
    with pytest.raises(rlds_io.DatasetError, match="not empty"):
        subsample_dataset(tmp_path / "full", out, (0.5,), num_validation=1, seed=0)
    assert [p.name for p in out.iterdir()] == ["other.txt"]


def test_subsample_copies_records_without_decoding_an_episode(tmp_path: Path, monkeypatch) -> None:
    """Memory must not grow with the dataset, nor time with re-encoding frames: the outputs are
    the source's records copied one at a time; no episode is decoded or written anew."""
    episodes = [_episode(i) for i in range(40)]
    rlds_io.write_episodes(episodes, tmp_path / "full")

    def refuse(*args, **kwargs):
        raise AssertionError("subsample decoded or re-encoded episodes")

    monkeypatch.setattr(rlds_io, "iter_episodes", refuse)
    monkeypatch.setattr(rlds_io, "write_episodes", refuse)
    monkeypatch.setattr(rlds_io, "write_splits", refuse)
    manifest = subsample_dataset(tmp_path / "full", tmp_path / "out", (0.25, 1.0), num_validation=4, seed=1)
    monkeypatch.undo()
    assert manifest["fractions"]["1"]["count"] == 36
    by_id = {e.episode_id: e for e in episodes}
    for entry in manifest["fractions"].values():
        back = rlds_io.read_episodes(tmp_path / "out" / entry["path"], entry["split"])
        assert [e.episode_id for e in back] == entry["episode_ids"]
        for e in back:
            np.testing.assert_array_equal(e.observations["position"], by_id[e.episode_id].observations["position"])


def test_fraction_names_are_exact() -> None:
    assert [fraction_key(f) for f in (0.1, 0.5, 1.0)] == ["0.1", "0.5", "1"]
    assert float(fraction_key(1 / 3)) == 1 / 3
    assert fraction_dirname(1 / 3) != fraction_dirname(0.333333)  # the same name to 6 digits


def test_resuming_a_subsampling_checks_its_source_and_arguments(tmp_path: Path) -> None:
    """`efm subsample` into a finished output returns it when it is the same draw (fractions
    such as Aloha's 1/3 included) and refuses it when the source or the arguments changed."""
    from efm.config import debug_config
    from efm.stages import subsample_stage

    rlds_io.write_episodes([_episode(i) for i in range(30)], tmp_path / "full")
    base = debug_config()
    cfg = base.replace(data=dataclasses.replace(base.data, fractions=(1 / 3, 2 / 3), validation_episodes=3))
    first = subsample_stage(cfg, tmp_path / "full", tmp_path / "out", seed=0)
    assert subsample_stage(cfg, tmp_path / "full", tmp_path / "out", seed=0) == first
    with pytest.raises(ValueError, match="seed 0 and 3 validation"):
        subsample_stage(cfg, tmp_path / "full", tmp_path / "out", seed=1)
    with pytest.raises(ValueError, match=r"no fraction 0\.5"):
        subsample_stage(cfg.replace(data=dataclasses.replace(cfg.data, fractions=(0.5,))),
                        tmp_path / "full", tmp_path / "out", seed=0)
    rlds_io.write_episodes([_episode(i) for i in range(10, 40)], tmp_path / "full", overwrite=True)
    with pytest.raises(ValueError, match="other episodes"):
        subsample_stage(cfg, tmp_path / "full", tmp_path / "out", seed=0)


def test_overwriting_a_subsampling_leaves_only_the_new_one(tmp_path: Path) -> None:
    rlds_io.write_episodes([_episode(i) for i in range(20)], tmp_path / "full")
    out = tmp_path / "out"
    subsample_dataset(tmp_path / "full", out, (0.25, 0.5), num_validation=2, seed=0)
    manifest = subsample_dataset(tmp_path / "full", out, (0.5,), num_validation=2, seed=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["fraction_0.5", "manifest.json", "validation"]
    assert load_manifest(out) == manifest and manifest["seed"] == 1


def _positional(episodes: list[Episode]) -> list[Episode]:
    """The episodes renamed demo-%06d by position, as `efm dataset` names them."""
    return [dataclasses.replace(e, episode_id=f"demo-{k:06d}") for k, e in enumerate(episodes)]


def test_resuming_a_subsampling_refuses_another_dataset_with_the_same_ids(tmp_path: Path) -> None:
    """Two datasets of one size have the same positional ids: the manifest's source fingerprint
    tells them apart, and the error names both."""
    from efm.config import debug_config
    from efm.stages import subsample_stage

    rlds_io.write_episodes(_positional([_episode(i) for i in range(30)]), tmp_path / "a")
    rlds_io.write_episodes(_positional([_episode(i) for i in range(100, 130)]), tmp_path / "b")
    base = debug_config()
    cfg = base.replace(data=dataclasses.replace(base.data, fractions=(0.5,), validation_episodes=3))
    first = subsample_stage(cfg, tmp_path / "a", tmp_path / "out", seed=0)
    assert subsample_stage(cfg, tmp_path / "a", tmp_path / "out", seed=0) == first
    with pytest.raises(ValueError, match="other episodes") as e:
        subsample_stage(cfg, tmp_path / "b", tmp_path / "out", seed=0)
    assert str(tmp_path / "a") in str(e.value) and str(tmp_path / "b") in str(e.value)
    assert first["source"]["fingerprint"] == dataset_fingerprint(tmp_path / "a") != dataset_fingerprint(tmp_path / "b")


def test_a_manifest_without_a_fingerprint_is_accepted_as_before(tmp_path: Path) -> None:
    from efm.config import debug_config
    from efm.stages import subsample_stage

    rlds_io.write_episodes(_positional([_episode(i) for i in range(30)]), tmp_path / "a")
    base = debug_config()
    cfg = base.replace(data=dataclasses.replace(base.data, fractions=(0.5,), validation_episodes=3))
    subsample_stage(cfg, tmp_path / "a", tmp_path / "out", seed=0)
    path = tmp_path / "out" / "manifest.json"
    old = json.loads(path.read_text())
    del old["source"]["fingerprint"]
    path.write_text(json.dumps(old))
    assert subsample_stage(cfg, tmp_path / "a", tmp_path / "out", seed=0) == old


def test_a_damaged_manifest_is_named(tmp_path: Path) -> None:
    """A manifest cut short or edited by hand: a DatasetError naming the file and what is wrong,
    not a bare JSON error or KeyError."""
    rlds_io.write_episodes([_episode(i) for i in range(12)], tmp_path / "full")
    subsample_dataset(tmp_path / "full", tmp_path / "out", [0.5], 2, 0)
    path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(path.read_text()[:40])
    with pytest.raises(rlds_io.DatasetError, match=rf"{path} is not a subsampling manifest \(.*line \d+ column"):
        load_manifest(tmp_path / "out")
    del manifest["validation"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(rlds_io.DatasetError, match=rf"{path} is not a subsampling manifest \(no 'validation'\)"):
        load_manifest(tmp_path / "out")
