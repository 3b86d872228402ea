"""A dataset with a truncated TFRecord file (a copy cut short, a full disk): every reader fails
with a DatasetError naming the dataset, which the CLI prints as one line, not TensorFlow's
DataLossError traceback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from efm.cli import main
from efm.config import RunConfig, debug_config
from efm.data import rlds
from efm.data.inspect import inspect_dataset
from efm.data.rlds import DatasetError
from efm.data.stage1 import Stage1Data
from efm.data.validation import compute_statistics
from efm.envs.base import Episode


def table_episode(t: int, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        observations={"rgb": rng.integers(0, 256, (t + 1, 12, 16, 3)).astype(np.uint8),
                      "effector_translation": rng.normal(size=(t + 1, 2)).astype(np.float32)},
        actions=rng.uniform(-1, 1, (t, 2)).astype(np.float32), instruction="push the red moon to the blue cube",
        success=True, episode_id=f"ep-{seed}")


def table_config() -> RunConfig:
    cfg = debug_config("tabletop")
    return cfg.replace(sft=dataclasses.replace(cfg.sft, validation_batch_size=2, batch_size=6, shuffle_buffer=50,
                                               grounding_weight=0.0))


@pytest.fixture(scope="module")
def truncated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = rlds.write_episodes([table_episode(3 + i % 3, i) for i in range(6)], tmp_path_factory.mktemp("corrupt") / "ds")
    (record,) = directory.glob("*.tfrecord*")
    data = record.read_bytes()
    record.write_bytes(data[: len(data) * 2 // 3])
    return directory


def _names(directory: Path) -> str:
    return rf"RLDS dataset {directory}: a data file is corrupt or truncated \(.*\): write or copy"


def test_episode_readers_name_the_dataset(truncated: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=_names(truncated)):
        rlds.read_episodes(truncated)
    with pytest.raises(DatasetError, match=_names(truncated)):
        rlds.copy_episodes(truncated, "train", [0, 3], tmp_path / "copy")  # what subsample does
    assert not (tmp_path / "copy").exists()  # nothing half-written left behind
    with pytest.raises(DatasetError, match=_names(truncated)):
        inspect_dataset(truncated)


def test_stage1_streams_name_the_dataset(truncated: Path) -> None:
    data = Stage1Data(table_config())
    with pytest.raises(DatasetError, match=_names(truncated)):
        next(data.training(truncated, seed=0))
    with pytest.raises(DatasetError, match=_names(truncated)):
        list(data.validation(truncated, "bc"))


def test_validation_statistics_name_the_dataset(truncated: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=rf"RLDS dataset {truncated}: a data file is corrupt or truncated"):
        compute_statistics(truncated, tmp_path / "stats")


def test_the_cli_prints_one_line(truncated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(truncated)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"efm data: error: RLDS dataset {truncated}: a data file is corrupt or truncated")
