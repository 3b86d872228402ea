"""Stage-1 samples streamed from RLDS through tf.data: (o_t, a_t, g, T - t) and the auxiliary.

Per objective, every episode becomes step samples inside the tf.data graph:
  bc            (o_t, g) -> a_t             for t < T
  steps_to_go   (o_t, g) -> T - t           for t <= T, successful episodes (goal reached at T)
  instruction   (o_0, o_T) -> instruction   one per episode (LanguageTable's auxiliary, A.3)
Camera frames stay PNG-encoded through the shuffle and are decoded after it, in parallel (as
Octo does), so memory is bounded by the shuffle buffer, not by the dataset. Each training
batch takes batch_size / K samples from each of the K objectives (Appendix A.3); tokenization
happens per batch in numpy with the model's tokenizers (one implementation of each).

Training streams are infinite and deterministic for a seed; `start_step` skips the batches a
resumed run has already trained on before any frame is decoded, so a restarted SFT sees the
batches an uninterrupted one would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from efm.config import OBJECTIVES, STAGE1_OBJECTIVES, RunConfig
from efm.data import rlds
from efm.data.features import InputSpec, input_spec
from efm.models.efm import GROUND_MASK, GROUND_RC
from efm.models.prefix_lm import IMAGE, INPUTS, STATE, TEXT
from efm.models.tokenizers import Vocabulary, make_vocabulary

Batch = dict[str, np.ndarray]
BLOCK_POSITIONS = "block_translation"  # the table's privileged block positions (envs.tabletop.BLOCK_TRANSLATION)
GROUND_BLOCKS = "ground/blocks"  # a raw sample's block positions, the grounding targets' source
EPISODE_BUFFER = 64  # encoded episodes mixed before they are cut into samples
# Bytes read ahead per open shard file. TFDS's default, 8 MiB, is held for every file its
# interleave keeps open (up to 16 per objective), so a dataset of more shards held more memory:
# SFT from 20,000 episodes (8 shards) peaked 59 MB above 2,000 (1 shard); with 256 KiB they
# peak the same (benchmarks/sft_memory.py). An encoded episode is tens of kB.
READ_BUFFER = 256 << 10
_f = tfds.features


@dataclass(frozen=True)
class _Layout:
    """Which step features a dataset has, and which are camera frames (kept encoded)."""

    observation_keys: tuple[str, ...]
    image_shapes: dict[str, tuple[int, ...]]
    goal_keys: tuple[str, ...]
    has_instruction_metadata: bool


def _layout(builder: tfds.core.DatasetBuilder) -> _Layout:
    steps = builder.info.features["steps"].feature
    obs = steps["observation"]
    keys = tuple(obs.keys()) if isinstance(obs, _f.FeaturesDict) else ()
    images = {k: tuple(obs[k].shape) for k in keys if isinstance(obs[k], _f.Image)}
    features = builder.info.features
    md = features["episode_metadata"] if "episode_metadata" in features else {}  # noqa: SIM401 (no .get)
    goal = tuple(md["goal"].keys()) if "goal" in md else ()
    if "instruction" not in md and "language_instruction" not in steps:
        raise rlds.DatasetError(
            f"{builder.data_dir}: no instruction (neither episode_metadata/instruction nor steps/language_instruction); "
            "LanguageTable's raw episodes (UTF-8 codes under observation/instruction) are read through "
            "`efm data import-languagetable`")
    return _Layout(keys, images, goal, "instruction" in md)


def _episodes(directory: str | os.PathLike[str], split: str | None,
              shuffle_seed: int | None = None, shard: tuple[int, int] = (1, 0)) -> tuple[tf.data.Dataset, _Layout]:
    builder = rlds._open(directory)
    if split is None:
        splits = sorted(builder.info.splits.keys())
        if len(splits) != 1:
            raise rlds.DatasetError(f"{directory} holds splits {splits}; expected exactly one")
        split = splits[0]
    rlds._check_split(builder, split, directory)
    layout = _layout(builder)
    decoders = {"steps": {"observation": {k: tfds.decode.SkipDecoding() for k in layout.image_shapes}}}
    # No TFDS auto-cache: it would hold a small dataset's encoded episodes in memory (and warn
    # when a partial read drops it); memory must stay bounded by the shuffle buffers.
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(try_autocache=False, override_buffer_size=READ_BUFFER))
    if shard[0] > 1:  # multi-host: each process reads its own episodes
        ds = ds.shard(*shard)
    if shuffle_seed is not None:  # datasets are stored in order: mix episodes, then samples
        ds = ds.repeat().shuffle(EPISODE_BUFFER, seed=shuffle_seed)
    return ds, layout


def _step_samples(spec: InputSpec, layout: _Layout, objective: str, ground: bool) -> Any:
    """episode -> dataset of raw step samples for one objective (inside the tf.data graph);
    with `ground`, each step's privileged block positions too (grounding targets)."""
    def fn(episode: dict[str, Any]) -> tf.data.Dataset:
        steps = episode["steps"].batch(2**31 - 1).get_single_element()
        md = episode.get("episode_metadata", {})
        n = tf.shape(steps["action"])[0]  # T + 1
        if layout.has_instruction_metadata:
            instruction = md["instruction"]
        else:
            instruction = steps["language_instruction"][0]
        t = tf.range(n - 1) if objective == "bc" else tf.range(n)
        prev = tf.maximum(t - 1, 0)
        count = tf.shape(t)[:1]
        out: dict[str, tf.Tensor] = {}
        if spec.reads_images:
            cameras = [steps["observation"][c] for c in spec.cameras]
            if objective == "instruction":  # first and last frame of each camera, instruction hidden
                out[IMAGE] = tf.concat([tf.gather(f, tf.stack([0, n - 1])) for f in cameras], axis=0)[None]
                out[TEXT] = tf.constant([""])
                out["target_text"] = tf.reshape(instruction, [1])
                return tf.data.Dataset.from_tensor_slices(out)
            # [T, 2 * cameras] frames: each camera's current and previous one (InputSpec's order)
            out[IMAGE] = tf.stack([x for f in cameras for x in (tf.gather(f, t), tf.gather(f, prev))], axis=1)
            out[TEXT] = tf.fill(count, instruction)
            if ground:
                out[GROUND_BLOCKS] = tf.cast(tf.gather(steps["observation"][BLOCK_POSITIONS], t), tf.float32)
        else:
            for k in layout.observation_keys:
                out[f"observation/{k}"] = tf.gather(steps["observation"][k], t)
            for k in layout.goal_keys:
                g = md["goal"][k]
                out[f"goal/{k}"] = tf.broadcast_to(g, tf.concat([count, tf.shape(g)], 0))
        if spec.state is not None:  # raw values; tokenized per batch
            out[STATE] = tf.cast(tf.gather(steps["observation"][spec.state.key], t), tf.float32)
        if objective == "bc":
            out["action"] = tf.gather(steps["action"], t)
        else:
            out["steps_to_go"] = tf.cast(n - 1 - t, tf.int32)
        return tf.data.Dataset.from_tensor_slices(out)

    return fn


def _successful(layout: _Layout) -> Any:
    def fn(episode: dict[str, Any]) -> tf.Tensor:
        md = episode.get("episode_metadata", {})
        if "success" in md:
            return md["success"]
        # RLDS: a success ends on a terminal step (the last step's flag, as rlds.py and validation read it)
        return episode["steps"].reduce(False, lambda _, s: s["is_terminal"])

    return fn


def _decode_frames(layout: _Layout, spec: InputSpec) -> Any:
    """batch -> batch with its encoded frames decoded: the vision-language model's IMAGE (its
    cameras, one shape), or a state model's image observations (each its own shape)."""
    if spec.reads_images:
        keys = {IMAGE: layout.image_shapes[spec.cameras[0]]}  # one shape for all (checked by _objective_dataset)
    else:
        keys = {f"observation/{k}": shape for k, shape in layout.image_shapes.items()}

    def decode(key: str, encoded: tf.Tensor) -> tf.Tensor:
        shape = keys[key]

        def one(png: tf.Tensor) -> tf.Tensor:
            img = tf.io.decode_image(png, channels=shape[-1], expand_animations=False)
            img.set_shape(shape)
            return img

        images = tf.map_fn(one, tf.reshape(encoded, [-1]), fn_output_signature=tf.TensorSpec(shape, tf.uint8))
        return tf.reshape(images, tf.concat([tf.shape(encoded), shape], 0))

    def fn(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {k: decode(k, v) if k in keys else v for k, v in batch.items()}

    return fn


def _objective_dataset(directory: str | os.PathLike[str], split: str | None, spec: InputSpec, objective: str,
                       threads: int, shuffle: tuple[int, int] | None, shard: tuple[int, int],
                       ground: bool = False) -> tuple[tf.data.Dataset, _Layout]:
    """Raw (still encoded) samples of one objective; shuffled and repeated when `shuffle` is
    (buffer, seed); with `ground`, the block positions of its steps (not of the instruction
    objective's, whose text is hidden)."""
    if objective not in STAGE1_OBJECTIVES:
        raise ValueError(f"robot data holds no samples of the {objective!r} objective "
                         f"(Stage 1 trains {STAGE1_OBJECTIVES}; efm pretrain renders its own)")
    episodes, layout = _episodes(directory, split, shuffle_seed=None if shuffle is None else shuffle[1], shard=shard)
    if spec.reads_images:
        for camera in spec.cameras:
            if camera not in layout.image_shapes:
                raise rlds.DatasetError(f"{directory}: the vision-language model reads camera frames {camera!r}, "
                                        f"the dataset's observations are {list(layout.observation_keys)}")
        shapes = {layout.image_shapes[c] for c in spec.cameras}
        if len(shapes) > 1:
            raise rlds.DatasetError(f"{directory}: the cameras {spec.cameras} have frames of different shapes "
                                    f"{sorted(shapes)}; the image tower reads one shape")
    if spec.state is not None and spec.state.key not in layout.observation_keys:
        raise rlds.DatasetError(f"{directory}: the model reads the state input {spec.state.key!r}, "
                                f"the dataset's observations are {list(layout.observation_keys)}")
    ground = ground and objective != "instruction"
    if ground and BLOCK_POSITIONS not in layout.observation_keys:
        raise rlds.DatasetError(f"{directory}: sft.grounding_weight > 0 supervises the instruction's block names "
                                f"with the steps' {BLOCK_POSITIONS!r}; the dataset's observations are "
                                f"{list(layout.observation_keys)}")
    if objective == "steps_to_go":
        episodes = episodes.filter(_successful(layout))
    cycle = 1 if shuffle is None else threads  # unshuffled: samples in stored order
    ds = episodes.interleave(_step_samples(spec, layout, objective, ground), cycle_length=cycle, block_length=1,
                             num_parallel_calls=cycle, deterministic=True)
    if shuffle is not None:
        ds = ds.shuffle(shuffle[0], seed=shuffle[1])
    return ds, layout


def _options(threads: int) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = threads
    options.autotune.ram_budget = 2 * 1024**3
    return options


class Stage1Data:
    """Batches for SFT from RLDS directories, with the model's inputs and target tokens.

    A batch: `inputs/<key>` (model inputs), `objective` [B] ids, `targets` [B, L] global token
    ids and `target_mask` [B, L], L = the vocabulary's max_target_length.
    """

    def __init__(self, cfg: RunConfig, vocab: Vocabulary | None = None):
        self._cfg = cfg
        self._vocab = vocab or make_vocabulary(cfg.tokenizer)
        self._spec = input_spec(self._vocab)
        self._ground = cfg.sft.grounding_weight > 0

    def check(self, directory: str | os.PathLike[str], shard: tuple[int, int] = (1, 0)) -> None:
        """Fails with a DatasetError naming what is missing, before any training: a layout the
        model cannot read, or an objective without a sample in `shard` (count, index: what this
        host will read; steps-to-go is learnt from the successful episodes only, and training
        would wait forever for one)."""
        where = f"{directory}" + (f" in shard {shard[1]} of {shard[0]} (this host's)" if shard[0] > 1 else "")
        for objective in self._cfg.sft.objectives:
            ds, _ = _objective_dataset(directory, None, self._spec, objective, 1, None, shard, self._ground)
            with rlds.reading(directory):
                empty = next(iter(ds.take(1)), None) is None  # reads up to the first sample, still encoded
            if empty:
                why = "no successful episode" if objective == "steps_to_go" else "no episode with a step"
                raise rlds.DatasetError(f"{where}: nothing to learn {objective} from ({why})")

    def training(self, directory: str | os.PathLike[str], *, seed: int, start_step: int = 0,
                 shard: tuple[int, int] = (1, 0)) -> Iterator[Batch]:
        """Endless batches of `sft.batch_size / shard count`, the same for a seed; starts at
        `start_step` (resumption) without decoding what it skips."""
        sft = self._cfg.sft
        per = sft.batch_size // len(sft.objectives) // shard[0]
        parts, layout = [], None
        for i, objective in enumerate(sft.objectives):
            ds, layout = _objective_dataset(directory, None, self._spec, objective, sft.data_threads,
                                            (sft.shuffle_buffer, seed * 1000 + i), shard, self._ground)
            parts.append(ds.batch(per, drop_remainder=True))
        ds = tf.data.Dataset.zip(tuple(parts)).skip(start_step)
        assert layout is not None
        if layout.image_shapes:
            decode = _decode_frames(layout, self._spec)
            ds = ds.map(lambda *b: tuple(decode(x) for x in b), num_parallel_calls=sft.data_threads,
                        deterministic=True)
        ds = ds.prefetch(2).with_options(_options(sft.data_threads))
        with rlds.reading(directory):
            for batch in ds.as_numpy_iterator():
                yield self._to_batch(dict(zip(sft.objectives, batch, strict=True)))

    def validation(self, directory: str | os.PathLike[str], objective: str) -> Iterator[Batch]:
        """Every sample of one objective once, in stored order."""
        sft = self._cfg.sft
        ds, layout = _objective_dataset(directory, None, self._spec, objective, sft.data_threads, None, (1, 0))
        ds = ds.batch(sft.validation_batch_size)
        if layout.image_shapes:
            ds = ds.map(_decode_frames(layout, self._spec), num_parallel_calls=sft.data_threads, deterministic=True)
        ds = ds.prefetch(2).with_options(_options(sft.data_threads))
        with rlds.reading(directory):
            for batch in ds.as_numpy_iterator():
                yield self._to_batch({objective: batch})

    def _to_batch(self, parts: dict[str, dict[str, np.ndarray]]) -> Batch:
        """Raw samples per objective -> one batch with tokenized targets, objectives in order."""
        vocab, length = self._vocab, self._vocab.max_target_length
        out: dict[str, list[np.ndarray]] = {}
        grounded = any(GROUND_BLOCKS in raw for raw in parts.values())  # training batches with grounding
        for objective, raw in parts.items():
            raw = dict(raw)
            n = len(next(iter(raw.values())))
            if grounded:
                out_rc, out_mask = self._grounding(raw, n)
                out.setdefault(GROUND_RC, []).append(out_rc)
                out.setdefault(GROUND_MASK, []).append(out_mask)
            targets = np.zeros((n, length), np.int32)
            mask = np.zeros((n, length), np.float32)
            if objective == "bc":
                t = vocab.action_targets(raw.pop("action"))
                m = np.ones_like(t, np.float32)
            elif objective == "steps_to_go":
                t = vocab.steps_to_go_targets(raw.pop("steps_to_go"))
                m = np.ones_like(t, np.float32)
            else:
                assert vocab.text is not None
                t, m = vocab.instruction_targets(vocab.text.encode(_strings(raw.pop("target_text"))))
            targets[:, : t.shape[1]], mask[:, : t.shape[1]] = t, m
            if TEXT in raw:
                assert vocab.text is not None
                raw[TEXT] = vocab.text.encode(_strings(raw[TEXT]))
            if self._spec.state is not None:  # the auxiliary objective reads no state: all 0
                state = self._spec.state
                raw[STATE] = state.encode(raw[STATE]) if STATE in raw else np.zeros((n, state.dims), np.int32)
            for k, v in {**{f"{INPUTS}{k}": v for k, v in raw.items()}, "targets": targets, "target_mask": mask,
                         "objective": np.full(n, OBJECTIVES.index(objective), np.int32)}.items():
                out.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in out.items()}


    def _grounding(self, raw: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Grounding targets of n samples (popping their block positions): the instruction's
        block names at their blocks' image positions; nothing for samples without positions."""
        assert self._vocab.text is not None
        if GROUND_BLOCKS not in raw:
            length = self._vocab.text.length
            return np.zeros((n, length, 2), np.float32), np.zeros((n, length), np.float32)
        # PyBullet's camera model, imported only when grounding
        from efm.data.grounding import instruction_grounding

        height, width = raw[IMAGE].shape[2:4]  # [n, frames, H, W, 3]
        return instruction_grounding(self._vocab.text, _strings(raw[TEXT]), raw.pop(GROUND_BLOCKS), width / height,
                                     self._cfg.env.tabletop.camera)


def _strings(x: np.ndarray) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in np.asarray(x).reshape(-1)]
