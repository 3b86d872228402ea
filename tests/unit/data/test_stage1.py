"""Stage-1 samples streamed through tf.data: equal to the episodes they come from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from efm.config import OBJECTIVES, STAGE1_OBJECTIVES, RunConfig, debug_config
from efm.data import rlds
from efm.data.features import input_spec
from efm.data.stage1 import Stage1Data
from efm.envs.base import Episode
from efm.models.efm import GROUND_MASK, GROUND_RC
from efm.models.prefix_lm import IMAGE, STATE, TEXT
from efm.models.tokenizers import make_vocabulary


def table_episode(t: int, seed: int, success: bool = True) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        observations={"rgb": rng.integers(0, 256, (t + 1, 12, 16, 3)).astype(np.uint8),
                      "effector_translation": rng.normal(size=(t + 1, 2)).astype(np.float32),
                      "block_translation": rng.normal(size=(t + 1, 16, 2)).astype(np.float32)},
        actions=rng.uniform(-1, 1, (t, 2)).astype(np.float32),
        instruction=f"push the red moon to the blue cube {seed}",
        success=success, episode_id=f"ep-{seed}")


def point_episode(t: int, seed: int, success: bool = True) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(observations={"position": rng.normal(size=(t + 1, 2)).astype(np.float32)},
                   actions=rng.uniform(-1, 1, (t, 2)).astype(np.float32), instruction="reach",
                   goal={"target": rng.normal(size=2).astype(np.float32)}, success=success,
                   episode_id=f"ep-{seed}")


TABLE = [table_episode(3, 0), table_episode(5, 1, success=False), table_episode(1, 2), table_episode(4, 3)]
POINT = [point_episode(6, 0), point_episode(2, 1, success=False), point_episode(4, 2)]


def table_config() -> RunConfig:
    cfg = debug_config("tabletop")
    return cfg.replace(sft=dataclasses.replace(cfg.sft, validation_batch_size=5, batch_size=6, shuffle_buffer=50))


def expected(episodes: list[Episode], cfg: RunConfig, objective: str) -> dict[str, np.ndarray]:
    """The in-memory construction: every sample of an objective, in episode order."""
    vocab = make_vocabulary(cfg.tokenizer)
    spec = input_spec(vocab)
    if objective == "instruction":
        inputs = spec.first_last_inputs(episodes)
        targets, mask = vocab.instruction_targets(vocab.text.encode([e.instruction for e in episodes]))
        return {**inputs, "targets": targets, "target_mask": mask}
    used = episodes if objective == "bc" else [e for e in episodes if e.success]
    parts = [spec.episode_inputs(e) for e in used]
    if objective == "bc":
        parts = [{k: v[:-1] for k, v in p.items()} for p in parts]
        targets = vocab.action_targets(np.concatenate([e.actions for e in used]))
    else:
        targets = vocab.steps_to_go_targets(np.concatenate([np.arange(e.length, -1, -1) for e in used]))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    length = vocab.max_target_length
    padded = np.zeros((len(targets), length), np.int32)
    padded[:, : targets.shape[1]] = targets
    mask = np.zeros_like(padded, np.float32)
    mask[:, : targets.shape[1]] = 1
    return {**out, "targets": padded, "target_mask": mask}


def streamed(directory: Path, cfg: RunConfig, objective: str) -> dict[str, np.ndarray]:
    batches = list(Stage1Data(cfg).validation(directory, objective))
    return {k.removeprefix("inputs/"): np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rlds.write_episodes(TABLE, tmp_path_factory.mktemp("table") / "ds")


@pytest.fixture(scope="module")
def point_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rlds.write_episodes(POINT, tmp_path_factory.mktemp("point") / "ds")


@pytest.mark.parametrize("objective", STAGE1_OBJECTIVES)
def test_streamed_table_samples_equal_in_memory_ones(table_dir: Path, objective: str) -> None:
    cfg = table_config()
    got, want = streamed(table_dir, cfg, objective), expected(TABLE, cfg, objective)
    assert set(got) == set(want) | {"objective"}
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert (got["objective"] == OBJECTIVES.index(objective)).all()


def test_frame_pairs_and_no_privileged_state(table_dir: Path) -> None:
    got = streamed(table_dir, table_config(), "bc")
    assert set(got) == {IMAGE, TEXT, STATE, "targets", "target_mask", "objective"}  # no block poses
    effector = TABLE[0].observations["effector_translation"][:3]
    np.testing.assert_array_equal(got[STATE][:3], make_vocabulary(table_config().tokenizer).state.encode(effector))
    frames = TABLE[0].observations["rgb"]
    np.testing.assert_array_equal(got[IMAGE][0], np.stack([frames[0], frames[0]]))  # t = 0: previous = first
    np.testing.assert_array_equal(got[IMAGE][2], np.stack([frames[2], frames[1]]))


def with_state_tokens(cfg: RunConfig) -> RunConfig:
    """A transformer-decoder state model that also reads the position as input tokens."""
    tok = dataclasses.replace(cfg.tokenizer, state_key="position", state_low=(-3.0, -3.0), state_high=(3.0, 3.0))
    return cfg.replace(tokenizer=tok, model=dataclasses.replace(cfg.model, variant="mlp-tx-tiny"))


@pytest.mark.parametrize("state_tokens", [False, True])
@pytest.mark.parametrize("objective", ["bc", "steps_to_go"])
def test_streamed_state_samples_equal_in_memory_ones(point_dir: Path, objective: str, state_tokens: bool) -> None:
    cfg = with_state_tokens(debug_config()) if state_tokens else debug_config()
    got, want = streamed(point_dir, cfg, objective), expected(POINT, cfg, objective)
    assert (STATE in want) == state_tokens and set(got) == set(want) | {"objective"}
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    if state_tokens:  # the tokens of the very positions the arrays hold
        np.testing.assert_array_equal(want[STATE], make_vocabulary(cfg.tokenizer).state.encode(
            want["observation/position"]))


def test_a_state_model_gets_camera_observations_decoded(tmp_path: Path) -> None:
    """A state model reads every observation array, camera frames as uint8 images (as its actor
    gives them), not the stored PNG bytes; in validation and in training batches."""
    def with_camera(e: Episode, seed: int) -> Episode:
        rng = np.random.default_rng(seed)
        frames = rng.integers(0, 256, (e.length + 1, 6, 8, 3)).astype(np.uint8)
        return dataclasses.replace(e, observations={**e.observations, "rgb": frames})

    episodes = [with_camera(e, i) for i, e in enumerate(POINT)]
    directory = rlds.write_episodes(episodes, tmp_path / "ds")
    base = debug_config()  # a small shuffle buffer: 20,000 samples of 3 episodes took minutes to fill
    cfg = base.replace(sft=dataclasses.replace(base.sft, shuffle_buffer=50))
    for objective in ("bc", "steps_to_go"):
        got, want = streamed(directory, cfg, objective), expected(episodes, cfg, objective)
        assert want["observation/rgb"].dtype == np.uint8 and want["observation/rgb"].shape[1:] == (6, 8, 3)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{objective} {k}")
    batch = next(Stage1Data(cfg).training(directory, seed=0))
    assert batch["inputs/observation/rgb"].dtype == np.uint8 and batch["inputs/observation/rgb"].shape[1:] == (6, 8, 3)


def test_training_batches_split_objectives_shuffle_and_resume(table_dir: Path) -> None:
    cfg = table_config()
    data = Stage1Data(cfg)
    stream = data.training(table_dir, seed=3)
    first = [next(stream) for _ in range(6)]
    for b in first:
        counts = np.bincount(b["objective"], minlength=3)
        np.testing.assert_array_equal(counts, [2, 2, 2])  # batch_size / 3 objectives each
    again = Stage1Data(cfg).training(table_dir, seed=3, start_step=4)
    for want in first[4:]:
        got = next(again)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    other = next(Stage1Data(cfg).training(table_dir, seed=4))
    assert not np.array_equal(other[f"inputs/{IMAGE}"], first[0][f"inputs/{IMAGE}"])
    # Every training sample is a real sample: its frame pair appears among the objective's samples.
    bc = expected(TABLE, cfg, "bc")
    pairs = {bc[IMAGE][i].tobytes() for i in range(len(bc[IMAGE]))}
    for b in first:
        for img in b[f"inputs/{IMAGE}"][b["objective"] == 0]:
            assert img.tobytes() in pairs


def test_a_dataset_without_frames_is_refused_by_the_vision_language_model(point_dir: Path) -> None:
    with pytest.raises(rlds.DatasetError, match="camera frames 'rgb'"):
        Stage1Data(table_config()).check(point_dir)


def test_a_dataset_without_a_success_is_refused_before_training(tmp_path: Path) -> None:
    """Steps-to-go is learnt from successful episodes only: with none, training would wait
    forever for a sample, so the check says so instead."""
    failures = rlds.write_episodes([point_episode(3, 0, success=False), point_episode(2, 1, success=False)],
                                   tmp_path / "ds")
    with pytest.raises(rlds.DatasetError, match=r"nothing to learn steps_to_go from \(no successful episode\)"):
        Stage1Data(debug_config()).check(failures)


def test_a_host_whose_shard_holds_no_success_is_refused_before_training(tmp_path: Path) -> None:
    """On a multi-host slice each process reads its shard of the episodes: the whole dataset
    may hold a success while one host's shard holds none (that host would wait forever)."""
    one = rlds.write_episodes([point_episode(3, 0), point_episode(2, 1, success=False)], tmp_path / "ds")
    data = Stage1Data(debug_config())
    data.check(one)
    data.check(one, shard=(2, 0))
    with pytest.raises(rlds.DatasetError, match=r"in shard 1 of 2 \(this host's\): nothing to learn steps_to_go"):
        data.check(one, shard=(2, 1))


def aloha_episode(t: int, seed: int) -> Episode:
    """Aloha as the vision-language model reads it: two stacked camera images and 14 joints."""
    rng = np.random.default_rng(seed)
    return Episode(
        observations={"rgb": rng.integers(0, 256, (t + 1, 10, 8, 3)).astype(np.uint8),
                      "rgb_wrist": rng.integers(0, 256, (t + 1, 10, 8, 3)).astype(np.uint8),
                      "joints": rng.uniform(-1, 1, (t + 1, 14)).astype(np.float32)},
        actions=rng.uniform(-1, 1, (t, 70)).astype(np.float32),
        instruction="insert the red peg into the blue socket", success=True, episode_id=f"ep-{seed}")


ALOHA = [aloha_episode(3, 0), aloha_episode(2, 1)]


def aloha_config() -> RunConfig:
    from efm.config import aloha_camera_config

    cfg = aloha_camera_config(debug_config("aloha-insertion"))
    return cfg.replace(sft=dataclasses.replace(cfg.sft, validation_batch_size=3))


def test_two_cameras_give_four_frames_in_order() -> None:
    """Aloha's two stacked images: each camera's current and previous frame, camera after camera."""
    spec = input_spec(make_vocabulary(aloha_config().tokenizer))
    assert spec.cameras == ("rgb", "rgb_wrist")
    e = ALOHA[0]
    got = spec.episode_inputs(e)
    assert got[IMAGE].shape == (4, 4, 10, 8, 3) and got[STATE].shape == (4, 14) and got[TEXT].shape == (4, 8)
    rgb, wrist = e.observations["rgb"], e.observations["rgb_wrist"]
    np.testing.assert_array_equal(got[IMAGE][2], np.stack([rgb[2], rgb[1], wrist[2], wrist[1]]))
    np.testing.assert_array_equal(got[IMAGE][0], np.stack([rgb[0], rgb[0], wrist[0], wrist[0]]))
    np.testing.assert_array_equal(got[STATE], spec.state.encode(e.observations["joints"]))
    np.testing.assert_array_equal(spec.first_last_inputs(ALOHA)[IMAGE][1],
                                  np.stack([ALOHA[1].observations[k][i] for k in ("rgb", "rgb_wrist") for i in (0, -1)]))
    odd = {**e.observations, "rgb_wrist": e.observations["rgb_wrist"][:, :6]}
    with pytest.raises(ValueError, match="different shapes"):
        spec.inputs({k: v[:1] for k, v in odd.items()}, None, {}, ["x"])
    with pytest.raises(KeyError, match="rgb_wrist"):
        spec.inputs({"rgb": rgb[:1]}, None, {}, ["x"])


@pytest.mark.parametrize("objective", ["bc", "steps_to_go"])
def test_streamed_two_camera_samples_equal_in_memory_ones(tmp_path: Path, objective: str) -> None:
    directory = rlds.write_episodes(ALOHA, tmp_path / "ds")
    cfg = aloha_config()
    got, want = streamed(directory, cfg, objective), expected(ALOHA, cfg, objective)
    assert set(got) == set(want) | {"objective"} and got[IMAGE].shape[1:] == (4, 10, 8, 3)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    missing = rlds.write_episodes([dataclasses.replace(e, observations={k: v for k, v in e.observations.items()
                                                                       if k != "rgb_wrist"}) for e in ALOHA],
                                  tmp_path / "one_camera")
    with pytest.raises(rlds.DatasetError, match="camera frames 'rgb_wrist'"):
        Stage1Data(cfg).check(missing)


def test_robot_data_refuses_the_pretraining_objective(table_dir: Path) -> None:
    cfg = table_config()
    with pytest.raises(ValueError, match="efm pretrain"):
        next(Stage1Data(cfg).validation(table_dir, "locate"))


def grounded_config() -> RunConfig:
    cfg = table_config()
    return cfg.replace(sft=dataclasses.replace(cfg.sft, grounding_weight=1.0))


def test_grounding_targets_put_the_instruction_block_names_at_their_blocks(table_dir: Path) -> None:
    """sft.grounding_weight: each block name of the instruction is supervised to where that
    block is in the sample's current frame (from the step's privileged positions, which stay
    out of the model's inputs); the instruction objective, whose text is hidden, gets none."""
    from efm.envs.tabletop import BLOCK_HALF_HEIGHT, BLOCKS, image_position

    cfg = grounded_config()
    batch = next(Stage1Data(cfg).training(table_dir, seed=0))
    assert not any("block" in k for k in batch)  # the positions became targets, not inputs
    frames = {ep.observations["rgb"][t].tobytes(): (ep, t) for ep in TABLE for t in range(ep.length + 1)}
    for i, objective in enumerate(batch["objective"]):
        mask = batch[GROUND_MASK][i]
        if objective == OBJECTIVES.index("instruction"):
            assert mask.sum() == 0
            continue
        ep, t = frames[batch[f"inputs/{IMAGE}"][i, 0].tobytes()]
        # "push the red moon to the blue cube 3": one token per word, the names are words 2-3 and 6-7
        np.testing.assert_array_equal(np.flatnonzero(mask), [2, 3, 6, 7])
        blocks = ep.observations["block_translation"][t][[BLOCKS.index("red_moon"), BLOCKS.index("blue_cube")]]
        points = np.concatenate([blocks, np.full((2, 1), BLOCK_HALF_HEIGHT)], axis=1)
        where = np.repeat(image_position(points, 16 / 12), 2, axis=0)  # two tokens per name
        np.testing.assert_allclose(batch[GROUND_RC][i][mask > 0], where, atol=1e-5)


def test_grounding_needs_the_block_positions(tmp_path: Path) -> None:
    ep = table_episode(3, 0)
    blind = dataclasses.replace(ep, observations={k: v for k, v in ep.observations.items() if k != "block_translation"})
    directory = rlds.write_episodes([blind], tmp_path / "ds")
    Stage1Data(table_config()).check(directory)  # without grounding, nothing privileged is read
    with pytest.raises(rlds.DatasetError, match="block_translation"):
        Stage1Data(grounded_config()).check(directory)


def test_the_block_positions_key_is_the_simulators() -> None:
    from efm.data.stage1 import BLOCK_POSITIONS
    from efm.envs.tabletop import BLOCK_TRANSLATION

    assert BLOCK_POSITIONS == BLOCK_TRANSLATION
