"""Pretraining samples rendered from the table simulator: image-text pairs without actions.

A sample is a camera frame of a random board and a question, "where is the red moon" (or the
effector), whose answer is the object's board position in the model's position tokens
(`Vocabulary.position_targets`, the tokens the model reads the effector in). The paper starts
from PaLI, pretrained on web image-text data; nothing can be downloaded here, so the towers
learn to see the table from the simulator instead, with no action labels.

Boards come from the tabletop env's reset (4 of the 16 blocks, the effector anywhere clear).
Board k of a stream is a pure function of (seed, k): a resumed run renders exactly the batches
an uninterrupted one would, and the validation boards (their own range of k) are never
trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from efm.config import OBJECTIVES, RunConfig
from efm.envs.tabletop.env import TabletopEnv
from efm.envs.tabletop.geometry import BLOCK_TRANSLATION, BLOCKS, EFFECTOR_TRANSLATION, RGB
from efm.models.tokenizers import Vocabulary
from efm.models.vlm import IMAGE, STATE, TEXT

Batch = dict[str, np.ndarray]
BLOCK_QUESTIONS = ("where is the {}", "find the {}", "locate the {}", "{}")
EFFECTOR_NAMES = ("arm", "effector", "robot arm", "end effector")
EFFECTOR = "effector"
VALIDATION_BOARDS = 10**12  # board ids from here on are validation boards


def board_questions(blocks: Sequence[str], block_xy: np.ndarray, effector_xy: np.ndarray, count: int,
                    rng: np.random.Generator) -> list[tuple[str, str, np.ndarray]]:
    """`count` of a board's objects (its blocks and the effector), each as (object, question,
    answer position [2]). Pure given the rng."""
    objects = [*blocks, EFFECTOR]
    out = []
    for i in rng.choice(len(objects), size=count, replace=False):
        name = objects[int(i)]
        if name == EFFECTOR:
            phrase, xy = EFFECTOR_NAMES[rng.integers(len(EFFECTOR_NAMES))], effector_xy
        else:
            phrase, xy = name.replace("_", " "), block_xy[BLOCKS.index(name)]
        question = BLOCK_QUESTIONS[rng.integers(len(BLOCK_QUESTIONS))].format(phrase)
        out.append((name, question, np.asarray(xy, np.float32)))
    return out


class TableQuestions:
    """`efm.sft.trainer.Samples` for pretraining: endless rendered batches and a fixed
    validation set, in Stage 1's batch layout (objective `locate`)."""

    def __init__(self, cfg: RunConfig, vocab: Vocabulary):
        if vocab.text is None or vocab.state is None or vocab.state.key != EFFECTOR_TRANSLATION:
            raise ValueError("pretraining asks questions in text and answers in the position tokens of the "
                             f"effector: it needs tokenizer.text_tokens > 0 and tokenizer.state_key="
                             f"{EFFECTOR_TRANSLATION!r} (have {cfg.tokenizer.text_tokens} and "
                             f"{cfg.tokenizer.state_key!r})")
        if tuple(vocab.cameras) != (RGB,):
            raise ValueError(f"pretraining renders the table's one camera {RGB!r}; the tokenizer reads {vocab.cameras}")
        self._cfg, self._vocab = cfg.pretrain, vocab
        self._per_board = cfg.pretrain.questions_per_scene
        table = dataclasses.replace(cfg.env.tabletop, render_images=True, state_observation=True)
        self._env = TabletopEnv(dataclasses.replace(cfg.env, tabletop=table),
                                cfg.pretrain.batch_size // self._per_board, seed=cfg.pretrain.seed)
        self._validation: list[tuple[Batch, list[tuple[str, np.ndarray]]]] | None = None

    def close(self) -> None:
        self._env.close()

    def _render(self, boards: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, ...]]]:
        """Frames [n, H, W, 3], block positions [n, 16, 2], effector [n, 2] and block names of
        boards with these ids (rendered `num_envs` at a time)."""
        frames, blocks, effector, names = [], [], [], []
        n = self._env.num_envs
        for start in range(0, len(boards), n):
            ids = np.asarray(boards[start:start + n])
            mask = np.zeros(n, bool)
            mask[: len(ids)] = True
            tasks = np.zeros(n, np.int64)
            tasks[: len(ids)] = ids
            obs = self._env.reset(mask, tasks).observation
            frames.append(obs[RGB][: len(ids)])
            blocks.append(obs[BLOCK_TRANSLATION][: len(ids)])
            effector.append(obs[EFFECTOR_TRANSLATION][: len(ids)])
            names.extend(self._env.blocks_on_board[: len(ids)])
        return np.concatenate(frames), np.concatenate(blocks), np.concatenate(effector), names

    def _batch(self, boards: Sequence[int], per_board: int, rng: np.random.Generator,
               ) -> tuple[Batch, list[tuple[str, np.ndarray]]]:
        """One batch of `per_board` questions about each board, and (object, position) per row."""
        vocab = self._vocab
        assert vocab.text is not None and vocab.state is not None
        frames, blocks, effector, names = self._render(boards)
        images, questions, answers = [], [], []
        for j in range(len(boards)):
            for obj, question, xy in board_questions(names[j], blocks[j], effector[j], per_board, rng):
                images.append(frames[j])
                questions.append(question)
                answers.append((obj, xy))
        n, dims = len(questions), vocab.state.dims
        image = np.stack(images)
        targets = np.zeros((n, vocab.max_target_length), np.int32)
        mask = np.zeros((n, vocab.max_target_length), np.float32)
        targets[:, :dims] = vocab.position_targets(np.stack([xy for _, xy in answers]))
        mask[:, :dims] = 1.0
        batch = {f"inputs/{IMAGE}": np.stack([image, image], axis=1),  # the board is still: now = before
                 f"inputs/{TEXT}": vocab.text.encode(questions),
                 f"inputs/{STATE}": np.zeros((n, dims), np.int32),  # 0: no state (locate reads none)
                 "targets": targets, "target_mask": mask,
                 "objective": np.full(n, OBJECTIVES.index("locate"), np.int32)}
        return batch, answers

    def training(self, *, seed: int, start_step: int = 0, shard: tuple[int, int] = (1, 0)) -> Iterator[Batch]:
        """Endless batches of `pretrain.batch_size / shard count` questions; batch s is the same
        for a seed whenever it is made."""
        per_host = self._env.num_envs // shard[0]
        step = start_step
        while True:
            first = (step * shard[0] + shard[1]) * per_host
            rng = np.random.default_rng([seed, step, shard[1]])
            yield self._batch(range(first, first + per_host), self._per_board, rng)[0]
            step += 1

    def validation(self, objective: str = "locate") -> Iterator[Batch]:
        """Every question about each validation board (its blocks and the effector), once."""
        if objective != "locate":
            raise ValueError(f"pretraining data has only the locate objective, not {objective!r}")
        for batch, _ in self._validation_batches():
            yield batch

    def validation_answers(self) -> list[tuple[str, np.ndarray]]:
        """(object, true position) of each validation row, in validation()'s order."""
        return [a for _, answers in self._validation_batches() for a in answers]

    def _validation_batches(self) -> list[tuple[Batch, list[tuple[str, np.ndarray]]]]:
        if self._validation is None:
            boards = VALIDATION_BOARDS + np.arange(self._cfg.validation_scenes)
            per = max(1, self._cfg.batch_size * 4 // 5)  # boards per batch: 5 questions each
            rng = np.random.default_rng([self._cfg.seed, VALIDATION_BOARDS])
            self._validation = [self._batch(boards[i:i + per], 5, rng) for i in range(0, len(boards), per)]
        return self._validation
