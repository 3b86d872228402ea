"""Episodes <-> RLDS on disk: exact round trip, standard readers, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rlds
import tensorflow_datasets as tfds

from efm.config import default_config
from efm.data import rlds as rlds_io
from efm.data.rlds import DatasetError
from efm.envs.base import Episode
from efm.envs.pointmass import PointmassEnv, WaypointDemonstrator
from efm.rollout import rollout


def make_episode(i: int, length: int, *, image: bool = False, success: bool = True) -> Episode:
    rng = np.random.default_rng(i)
    obs = {"position": rng.normal(size=(length + 1, 2)).astype(np.float32)}
    if image:
        obs["image"] = rng.integers(0, 256, (length + 1, 8, 8, 3), dtype=np.uint8)
    return Episode(
        observations=obs,
        actions=rng.uniform(-1, 1, (length, 2)).astype(np.float32),
        instruction=f"move to target {i} ✓",
        goal={"target": rng.normal(size=2).astype(np.float32)},
        success=success,
        episode_id=f"ep-{i}",
        optimal_length=float(length // 2),
        observation_extras={"d": rng.normal(size=length + 1).astype(np.float32),
                            "success": np.arange(length + 1) == length},
        action_extras={"tokens": rng.integers(0, 11, (length, 2)).astype(np.int32)},
    )


def assert_same(a: Episode, b: Episode) -> None:
    assert (b.episode_id, b.instruction, b.success) == (a.episode_id, a.instruction, a.success)
    assert b.optimal_length == a.optimal_length
    for what in ("observations", "goal", "observation_extras", "action_extras"):
        x, y = getattr(a, what), getattr(b, what)
        assert sorted(x) == sorted(y), what
        for k in x:
            assert y[k].dtype == x[k].dtype and y[k].shape == x[k].shape, (what, k)
            np.testing.assert_array_equal(y[k], x[k], err_msg=f"{what}/{k}")
    assert b.actions.dtype == np.float32
    np.testing.assert_array_equal(b.actions, a.actions)


def test_round_trip_is_exact_and_ordered(tmp_path: Path) -> None:
    episodes = [make_episode(i, n, success=i % 2 == 0) for i, n in enumerate([5, 0, 12, 1, 7])]
    rlds_io.write_episodes(episodes, tmp_path / "ds", metadata={"seed": 3})
    back = rlds_io.read_episodes(tmp_path / "ds")
    assert [e.episode_id for e in back] == [e.episode_id for e in episodes]
    for a, b in zip(episodes, back, strict=True):
        assert_same(a, b)
    assert rlds_io.read_metadata(tmp_path / "ds") == {"seed": 3}


def test_image_observations_round_trip_as_tfds_images(tmp_path: Path) -> None:
    episodes = [make_episode(i, 4 + i, image=True) for i in range(3)]
    rlds_io.write_episodes(episodes, tmp_path / "ds")
    for a, b in zip(episodes, rlds_io.read_episodes(tmp_path / "ds"), strict=True):
        assert_same(a, b)
    obs = tfds.builder_from_directory(str(tmp_path / "ds")).info.features["steps"]["observation"]
    assert isinstance(obs["image"], tfds.features.Image)
    assert obs["image"].shape == (8, 8, 3)


def test_pointmass_demonstrations_round_trip(tmp_path: Path) -> None:
    cfg = default_config().env
    episodes = list(rollout(PointmassEnv(cfg, 4, 0), WaypointDemonstrator(cfg, 4, 1),
                            max_steps=200, episodes_per_env=2))
    rlds_io.write_episodes(episodes, tmp_path / "ds")
    for a, b in zip(episodes, rlds_io.read_episodes(tmp_path / "ds"), strict=True):
        assert_same(a, b)


def test_layout_follows_rlds_and_standard_readers_work(tmp_path: Path) -> None:
    episodes = [make_episode(0, 3, success=True), make_episode(1, 2, success=False)]
    rlds_io.write_episodes(episodes, tmp_path / "ds")
    # Plain TFDS, no efm code involved in reading.
    features = json.loads((tmp_path / "ds" / "features.json").read_text())
    assert "efm" not in json.dumps(features)
    ds = tfds.builder_from_directory(str(tmp_path / "ds")).as_dataset(split="train")
    steps = [list(tfds.as_numpy(ep["steps"])) for ep in ds]
    assert [len(s) for s in steps] == [4, 3]
    for ep, s in zip(episodes, steps, strict=True):
        assert [x["is_first"] for x in s] == [True] + [False] * ep.length
        assert [x["is_last"] for x in s] == [False] * ep.length + [True]
        assert [x["is_terminal"] for x in s] == [False] * ep.length + [ep.success]
        assert [x["reward"] for x in s] == [0.0] * ep.length + [float(ep.success)]
        assert [x["discount"] for x in s] == [1.0] * ep.length + [0.0 if ep.success else 1.0]
        np.testing.assert_array_equal(s[-1]["action"], np.zeros(2, np.float32))
        np.testing.assert_array_equal(np.stack([x["action"] for x in s[:-1]]), ep.actions)
        np.testing.assert_array_equal(np.stack([x["observation"]["position"] for x in s]),
                                      ep.observations["position"])
        assert {x["language_instruction"].decode() for x in s} == {ep.instruction}
    # The rlds library operates on the raw dataset.
    raw = rlds_io.load_rlds(tmp_path / "ds")
    assert [int(rlds.transformations.episode_length(ep[rlds.STEPS])) for ep in raw] == [4, 3]
    total_reward = rlds.transformations.sum_nested_steps(raw, lambda step: step[rlds.REWARD])
    assert float(total_reward) == 1.0
    flat = raw.flat_map(lambda ep: ep[rlds.STEPS])
    assert int(flat.reduce(0, lambda n, _: n + 1)) == 7
    md = next(iter(tfds.as_numpy(raw)))["episode_metadata"]
    assert md["episode_id"] == b"ep-0" and md["length"] == 3 and md["success"]


def test_several_splits(tmp_path: Path) -> None:
    rlds_io.write_splits({"train": [make_episode(i, 3) for i in range(3)],
                          "validation": (make_episode(i, 2) for i in range(3, 5))}, tmp_path / "ds")
    assert rlds_io.split_sizes(tmp_path / "ds") == {"train": 3, "validation": 2}
    assert [e.episode_id for e in rlds_io.read_episodes(tmp_path / "ds", "validation")] == [
        "ep-3", "ep-4"]


def test_fast_encoder_writes_the_same_bytes_as_tfds(tmp_path: Path) -> None:
    ep = make_episode(0, 6, image=True, success=False)
    ours = rlds_io.episode_features(ep)
    stock = tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset(ours["steps"].feature),
        "episode_metadata": ours["episode_metadata"],
    })
    example = rlds_io._Spec(ep).example(ep)
    assert ours.serialize_example(example) == stock.serialize_example(example)


def test_copied_episodes_are_the_records_as_written(tmp_path: Path) -> None:
    """What subsampling writes: chosen episodes of a split, in stored order, records copied
    as they are (no frame decoded or encoded again): the same bytes `write_episodes` writes."""
    episodes = [make_episode(i, 2 + i % 3, image=True, success=i % 2 == 0) for i in range(8)]
    rlds_io.write_splits({"train": episodes[:6], "validation": episodes[6:]}, tmp_path / "ds")
    out = rlds_io.copy_episodes(tmp_path / "ds", "train", [4, 1, 2], tmp_path / "copy",
                                out_split="fraction", metadata={"role": "test"})
    assert rlds_io.split_sizes(out) == {"fraction": 3}
    back = rlds_io.read_episodes(out, "fraction")
    for a, b in zip([episodes[i] for i in (1, 2, 4)], back, strict=True):
        assert_same(a, b)
    assert rlds_io.read_metadata(out) == {"role": "test"}
    rlds_io.write_episodes([episodes[i] for i in (1, 2, 4)], tmp_path / "written", split="fraction")
    records = [sorted(d.glob("*.tfrecord*")) for d in (out, tmp_path / "written")]
    assert [p.name for p in records[0]] == [p.name for p in records[1]]
    assert [p.read_bytes() for p in records[0]] == [p.read_bytes() for p in records[1]]
    info = [json.loads((d / "dataset_info.json").read_text()) for d in (out, tmp_path / "written")]
    assert info[0]["splits"] == info[1]["splits"]


def test_copying_refuses_positions_the_split_lacks_and_an_occupied_target(tmp_path: Path) -> None:
    rlds_io.write_episodes([make_episode(i, 2) for i in range(3)], tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"0\.\.2, not 3"):
        rlds_io.copy_episodes(tmp_path / "ds", "train", [0, 3], tmp_path / "a")
    with pytest.raises(DatasetError, match="empty split"):
        rlds_io.copy_episodes(tmp_path / "ds", "train", [], tmp_path / "a")
    with pytest.raises(DatasetError, match="not empty"):
        rlds_io.copy_episodes(tmp_path / "ds", "train", [0], tmp_path / "ds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # nothing half-written


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    first = [make_episode(0, 3)]
    rlds_io.write_episodes(first, tmp_path / "ds")
    with pytest.raises(DatasetError, match="not empty"):
        rlds_io.write_episodes([make_episode(1, 2)], tmp_path / "ds")
    assert_same(first[0], rlds_io.read_episodes(tmp_path / "ds")[0])

    rlds_io.write_episodes([make_episode(1, 2)], tmp_path / "ds", overwrite=True)
    assert [e.episode_id for e in rlds_io.read_episodes(tmp_path / "ds")] == ["ep-1"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not a TFDS dataset"):
        rlds_io.write_episodes(first, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "notes"]  # no temp leftovers


def test_bad_episodes_fail_before_anything_is_written(tmp_path: Path) -> None:
    bad = make_episode(1, 3)
    bad.observations["position"] = bad.observations["position"].astype(np.float64)
    with pytest.raises(DatasetError, match=r"episode 'ep-1'.*'position'.*float64"):
        rlds_io.write_episodes([make_episode(0, 3), bad], tmp_path / "ds")
    with pytest.raises(DatasetError, match="duplicate episode_id 'ep-0'"):
        rlds_io.write_episodes([make_episode(0, 3), make_episode(0, 3)], tmp_path / "ds")
    with pytest.raises(DatasetError, match="no episodes"):
        rlds_io.write_episodes([], tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def _store(tmp_path: Path, features: dict, example: dict) -> Path:
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name="foreign", version="1.0.0", features=tfds.features.FeaturesDict(features),
        split_datasets={"train": [(0, example)]}, data_dir=tmp_path / "foreign")
    return Path(str(builder.data_dir))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope.*does not exist"):
        rlds_io.read_episodes(tmp_path / "nope")


def test_directory_that_is_not_a_tfds_dataset(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"not a TFDS dataset: missing dataset_info.json, "
                                           r"features.json"):
        rlds_io.load_rlds(tmp_path)
    # A parent of a dataset: say where the dataset is.
    rlds_io.write_episodes([make_episode(0, 2)], tmp_path / "a" / "b")
    with pytest.raises(DatasetError, match=r"datasets found below it: \[.*/a/b'\]"):
        rlds_io.read_episodes(tmp_path / "a")


def test_dataset_without_steps(tmp_path: Path) -> None:
    path = _store(tmp_path, {"x": tfds.features.Scalar(dtype=np.int32)}, {"x": 1})
    with pytest.raises(DatasetError, match=r"not an RLDS dataset: no 'steps' feature.*\['x'\]"):
        rlds_io.read_episodes(path)


def test_steps_without_required_keys(tmp_path: Path) -> None:
    steps = tfds.features.Dataset({"observation": tfds.features.Scalar(dtype=np.float32),
                                   "is_first": tfds.features.Scalar(dtype=np.bool_)})
    path = _store(tmp_path, {"steps": steps},
                  {"steps": {"observation": np.zeros(2, np.float32), "is_first": [True, False]}})
    with pytest.raises(DatasetError, match=r"steps lack \['action', 'is_last'\]"):
        rlds_io.load_rlds(path)


def test_missing_split(tmp_path: Path) -> None:
    rlds_io.write_episodes([make_episode(0, 2)], tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"no split 'validation' \(splits: \['train'\]\)"):
        rlds_io.read_episodes(tmp_path / "ds", "validation")
    with pytest.raises(DatasetError, match="no split 'test'"):
        rlds_io.load_rlds(tmp_path / "ds", "train+test[:1]")


def test_foreign_rlds_dataset_reads_with_fallbacks(tmp_path: Path) -> None:
    """A minimal RLDS dataset (no efm metadata) still becomes Episodes."""
    f = tfds.features
    state = f.Tensor(shape=(3,), dtype=np.float32)
    steps = f.Dataset({"observation": f.FeaturesDict({"state": state}),
                       "action": f.Tensor(shape=(2,), dtype=np.float32),
                       "is_first": f.Scalar(dtype=np.bool_), "is_last": f.Scalar(dtype=np.bool_),
                       "is_terminal": f.Scalar(dtype=np.bool_), "language_instruction": f.Text()})
    n = 4
    example = {"steps": {"observation": {"state": np.ones((n, 3), np.float32)},
                         "action": np.full((n, 2), 0.5, np.float32),
                         "is_first": np.arange(n) == 0, "is_last": np.arange(n) == n - 1,
                         "is_terminal": np.arange(n) == n - 1,
                         "language_instruction": ["push the block"] * n}}
    (ep,) = rlds_io.read_episodes(_store(tmp_path, {"steps": steps}, example))
    assert (ep.episode_id, ep.instruction, ep.success, ep.length) == (
        "train-0", "push the block", True, 3)
    assert ep.observations["state"].shape == (4, 3)
    assert np.all(ep.actions == 0.5) and ep.actions.shape == (3, 2)


def test_a_dataset_opens_by_uri(fake_gcs: Path) -> None:
    """Dataflow's workers read the dataset as gs://…: the URI reaches the filesystem whole
    (pathlib would fold it into gs:/…). Here a fake gs:// backend serves a local dataset."""
    rlds_io.write_episodes([make_episode(i, 3) for i in range(3)], fake_gcs / "ds", metadata={"made_by": "test"})
    assert rlds_io.split_sizes("gs://bucket/ds") == {"train": 3}
    assert rlds_io.read_metadata("gs://bucket/ds") == {"made_by": "test"}
    with pytest.raises(DatasetError, match="gs://bucket/nope: the directory does not exist"):
        rlds_io.split_sizes("gs://bucket/nope")


def test_absolute_keeps_a_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert rlds_io.absolute("gs://bucket/ds") == "gs://bucket/ds"
    assert rlds_io.absolute("ds") == str(tmp_path / "ds")
