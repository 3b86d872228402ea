"""LanguageTable RLDS -> Episodes: instruction codes, the reader on data in the published
schema (checked against plain TFDS reads), and clear errors on anything else."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from efm.data import languagetable as lt
from efm.data import rlds as rlds_io
from efm.data.rlds import DatasetError
from efm.envs.base import Episode

LENGTHS = (4, 1, 6)  # RLDS steps per episode, so T = 3, 0, 5 actions
SMALL = (36, 64, 3)
TEXT = "push the red star to the blue cube"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lt.write_languagetable_fixture(tmp_path_factory.mktemp("lt"), 3, LENGTHS, seed=0,
                                          image_shape=SMALL)


def raw_steps(path: Path) -> list[dict[str, Any]]:
    """Each episode's steps stacked, read with plain TFDS (no efm code involved)."""
    ds = tfds.builder_from_directory(str(path)).as_dataset(split="train", shuffle_files=False)
    out = []
    for ep in tfds.as_numpy(ds):
        steps = list(ep["steps"])
        obs = {k: np.stack([s["observation"][k] for s in steps]) for k in steps[0]["observation"]}
        out.append({"observation": obs,
                    **{k: np.stack([s[k] for s in steps]) for k in steps[0] if k != "observation"}})
    return out


# ----------------------------------------------------------------------------- instructions


def test_instruction_codes_round_trip_and_padding_is_stripped() -> None:
    codes = lt.encode_instruction(TEXT)
    assert codes.shape == (512,) and codes.dtype == np.int32
    assert (codes[len(TEXT):] == 0).all()
    assert lt.decode_instruction(codes) == TEXT
    # The same text LanguageTable's own decoder gives (bytes of the non-zero codes).
    assert lt.decode_instruction(codes) == bytes(codes[codes != 0].tolist()).decode("utf-8")
    text = "schiebe den Würfel → links"  # multi-byte UTF-8: codes are bytes, not characters
    codes = lt.encode_instruction(text)
    assert np.count_nonzero(codes) == len(text.encode()) > len(text)
    assert lt.decode_instruction(codes) == text
    assert lt.decode_instruction(np.array([104, 105, 0, 0], np.int64)) == "hi"
    assert lt.decode_instruction(np.zeros(512, np.int32)) == ""
    with pytest.raises(ValueError, match="more than 4"):
        lt.encode_instruction("hello", length=4)


@pytest.mark.parametrize(("codes", "message"), [
    ([0xFF, 0x41], "not valid UTF-8"),
    ([0x61, 0xE2, 0x86, 0, 0], "not valid UTF-8"),  # a character cut short
    ([104, 300, 0], "code 300 at position 1 is not a byte"),
    ([104, -1], "code -1 at position 1 is not a byte"),
    ([104, 0, 105, 0], "code 0 at position 1 is a zero before the end"),
    ([[104, 105]], "1-D integer array"),
    ([104.0, 105.0], "1-D integer array"),
])
def test_corrupt_instruction_codes_are_errors(codes: list[Any], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        lt.decode_instruction(np.array(codes))


# ----------------------------------------------------------------------------- reader


def test_reader_maps_rlds_steps_onto_episodes(small: Path) -> None:
    episodes = list(lt.read_languagetable(small))
    raw = raw_steps(small)
    assert len(episodes) == len(raw) == 3
    assert [e.episode_id for e in episodes] == ["train-0", "train-1", "train-2"]
    assert [e.instruction for e in episodes] == list(lt.FIXTURE_INSTRUCTIONS[:3])
    assert [e.success for e in episodes] == [True, False, True]
    for ep, r, n in zip(episodes, raw, LENGTHS, strict=True):
        assert ep.length == n - 1  # T actions for T+1 observations: the last action is dropped
        assert sorted(ep.observations) == ["effector_translation", "rgb"]
        assert sorted(ep.observation_extras) == ["effector_target_translation"]
        assert ep.goal == {} and ep.action_extras == {}
        assert ep.actions.dtype == np.float32 and ep.actions.shape == (n - 1, 2)
        np.testing.assert_array_equal(ep.actions, r["action"][:-1])
        rgb = ep.observations["rgb"]
        assert rgb.dtype == np.uint8 and rgb.shape == (n, *SMALL)
        np.testing.assert_array_equal(rgb, r["observation"]["rgb"])
        for key, arrays in (("effector_translation", ep.observations),
                            ("effector_target_translation", ep.observation_extras)):
            assert arrays[key].dtype == np.float32 and arrays[key].shape == (n, 2)
            np.testing.assert_array_equal(arrays[key], r["observation"][key])


def test_images_are_resized_with_antialiasing_to_uint8(small: Path) -> None:
    full = list(lt.read_languagetable(small))
    half = list(lt.read_languagetable(small, image_size=(18, 32)))
    same = list(lt.read_languagetable(small, image_size=(36, 64)))
    for f, h, s in zip(full, half, same, strict=True):
        big, rgb = f.observations["rgb"].astype(np.float32), h.observations["rgb"]
        assert rgb.dtype == np.uint8 and rgb.shape == (f.length + 1, 18, 32, 3)
        # Halving averages 2x2 blocks (nearest-neighbour subsampling is ~2.4 off here) ...
        blocks = big.reshape(-1, 18, 2, 32, 2, 3).mean(axis=(2, 4))
        assert np.abs(rgb - blocks).mean() < 1.5
        # ... and it is exactly TF's antialiased resize, rounded (not truncated) to uint8.
        want = tf.image.resize(big, (18, 32), method="bilinear", antialias=True).numpy()
        np.testing.assert_array_equal(rgb, np.clip(np.round(want), 0, 255).astype(np.uint8))
        np.testing.assert_array_equal(s.observations["rgb"], f.observations["rgb"])
        np.testing.assert_array_equal(h.actions, f.actions)


def test_reader_streams_and_limit_caps_episodes(small: Path) -> None:
    it = lt.read_languagetable(small, limit=2)
    assert isinstance(it, Iterator)
    assert next(it).episode_id == "train-0"
    assert [e.episode_id for e in it] == ["train-1"]
    assert list(lt.read_languagetable(small, limit=0)) == []


def test_episodes_are_valid_for_the_project_rlds_writer(small: Path, tmp_path: Path) -> None:
    episodes = list(lt.read_languagetable(small, image_size=(18, 32)))
    rlds_io.write_episodes(episodes, tmp_path / "ds")
    back = rlds_io.read_episodes(tmp_path / "ds")
    assert [(e.episode_id, e.instruction, e.success, e.length) for e in back] == [
        (e.episode_id, e.instruction, e.success, e.length) for e in episodes]
    np.testing.assert_array_equal(back[2].observations["rgb"], episodes[2].observations["rgb"])


def test_real_image_shape_and_exactly_the_published_schema(tmp_path: Path) -> None:
    path = lt.write_languagetable_fixture(tmp_path, 2, 2, seed=1)
    assert path == tmp_path.absolute() / "language_table" / "0.0.1"
    builder = tfds.builder_from_directory(str(path))
    assert (builder.info.name, str(builder.info.version)) == ("language_table", "0.0.1")
    f = tfds.features
    published = f.FeaturesDict({"steps": f.Dataset({
        "observation": f.FeaturesDict({
            "rgb": f.Image(shape=(360, 640, 3), dtype=np.uint8, encoding_format="jpeg"),
            "effector_translation": f.Tensor(shape=(2,), dtype=np.float32),
            "effector_target_translation": f.Tensor(shape=(2,), dtype=np.float32),
            "instruction": f.Tensor(shape=(512,), dtype=np.int32),
        }),
        "action": f.Tensor(shape=(2,), dtype=np.float32),
        "reward": f.Scalar(dtype=np.float32),
        "is_first": f.Scalar(dtype=np.bool_),
        "is_last": f.Scalar(dtype=np.bool_),
        "is_terminal": f.Scalar(dtype=np.bool_),
    })})
    assert builder.info.features.to_json() == published.to_json()
    assert lt.schema_problems(builder.info.features) == []
    full = list(lt.read_languagetable(path))
    assert [e.observations["rgb"].shape for e in full] == [(2, 360, 640, 3)] * 2
    small = list(lt.read_languagetable(path, image_size=(90, 160)))
    assert [e.observations["rgb"].shape for e in small] == [(2, 90, 160, 3)] * 2
    assert [e.instruction for e in small] == list(lt.FIXTURE_INSTRUCTIONS[:2])


# ----------------------------------------------------------------------------- errors


def _edit_features(path: Path, edit: Any) -> None:
    doc = json.loads((path / "features.json").read_text())
    step = doc["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]
    edit(step["features"])
    (path / "features.json").write_text(json.dumps(doc))


def test_schema_mismatch_names_the_path_and_every_problem(small: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(small, bad)

    def edit(step: dict[str, Any]) -> None:
        obs = step["observation"]["featuresDict"]["features"]
        obs["instruction"]["tensor"]["dtype"] = "int64"
        del obs["effector_target_translation"]
        step["action"]["tensor"]["shape"]["dimensions"] = ["7"]

    _edit_features(bad, edit)
    with pytest.raises(DatasetError) as err:
        lt.read_languagetable(bad)  # checked on the call, before any episode is read
    message = str(err.value)
    assert str(bad) in message and "not a LanguageTable dataset" in message
    assert "steps/observation/instruction is Tensor int64[512], expected Tensor int32[512]" \
        in message
    assert "missing steps/observation/effector_target_translation" in message
    assert "steps/action is Tensor float32[7], expected Tensor float32[2]" in message


def test_other_datasets_splits_and_arguments_are_rejected(small: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        lt.read_languagetable(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="datasets found below it"):
        lt.read_languagetable(small.parent)  # the name directory, not the version
    ep = Episode(observations={"position": np.zeros((3, 2), np.float32)},
                 actions=np.zeros((2, 2), np.float32), instruction="go", episode_id="e")
    rlds_io.write_episodes([ep], tmp_path / "efm")
    with pytest.raises(DatasetError, match=r"not a LanguageTable dataset: missing "
                                           r"steps/observation/rgb"):
        lt.read_languagetable(tmp_path / "efm")
    with pytest.raises(DatasetError, match="no split 'test'"):
        lt.read_languagetable(small, split="test")
    with pytest.raises(ValueError, match="image_size"):
        lt.read_languagetable(small, image_size=(0, 32))
    with pytest.raises(ValueError, match="limit"):
        lt.read_languagetable(small, limit=-1)


def _steps(n: int, *, terminal: bool, reward_at: int | None, last: bool = True
           ) -> dict[str, Any]:
    reward = np.zeros(n, np.float32)
    if reward_at is not None:
        reward[reward_at] = 1.0
    is_last = np.arange(n) == n - 1
    return {"observation": {"rgb": np.zeros((n, 2, 2, 3), np.uint8),
                            "effector_translation": np.zeros((n, 2), np.float32),
                            "effector_target_translation": np.zeros((n, 2), np.float32),
                            "instruction": np.stack([lt.encode_instruction(TEXT)] * n)},
            "action": np.zeros((n, 2), np.float32), "reward": reward,
            "is_first": np.arange(n) == 0, "is_last": is_last & last,
            "is_terminal": is_last & terminal}


def test_success_is_terminal_or_a_final_reward() -> None:
    def success(**kw: Any) -> bool:
        return lt._to_episode(_steps(4, **kw), "e").success

    assert success(terminal=True, reward_at=None)
    assert success(terminal=False, reward_at=2)  # RLDS: the final transition's reward
    assert success(terminal=False, reward_at=3)  # this project's layout: the last step
    assert not success(terminal=False, reward_at=1)  # reached earlier, but did not end there
    assert not success(terminal=False, reward_at=None)
    with pytest.raises(DatasetError, match="last step is not is_last"):
        lt._to_episode(_steps(4, terminal=False, reward_at=None, last=False), "e")


def test_import_reads_a_gs_uri_whole(small: Path, fake_gcs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """LanguageTable lives on GCS: `efm data import-languagetable gs://...` keeps the URI whole
    through the CLI, the reader's checks and the recorded source (pathlib: gs:/...)."""
    from efm.cli import main

    shutil.copytree(small, fake_gcs / "language_table" / "0.0.1")
    uri, loaded = "gs://bucket/language_table/0.0.1", []
    load_rlds = rlds_io.load_rlds

    def load_local(directory: Any, split: str) -> tf.data.Dataset:  # TF's readers cannot reach the fake bucket
        loaded.append(os.fspath(directory))
        return load_rlds(os.fspath(directory).replace("gs://bucket", str(fake_gcs)), split)

    monkeypatch.setattr(rlds_io, "load_rlds", load_local)
    out = tmp_path / "imported"
    assert main(["data", "import-languagetable", uri, "--out", str(out), "--image-size", "18", "32"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 3
    assert loaded == [uri]
    assert rlds_io.read_metadata(out)["source"]["path"] == uri


def test_import_converts_to_project_rlds_for_the_pipeline(small: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from efm.cli import main
    from efm.data import subsample

    out = tmp_path / "imported"
    assert main(["data", "import-languagetable", str(small), "--out", str(out), "--image-size", "18", "32"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats.pop("clipped")["action"]["values"] == 0  # the import reports what it clipped
    assert stats == {"episodes": 3, "steps": sum(LENGTHS) - 3, "successes": 2, "success_rate": 2 / 3}
    source, imported = list(lt.read_languagetable(small)), rlds_io.read_episodes(out)
    assert [e.instruction for e in imported] == [e.instruction for e in source]
    for a, b in zip(imported, source, strict=True):
        np.testing.assert_allclose(a.actions, np.clip(b.actions / lt.MAX_ACTION, -1, 1), rtol=1e-6)
        assert a.observations["rgb"].shape == (b.length + 1, 18, 32, 3)
    meta = rlds_io.read_metadata(out)
    assert meta["source"]["action_scale"] == pytest.approx(10.0) and meta["stats"]["episodes"] == 3
    manifest = subsample.subsample_dataset(out, tmp_path / "sub", (0.5,), 1, seed=0)  # the pipeline's next step
    assert manifest["validation"]["count"] == 1
    assert main(["data", "import-languagetable", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "LanguageTable dataset not found" in capsys.readouterr().err


def test_stage1_refuses_the_raw_episodes_and_names_the_import(small: Path) -> None:
    """Raw LanguageTable holds its instructions as codes in the observations, where Stage 1
    does not look: a clear error before training, not a KeyError while tf.data traces."""
    from efm.config import debug_config
    from efm.data.stage1 import Stage1Data

    with pytest.raises(DatasetError, match=r"no instruction .* `efm data import-languagetable`"):
        Stage1Data(debug_config("tabletop")).check(small)
