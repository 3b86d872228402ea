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
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from efm.config import OBJECTIVES, RunConfig
from efm.data.grounding import EFFECTOR, object_points, span_owners
from efm.envs.tabletop.env import TabletopEnv
from efm.envs.tabletop.geometry import BLOCK_TRANSLATION, BLOCKS, EFFECTOR_TRANSLATION, RGB
from efm.envs.tabletop.scene import image_position
from efm.models.efm import GROUND_MASK, GROUND_RC
from efm.models.prefix_lm import IMAGE, INPUTS, STATE, TEXT
from efm.models.tokenizers import TextTokenizer, Vocabulary

Batch = dict[str, np.ndarray]
BLOCK_QUESTIONS = ("where is the {}", "find the {}", "locate the {}", "{}")
EFFECTOR_NAMES = ("arm", "effector", "robot arm", "end effector")
VALIDATION_BOARDS = 10**12  # board ids from here on are validation boards


def object_phrase(name: str, rng: np.random.Generator) -> str:
    return EFFECTOR_NAMES[rng.integers(len(EFFECTOR_NAMES))] if name == EFFECTOR else name.replace("_", " ")


class Question(NamedTuple):
    objects: tuple[str, ...]  # named in this order
    text: str
    positions: np.ndarray  # [objects, 2], the answer
    spans: tuple[tuple[int, int], ...]  # each object's name in `text` (character offsets)


def board_questions(blocks: Sequence[str], block_xy: np.ndarray, effector_xy: np.ndarray, sizes: Sequence[int],
                    rng: np.random.Generator) -> list[Question]:
    """Questions about a board's objects (its blocks and the effector), question i naming
    `sizes[i]` different objects. One object: "where is the red moon" and other phrasings;
    several: their names in a list ("red moon blue cube arm", as a detection prompt), answered
    in that order. Pure given the rng."""
    objects = [*blocks, EFFECTOR]
    position = {**{b: block_xy[BLOCKS.index(b)] for b in blocks}, EFFECTOR: effector_xy}
    out, order = [], []
    for size in sizes:
        if len(order) < size:  # objects repeat across a board's questions only once all were asked
            order = [objects[int(i)] for i in rng.permutation(len(objects))]
        names, order = tuple(order[:size]), order[size:]
        phrases = [object_phrase(n, rng) for n in names]
        if size == 1:
            template = BLOCK_QUESTIONS[rng.integers(len(BLOCK_QUESTIONS))]
            start = template.index("{}")
            question, spans = template.format(phrases[0]), ((start, start + len(phrases[0])),)
        else:
            question = " ".join(phrases)
            starts = np.cumsum([0] + [len(ph) + 1 for ph in phrases[:-1]])
            spans = tuple((int(s), int(s) + len(ph)) for s, ph in zip(starts, phrases, strict=True))
        out.append(Question(names, question, np.stack([np.asarray(position[n], np.float32) for n in names]), spans))
    return out


def name_tokens(text: TextTokenizer, question: Question) -> np.ndarray:
    """Which object (its index in `question.objects`) each text token of the question names,
    -1 for the others. [text length]"""
    return span_owners(text, question.text, question.spans)


class TableQuestions:
    """`efm.sft.trainer.Samples` for pretraining: endless rendered batches and a fixed
    validation set, in Stage 1's batch layout (objective `locate`). A training batch holds
    `questions_per_scene` questions about each of `batch_size / questions_per_scene` boards."""

    def __init__(self, cfg: RunConfig, vocab: Vocabulary):
        if vocab.text is None or vocab.state is None or vocab.state.key != EFFECTOR_TRANSLATION:
            raise ValueError("pretraining asks questions in text and answers in the position tokens of the "
                             f"effector: it needs tokenizer.text_tokens > 0 and tokenizer.state_key="
                             f"{EFFECTOR_TRANSLATION!r} (have {cfg.tokenizer.text_tokens} and "
                             f"{cfg.tokenizer.state_key!r})")
        if tuple(vocab.cameras) != (RGB,):
            raise ValueError(f"pretraining renders the table's one camera {RGB!r}; the tokenizer reads {vocab.cameras}")
        self._cfg, self._vocab = cfg.pretrain, vocab
        self._camera = cfg.env.tabletop.camera
        self._per_board = cfg.pretrain.questions_per_scene
        self._per_question = cfg.pretrain.objects_per_question
        self._objects = cfg.env.tabletop.num_blocks + 1  # what a board holds to ask about: blocks, effector
        if self._per_question > self._objects:
            raise ValueError(f"pretrain.objects_per_question={self._per_question}: a board holds {self._objects} "
                             f"objects (tabletop.num_blocks={cfg.env.tabletop.num_blocks} and the effector)")
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

    def _batch(self, boards: Sequence[int], sizes: Sequence[int], rng: np.random.Generator,
               ) -> tuple[Batch, list[tuple[tuple[str, ...], np.ndarray]]]:
        """One row per question: about each board, questions naming `sizes` objects.
        Returns the batch and each row's (objects, true positions)."""
        vocab = self._vocab
        assert vocab.text is not None and vocab.state is not None
        frames, blocks, effector, names = self._render(boards)
        images, questions = [], []
        for j in range(len(boards)):
            for question in board_questions(names[j], blocks[j], effector[j], sizes, rng):
                images.append(frames[j])
                questions.append(question)
        n, dims = len(questions), vocab.state.dims
        image = np.stack(images)
        targets = np.zeros((n, vocab.max_target_length), np.int32)
        mask = np.zeros((n, vocab.max_target_length), np.float32)
        owners = np.stack([name_tokens(vocab.text, q) for q in questions])  # [n, text length]
        ground_rc = np.zeros((n, vocab.text.length, 2), np.float32)
        aspect = image.shape[2] / image.shape[1]
        for i, q in enumerate(questions):  # x, y of the first object, then of the next, ...
            targets[i, :q.positions.size] = vocab.position_targets(q.positions).reshape(-1)
            mask[i, :q.positions.size] = 1.0
            named = owners[i] >= 0
            rc = image_position(object_points(q.objects, q.positions), aspect, self._camera)
            ground_rc[i, named] = rc[owners[i, named]]
        batch = {f"{INPUTS}{IMAGE}": np.stack([image, image], axis=1),  # the board is still: now = before
                 f"{INPUTS}{TEXT}": vocab.text.encode([q.text for q in questions]),
                 f"{INPUTS}{STATE}": np.zeros((n, dims), np.int32),  # 0: no state (locate reads none)
                 "targets": targets, "target_mask": mask,
                 # where in the image the object each name token names is (`sft.grounding_weight`)
                 GROUND_RC: ground_rc, GROUND_MASK: (owners >= 0).astype(np.float32),
                 "objective": np.full(n, OBJECTIVES.index("locate"), np.int32)}
        return batch, [(q.objects, q.positions) for q in questions]

    def training(self, *, seed: int, start_step: int = 0, shard: tuple[int, int] = (1, 0)) -> Iterator[Batch]:
        """Endless batches of `pretrain.batch_size / shard count` questions; batch s is the same
        for a seed whenever it is made. Rendered a batch ahead in a thread, while the step runs."""
        per_host = self._env.num_envs // shard[0]

        def batch(step: int) -> Batch:
            first = (step * shard[0] + shard[1]) * per_host
            rng = np.random.default_rng([seed, step, shard[1]])
            return self._batch(range(first, first + per_host), [self._per_question] * self._per_board, rng)[0]

        return _ahead(batch, start_step)

    def validation(self, objective: str = "locate") -> Iterator[Batch]:
        """Questions covering every object of each validation board (its blocks and the
        effector) once, `objects_per_question` at a time, as in training."""
        if objective != "locate":
            raise ValueError(f"pretraining data has only the locate objective, not {objective!r}")
        for batch, _ in self._validation_batches():
            yield batch

    def validation_answers(self) -> list[tuple[tuple[str, ...], np.ndarray]]:
        """(objects, true positions [k, 2]) of each validation row, in validation()'s order."""
        return [a for _, answers in self._validation_batches() for a in answers]

    def _validation_batches(self) -> list[tuple[Batch, list[tuple[tuple[str, ...], np.ndarray]]]]:
        if self._validation is None:
            per = self._per_question
            k = self._objects
            sizes = [per] * (k // per) + ([k % per] if k % per else [])  # every object once
            boards = VALIDATION_BOARDS + np.arange(self._cfg.validation_scenes)
            step = max(1, self._cfg.batch_size * 4 // len(sizes))  # boards per batch (as_sft's validation batch)
            rng = np.random.default_rng([self._cfg.seed, VALIDATION_BOARDS])
            self._validation = [self._batch(boards[i:i + step], sizes, rng) for i in range(0, len(boards), step)]
        return self._validation


def _ahead(make: Callable[[int], Batch], start: int, depth: int = 2) -> Iterator[Batch]:
    """make(start), make(start + 1), ... produced `depth` ahead in a thread (rendering releases
    the GIL to XLA's step); the thread stops when the iterator is closed or dropped."""
    results: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        step = start
        while not stop.is_set():
            try:
                item: Batch | BaseException = make(step)
            except BaseException as e:  # handed to the consumer, raised there
                item = e
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            step += 1

    thread = threading.Thread(target=produce, name="pretrain-render", daemon=True)
    thread.start()
    try:
        while True:
            item = results.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
