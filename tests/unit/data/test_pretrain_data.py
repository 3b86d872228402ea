"""Pretraining questions rendered from the table: answers, determinism, validation boards."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from efm.config import OBJECTIVES, PretrainConfig, RunConfig, debug_config
from efm.data.grounding import EFFECTOR, object_points
from efm.data.pretrain import TableQuestions, board_questions
from efm.envs.tabletop.geometry import BLOCKS
from efm.envs.tabletop.scene import image_position
from efm.models.prefix_lm import IMAGE, STATE, TEXT
from efm.models.tokenizers import make_vocabulary


def pretrain_config() -> RunConfig:
    return debug_config("tabletop").replace(
        pretrain=PretrainConfig(num_steps=4, batch_size=8, questions_per_scene=4, validation_scenes=3))


@pytest.fixture(scope="module")
def questions() -> TableQuestions:
    cfg = pretrain_config()
    data = TableQuestions(cfg, make_vocabulary(cfg.tokenizer))
    yield data
    data.close()


def board() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    blocks = ("red_moon", "blue_cube")
    block_xy = np.zeros((len(BLOCKS), 2), np.float32)
    block_xy[BLOCKS.index("red_moon")] = (0.3, -0.1)
    block_xy[BLOCKS.index("blue_cube")] = (0.5, 0.2)
    return blocks, block_xy, np.array([0.2, 0.0], np.float32)


def test_board_questions_name_each_object_once_with_its_position() -> None:
    blocks, block_xy, effector = board()
    out = board_questions(blocks, block_xy, effector, [1, 1, 1], np.random.default_rng(0))
    assert sorted(q.objects[0] for q in out) == sorted([*blocks, EFFECTOR])
    for (name,), question, xy, _ in out:
        if name == EFFECTOR:
            np.testing.assert_array_equal(xy, effector[None])
            assert any(w in question for w in ("arm", "effector"))
        else:
            np.testing.assert_array_equal(xy, block_xy[BLOCKS.index(name)][None])
            assert name.replace("_", " ") in question


def test_questions_naming_several_objects_answer_in_their_order() -> None:
    blocks, block_xy, effector = board()
    position = {"red_moon": (0.3, -0.1), "blue_cube": (0.5, 0.2), EFFECTOR: (0.2, 0.0)}
    for objects, question, xy, _ in board_questions(blocks, block_xy, effector, [2, 2, 2, 2],
                                                    np.random.default_rng(1)):
        assert len(set(objects)) == 2 and xy.shape == (2, 2)
        np.testing.assert_allclose(xy, [position[o] for o in objects])
        words = question.split(" ")
        first = objects[0].replace("_", " ") if objects[0] != EFFECTOR else None
        if first is not None:
            assert " ".join(words[:2]) == first  # named in the order answered


def test_batches_answer_in_position_tokens_of_the_true_positions(questions: TableQuestions) -> None:
    cfg = pretrain_config()
    vocab = make_vocabulary(cfg.tokenizer)
    batch = next(questions.training(seed=0))
    n = cfg.pretrain.batch_size
    assert batch[f"inputs/{IMAGE}"].shape == (n, 2, cfg.env.tabletop.image_height, cfg.env.tabletop.image_width, 3)
    np.testing.assert_array_equal(batch[f"inputs/{IMAGE}"][:, 0], batch[f"inputs/{IMAGE}"][:, 1])
    assert (batch[f"inputs/{STATE}"] == 0).all()  # the effector's position would give answers away
    assert (batch["objective"] == OBJECTIVES.index("locate")).all()
    assert (batch["target_mask"].sum(axis=1) == 2).all()
    valid = vocab.valid_tokens("locate")
    assert valid[np.arange(2), batch["targets"][:, :2]].all()
    # the validation rows' tokens decode to within half a bin of the true positions
    half_bin = (np.subtract(cfg.tokenizer.state_high, cfg.tokenizer.state_low)) / (cfg.tokenizer.state_bins - 1) / 2
    val = list(questions.validation())
    answers = questions.validation_answers()
    targets = np.concatenate([b["targets"][:, :2] for b in val])
    assert len(targets) == len(answers) == 5 * cfg.pretrain.validation_scenes
    error = np.abs(vocab.position_from_tokens(targets) - np.concatenate([xy for _, xy in answers]))
    assert (error <= half_bin + 1e-6).all()
    texts = vocab.text.decode(np.concatenate([b[f"inputs/{TEXT}"] for b in val]))
    for text, ((name,), _) in zip(texts, answers, strict=True):
        assert (name.replace("_", " ") in text) if name != EFFECTOR else ("arm" in text or "effector" in text)


def test_validation_covers_every_object_of_each_board_in_multi_object_questions() -> None:
    cfg = pretrain_config()
    cfg = cfg.replace(pretrain=dataclasses.replace(cfg.pretrain, objects_per_question=2))
    vocab = make_vocabulary(cfg.tokenizer)
    data = TableQuestions(cfg, vocab)
    try:
        answers = data.validation_answers()
        batches = list(data.validation())
    finally:
        data.close()
    assert [len(o) for o, _ in answers] == [2, 2, 1] * cfg.pretrain.validation_scenes  # 5 objects a board
    for k in range(cfg.pretrain.validation_scenes):
        named = [n for o, _ in answers[3 * k:3 * k + 3] for n in o]
        assert len(set(named)) == 5 and EFFECTOR in named
    masks = np.concatenate([b["target_mask"] for b in batches])
    np.testing.assert_array_equal(masks.sum(axis=1), [4, 4, 2] * cfg.pretrain.validation_scenes)
    targets = np.concatenate([b["targets"] for b in batches])
    np.testing.assert_array_equal(targets[0, :4], vocab.position_targets(answers[0][1]).reshape(-1))


def test_stream_is_deterministic_and_resumes_at_a_step(questions: TableQuestions) -> None:
    first = list(itertools.islice(questions.training(seed=3), 3))
    again = next(questions.training(seed=3, start_step=2))
    for k in first[2]:
        np.testing.assert_array_equal(first[2][k], again[k])
    assert not np.array_equal(first[0][f"inputs/{IMAGE}"], first[1][f"inputs/{IMAGE}"])  # new boards each step
    val = next(questions.validation())
    train_frames = {f.tobytes() for b in first for f in b[f"inputs/{IMAGE}"][:, 0]}
    assert not train_frames & {f.tobytes() for f in val[f"inputs/{IMAGE}"][:, 0]}


def test_hosts_get_disjoint_halves(questions: TableQuestions) -> None:
    a = next(questions.training(seed=0, shard=(2, 0)))
    b = next(questions.training(seed=0, shard=(2, 1)))
    assert len(a["objective"]) == len(b["objective"]) == pretrain_config().pretrain.batch_size // 2
    assert not {f.tobytes() for f in a[f"inputs/{IMAGE}"][:, 0]} & {f.tobytes() for f in b[f"inputs/{IMAGE}"][:, 0]}


def test_refuses_a_tokenizer_without_position_tokens() -> None:
    cfg = pretrain_config()
    cfg = cfg.replace(tokenizer=dataclasses.replace(cfg.tokenizer, state_key="", state_low=(), state_high=()))
    with pytest.raises(ValueError, match="state_key"):
        TableQuestions(cfg, make_vocabulary(cfg.tokenizer))


def test_batches_made_ahead_in_order_errors_raised_and_thread_stopped() -> None:
    import threading

    from efm.data.pretrain import _ahead

    def make(step: int) -> dict:
        if step == 4:
            raise RuntimeError("board 4 failed")
        return {"step": np.array([step])}

    it = _ahead(make, 1)
    assert [int(next(it)["step"][0]) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(RuntimeError, match="board 4"):
        next(it)
    it = _ahead(make, 0)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name == "pretrain-render"]


def test_name_tokens_carry_the_position_of_what_they_name() -> None:
    """The grounding loss's targets: each token of an object's name (and only those) has that
    object's position, for one-object questions and for lists of names."""
    from efm.data.pretrain import name_tokens

    cfg = pretrain_config()
    text = make_vocabulary(cfg.tokenizer).text
    blocks, block_xy, effector = board()
    for sizes in ([1, 1, 1], [3], [2, 1]):
        for q in board_questions(blocks, block_xy, effector, sizes, np.random.default_rng(2)):
            owner = name_tokens(text, q)
            tokens = text.encode([q.text])[0]
            for i, (start, end) in enumerate(q.spans):
                assert text.decode(tokens[owner == i][None])[0].strip() == q.text[start:end]
            assert (owner[tokens == 0] == -1).all()
    question = board_questions(blocks, block_xy, effector, [3], np.random.default_rng(2))[0]
    assert question.text == " ".join(question.text[s:e] for s, e in question.spans)


def test_batches_carry_grounding_targets(questions: TableQuestions) -> None:
    from efm.models.efm import GROUND_MASK, GROUND_RC

    batch = next(questions.training(seed=0))
    answers = questions.validation_answers()
    assert batch[GROUND_MASK].shape == batch[f"inputs/{TEXT}"].shape and batch[GROUND_MASK].sum(1).min() >= 1
    val = next(questions.validation())
    h, w = val[f"inputs/{IMAGE}"].shape[2:4]
    for row, (objects, xy) in enumerate(answers[:len(val["objective"])]):
        named = val[GROUND_MASK][row] > 0
        got = {tuple(np.round(p, 5)) for p in val[GROUND_RC][row][named]}
        where = image_position(object_points(objects, xy), w / h)  # in the image, where each object is
        assert got == {tuple(np.round(p, 5)) for p in where}  # every named object, nothing else
