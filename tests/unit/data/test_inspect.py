"""`inspect_dataset` on LanguageTable, on the project's own RLDS, on other RLDS layouts, and
clear errors on anything that is not an RLDS dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from efm.data import languagetable as lt
from efm.data import rlds as rlds_io
from efm.data.inspect import format_inspection, inspect_dataset, resolve_dataset_dir
from efm.data.rlds import DatasetError
from efm.envs.base import Episode

LENGTHS = (4, 1, 6)  # RLDS steps per episode
_f = tfds.features


@pytest.fixture(scope="module")
def language_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lt.write_languagetable_fixture(tmp_path_factory.mktemp("lt"), 3, LENGTHS, seed=0,
                                          image_shape=(36, 64, 3))


def _store(directory: Path, name: str, features: _f.FeaturesDict, examples: list) -> Path:
    tfds.disable_progress_bar()
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=features, data_dir=directory,
        split_datasets={"train": list(enumerate(examples))}, disable_shuffling=True,
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return Path(str(builder.data_dir))


def test_language_table(language_table: Path) -> None:
    info = inspect_dataset(language_table.parent)  # .../language_table: its one version
    assert info == inspect_dataset(language_table)
    assert info["path"] == str(language_table)
    assert (info["name"], info["version"], info["format"]) == ("language_table", "0.0.1",
                                                               "language_table")
    assert info["splits"] == {"train": {"episodes": 3, "steps": 11, "counted_episodes": 3,
                                        "steps_exact": True}}
    assert (info["total_episodes"], info["total_steps"], info["steps_exact"]) == (3, 11, True)
    steps = info["features"]["steps"]
    assert steps["kind"] == "Dataset" and list(info["features"]) == ["steps"]
    step = steps["feature"]["features"]
    assert sorted(step) == ["action", "is_first", "is_last", "is_terminal", "observation",
                            "reward"]
    assert step["reward"] == {"kind": "Scalar", "dtype": "float32", "shape": []}
    obs = step["observation"]["features"]
    assert obs["rgb"] == {"kind": "Image", "dtype": "uint8", "shape": [36, 64, 3],
                          "encoding": "jpeg"}
    assert obs["instruction"] == {"kind": "Tensor", "dtype": "int32", "shape": [512]}
    assert info["instruction_feature"] == "steps/observation/instruction"
    assert [(e["index"], e["steps"], e["instruction"]) for e in info["examples"]] == [
        (i, n, lt.FIXTURE_INSTRUCTIONS[i]) for i, n in enumerate(LENGTHS)]
    assert info["metadata"] == {}
    assert json.loads(json.dumps(info)) == info
    text = format_inspection(info)
    for part in ("language_table 0.0.1  [language_table]", "train: 3 episodes, 11 steps",
                 "steps: Dataset of FeaturesDict", "      rgb: Image uint8[36, 64, 3] (jpeg)",
                 "instruction feature: steps/observation/instruction",
                 '#0: 4 steps, "push the red star to the blue cube"', "metadata: none"):
        assert part in text, part


def test_examples_and_a_capped_step_count(language_table: Path) -> None:
    info = inspect_dataset(language_table, examples=1, max_episodes=2)
    assert [e["instruction"] for e in info["examples"]] == [lt.FIXTURE_INSTRUCTIONS[0]]
    assert info["splits"]["train"] == {"episodes": 3, "steps": 5, "counted_episodes": 2,
                                       "steps_exact": False}
    assert not info["steps_exact"]
    assert "train: 3 episodes, 5 steps in the first 2 episodes" in format_inspection(info)
    assert inspect_dataset(language_table, examples=0)["examples"] == []
    with pytest.raises(ValueError, match=">= 0"):
        inspect_dataset(language_table, examples=-1)


def test_project_rlds_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    episodes = [Episode(
        observations={"position": rng.normal(size=(t + 1, 2)).astype(np.float32),
                      "image": rng.integers(0, 256, (t + 1, 8, 8, 3), dtype=np.uint8)},
        actions=rng.uniform(-1, 1, (t, 2)).astype(np.float32),
        instruction=f"reach target {i} ✓", goal={"target": np.full(2, i, np.float32)},
        success=i != 1, episode_id=f"ep-{i}", optimal_length=2.0,
    ) for i, t in enumerate((3, 0, 5))]
    rlds_io.write_splits({"train": episodes[:2], "validation": episodes[2:]}, tmp_path / "ds",
                         metadata={"seed": 7, "domain": "pointmass"})
    info = inspect_dataset(tmp_path / "ds")
    assert (info["name"], info["version"], info["format"]) == ("efm_episodes", "1.0.0", "efm")
    assert info["splits"] == {
        "train": {"episodes": 2, "steps": 5, "counted_episodes": 2, "steps_exact": True},
        "validation": {"episodes": 1, "steps": 6, "counted_episodes": 1, "steps_exact": True}}
    assert info["total_steps"] == 11
    assert info["instruction_feature"] == "episode_metadata/instruction"
    assert [e["instruction"] for e in info["examples"]] == ["reach target 0 ✓",
                                                            "reach target 1 ✓"]
    md = info["examples"][1]["episode_metadata"]
    assert (md["episode_id"], md["length"], md["success"], md["goal"]) == (
        "ep-1", 0, False, {"target": [1.0, 1.0]})
    assert info["metadata"] == {"seed": 7, "domain": "pointmass"}
    assert info["features"]["episode_metadata"]["features"]["instruction"]["kind"] == "Text"
    step = info["features"]["steps"]["feature"]["features"]
    assert step["language_instruction"] == {"kind": "Text", "dtype": "string", "shape": []}
    assert step["observation"]["features"]["image"]["kind"] == "Image"
    assert json.loads(json.dumps(info)) == info
    text = format_inspection(info)
    assert '"reach target 0 ✓"' in text and '"domain": "pointmass"' in text


def test_other_rlds_layouts_with_or_without_instructions(tmp_path: Path) -> None:
    step = {"observation": _f.FeaturesDict({"image": _f.Image(shape=(4, 4, 3))}),
            "action": _f.Tensor(shape=(2,), dtype=np.float32),
            "is_first": _f.Scalar(dtype=np.bool_), "is_last": _f.Scalar(dtype=np.bool_)}

    def episode(n: int, text: str | None) -> dict:
        steps = {"observation": {"image": np.zeros((n, 4, 4, 3), np.uint8)},
                 "action": np.zeros((n, 2), np.float32),
                 "is_first": np.arange(n) == 0, "is_last": np.arange(n) == n - 1}
        if text is not None:
            steps["language_instruction"] = [text] * n
        return {"steps": steps}

    with_text = _store(tmp_path / "a", "oxe_like", _f.FeaturesDict({"steps": _f.Dataset(
        {**step, "language_instruction": _f.Text()})}), [episode(2, "pick up the cup")])
    info = inspect_dataset(with_text)
    assert info["format"] == "rlds"
    assert info["instruction_feature"] == "steps/language_instruction"
    assert [(e["steps"], e["instruction"]) for e in info["examples"]] == [(2, "pick up the cup")]

    no_text = _store(tmp_path / "b", "no_text", _f.FeaturesDict({"steps": _f.Dataset(step)}),
                     [episode(3, None)])
    info = inspect_dataset(no_text)
    assert info["instruction_feature"] is None and info["total_steps"] == 3
    assert "instruction" not in info["examples"][0]
    assert "instruction feature: none found" in format_inspection(info)


def test_what_is_not_an_rlds_dataset_is_a_clear_error(tmp_path: Path) -> None:
    def fails(path: Path, message: str) -> None:
        with pytest.raises(DatasetError, match=message) as err:
            inspect_dataset(path)
        assert str(path) in str(err.value)

    fails(tmp_path / "missing", "no such file or directory")
    (tmp_path / "file.json").write_text("{}")
    fails(tmp_path / "file.json", "is a file, not an RLDS dataset directory")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "is an empty directory")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    fails(tmp_path / "other", "not a TFDS dataset: missing dataset_info.json, features.json")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "dataset_info.json").write_text("{}")
    fails(tmp_path / "half", "missing features.json")
    for version in ("1.0.0", "2.0.0"):
        (tmp_path / "two" / version).mkdir(parents=True)
        (tmp_path / "two" / version / "dataset_info.json").write_text("{}")
    fails(tmp_path / "two", r"holds 2 datasets or versions \(1.0.0, 2.0.0\)")
    plain = _store(tmp_path / "plain", "plain", _f.FeaturesDict({"x": _f.Scalar(dtype=np.int32)}),
                   [{"x": 1}])
    fails(plain.parent, "not an RLDS dataset: no 'steps' feature")


def test_a_dataset_dir_resolves_by_uri(language_table: Path, fake_gcs: Path) -> None:
    """A gs:// URI keeps its prefix (pathlib would fold gs://b into gs:/b and find nothing)."""
    shutil.copytree(language_table.parent, fake_gcs / "language_table")
    assert str(resolve_dataset_dir("gs://bucket/language_table")) == "gs://bucket/language_table/0.0.1"
    with pytest.raises(DatasetError, match="gs://bucket/nope: no such file"):
        resolve_dataset_dir("gs://bucket/nope")


def test_cli_prints_json_or_text_and_exits_2_on_a_non_dataset(language_table: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from efm.cli import main

    assert main(["data", "inspect", str(language_table.parent), "--json"]) == 0  # the parent holds one version
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "language_table" and info["total_episodes"] == 3
    assert main(["data", "inspect", str(language_table)]) == 0
    assert "language_table" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("hi")
    assert main(["data", "inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "efm data: error:" in err and str(tmp_path) in err
