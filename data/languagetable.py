"""The published LanguageTable RLDS data (Lynch et al. 2023, "Interactive Language") as Episodes.

LanguageTable is a TFDS builder directory (gs://gresearch/robotics/language_table/0.0.1/ and its
`language_table_sim`, ... siblings) with one top-level feature, `steps`, a nested dataset of:

  observation/rgb                          Image uint8 [360, 640, 3] (JPEG-encoded)
  observation/effector_translation         float32 [2], where the end effector is
  observation/effector_target_translation  float32 [2], where it is commanded to be
  observation/instruction                  int32 [512], UTF-8 bytes of the text, zero padded
  action                                   float32 [2], a delta of the effector target
  reward                                   float32
  is_first, is_last, is_terminal           bool

There is no episode-level feature (no id, no metadata), so episodes are named by split and
position. Mapping onto `Episode` (T+1 observations, T actions):

  observations        {"rgb", "effector_translation"}, every step (optionally resized)
  actions             every step's action but the last: RLDS's last step holds only the final
                      observation, its action is meaningless
  instruction         the first step's instruction codes, decoded
  observation_extras  {"effector_target_translation"}: the commanded set point is the running
                      sum of past actions, not an observation of the world nor a goal, but it
                      is kept so nothing in the source is lost
  goal                {}: LanguageTable goals are only the instruction
  success             is_terminal on the last step, or a positive reward on the final
                      transition (RLDS: step T-1) or the last step (this project's layout)
  episode_id          "<split>-<index>" in stored order, like `efm.data.rlds` for foreign data

`write_languagetable_fixture` writes a small dataset in exactly the published feature schema, for
tests and for demos of the tools without the (large, remote) real data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from efm.data import rlds as rlds_io
from efm.data.rlds import DatasetError
from efm.envs.base import Array, Episode

DATASET_NAME = "language_table"
DATASET_VERSION = "0.0.1"
PUBLISHED_IMAGE_SHAPE = (360, 640, 3)
INSTRUCTION_LENGTH = 512
ACTION_DIM = 2

# RLDS keys (as in `rlds.STEPS`, ...), and LanguageTable's observation keys.
STEPS = "steps"
OBSERVATION = "observation"
ACTION = "action"
REWARD = "reward"
IS_FIRST = "is_first"
IS_LAST = "is_last"
IS_TERMINAL = "is_terminal"
RGB = "rgb"
EFFECTOR_TRANSLATION = "effector_translation"
EFFECTOR_TARGET_TRANSLATION = "effector_target_translation"
INSTRUCTION = "instruction"

_f = tfds.features

# Step feature path -> (feature class, shape, dtype). None in a shape: any size (rgb's height and
# width, so resized copies and sim variants of the data read too); everything else is exact.
STEP_SCHEMA: dict[tuple[str, ...], tuple[type[_f.FeatureConnector], tuple[int | None, ...],
                                         np.dtype]] = {
    (OBSERVATION, RGB): (_f.Image, (None, None, 3), np.dtype(np.uint8)),
    (OBSERVATION, EFFECTOR_TRANSLATION): (_f.Tensor, (2,), np.dtype(np.float32)),
    (OBSERVATION, EFFECTOR_TARGET_TRANSLATION): (_f.Tensor, (2,), np.dtype(np.float32)),
    (OBSERVATION, INSTRUCTION): (_f.Tensor, (INSTRUCTION_LENGTH,), np.dtype(np.int32)),
    (ACTION,): (_f.Tensor, (ACTION_DIM,), np.dtype(np.float32)),
    (REWARD,): (_f.Tensor, (), np.dtype(np.float32)),
    (IS_FIRST,): (_f.Tensor, (), np.dtype(np.bool_)),
    (IS_LAST,): (_f.Tensor, (), np.dtype(np.bool_)),
    (IS_TERMINAL,): (_f.Tensor, (), np.dtype(np.bool_)),
}

FIXTURE_INSTRUCTIONS = (
    "push the red star to the blue cube",
    "move the green circle to the top left corner",
    "slide the yellow heart next to the blue moon",
    "separate the red pentagon from the green star",
)


# ----------------------------------------------------------------------------- instructions


def encode_instruction(text: str, length: int = INSTRUCTION_LENGTH) -> Array:
    """`text` as LanguageTable stores it: its UTF-8 bytes as int32, zero padded to `length`."""
    data = text.encode("utf-8")
    if b"\x00" in data:
        raise ValueError(f"instruction {text!r} contains NUL, which is the padding code")
    if len(data) > length:
        raise ValueError(f"instruction {text!r} is {len(data)} UTF-8 bytes, more than {length}")
    codes = np.zeros(length, np.int32)
    codes[: len(data)] = np.frombuffer(data, np.uint8)
    return codes


def decode_instruction(codes: Array) -> str:
    """The text of a zero-padded array of UTF-8 byte codes (LanguageTable's `instruction`).

    Stricter than LanguageTable's own decoder (which drops every zero and lets bytes() fail on
    codes > 255): a zero inside the text or a code that is not a byte is corrupt data, and is
    reported with its position rather than decoded into something plausible.
    """
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype.kind not in "iu":
        raise DatasetError(f"instruction codes must be a 1-D integer array, got "
                           f"{codes.dtype}{list(codes.shape)}")
    nonzero = np.flatnonzero(codes)
    body = codes[: nonzero[-1] + 1] if nonzero.size else codes[:0]
    bad = np.flatnonzero((body <= 0) | (body > 255))
    if bad.size:
        i = int(bad[0])
        what = "a zero before the end of the text" if body[i] == 0 else "not a byte (1..255)"
        raise DatasetError(f"instruction code {int(body[i])} at position {i} is {what}; "
                           "codes are UTF-8 bytes followed by zero padding")
    data = body.astype(np.uint8).tobytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"instruction bytes are not valid UTF-8 ({e.reason} at byte "
                           f"{e.start}): {data!r}") from e


# ----------------------------------------------------------------------------- schema


def languagetable_features(image_shape: tuple[int, int, int] = PUBLISHED_IMAGE_SHAPE
                           ) -> _f.FeaturesDict:
    """The published TFDS feature spec (with another image shape for small test data)."""
    return _f.FeaturesDict({STEPS: _f.Dataset({
        OBSERVATION: _f.FeaturesDict({
            RGB: _f.Image(shape=tuple(image_shape), dtype=np.uint8, encoding_format="jpeg"),
            EFFECTOR_TRANSLATION: _f.Tensor(shape=(2,), dtype=np.float32),
            EFFECTOR_TARGET_TRANSLATION: _f.Tensor(shape=(2,), dtype=np.float32),
            INSTRUCTION: _f.Tensor(shape=(INSTRUCTION_LENGTH,), dtype=np.int32),
        }),
        ACTION: _f.Tensor(shape=(ACTION_DIM,), dtype=np.float32),
        REWARD: _f.Scalar(dtype=np.float32),
        IS_FIRST: _f.Scalar(dtype=np.bool_),
        IS_LAST: _f.Scalar(dtype=np.bool_),
        IS_TERMINAL: _f.Scalar(dtype=np.bool_),
    })})


def _describe(f: _f.FeatureConnector) -> str:
    if isinstance(f, _f.Image | _f.Tensor):
        return f"{type(f).__name__} {np.dtype(f.np_dtype)}{list(f.shape)}"
    return type(f).__name__


def schema_problems(features: _f.FeatureConnector | None) -> list[str]:
    """Every way `features` differs from the LanguageTable schema ([] if it matches).

    Extra features are allowed (variants of the data may add some); missing ones, other
    classes, shapes and dtypes are not. Scalar counts as a Tensor (it is a subclass).
    """
    if not isinstance(features, _f.FeaturesDict) or STEPS not in features:
        return [f"no '{STEPS}' feature"]
    steps = features[STEPS]
    if not isinstance(steps, _f.Dataset) or not isinstance(steps.feature, _f.FeaturesDict):
        return [f"'{STEPS}' is a {type(steps).__name__}, not a Dataset of FeaturesDict"]
    problems = []
    for path, (cls, shape, dtype) in STEP_SCHEMA.items():
        name = "/".join((STEPS, *path))
        node: _f.FeatureConnector | None = steps.feature
        for key in path:
            if not isinstance(node, _f.FeaturesDict) or key not in node:
                node = None
                break
            node = node[key]
        if node is None:
            problems.append(f"missing {name}")
            continue
        expected = f"{cls.__name__} {dtype}{['*' if s is None else s for s in shape]}"
        ok = (isinstance(node, cls) and not isinstance(node, _f.Text)
              and len(node.shape) == len(shape)
              and all(e is None or s == e for s, e in zip(node.shape, shape, strict=True))
              and all(s is not None for s in node.shape)
              and np.dtype(node.np_dtype) == dtype)
        if not ok:
            problems.append(f"{name} is {_describe(node)}, expected {expected}")
    return problems


def check_features(features: _f.FeatureConnector | None, where: str | os.PathLike[str]) -> None:
    """DatasetError naming `where` and every mismatch if `features` is not LanguageTable's."""
    problems = schema_problems(features)
    if problems:
        raise DatasetError(f"{where} is not a LanguageTable dataset: {'; '.join(problems)}")


# ----------------------------------------------------------------------------- reading


def _check_image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int | np.integer) and s > 0 for s in size):
        raise ValueError(f"image_size must be (height, width) positive ints, got {image_size!r}")
    return int(size[0]), int(size[1])


def _resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Antialiased resize (no aliasing when shrinking 360x640 a lot), rounded back to uint8."""
    x = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _stack_episode(episode: dict[str, Any], size: tuple[int, int] | None) -> dict[str, Any]:
    """An episode's steps as [T+1, ...] tensors, images resized step by step (less memory)."""
    steps = episode[STEPS]
    # Batch by the episode's own length (TFDS builds steps from tensors, so it is known): with
    # static element shapes (resized images), batch(2**31 - 1) makes TF allocate for the whole
    # nominal batch (16 GiB, then OOM). It is taken before the map: a second consumer of the
    # mapped dataset (cardinality, reduce) breaks tf.data's graph optimizer.
    n = steps.cardinality()
    if size is not None:
        def resize_step(step: dict[str, Any]) -> dict[str, Any]:
            obs = dict(step[OBSERVATION])
            obs[RGB] = _resize(obs[RGB], size)
            return {**step, OBSERVATION: obs}

        steps = steps.map(resize_step)
    return steps.batch(tf.where(n > 0, n, 2**31 - 1)).get_single_element()


def _to_episode(steps: Mapping[str, Any], episode_id: str) -> Episode:
    obs = steps[OBSERVATION]
    n = len(steps[IS_LAST])
    if n == 0:
        raise DatasetError(f"episode {episode_id!r} has no steps")
    if not steps[IS_LAST][-1]:
        raise DatasetError(f"episode {episode_id!r}: its last step is not is_last, so the "
                           "episode is truncated or the steps are out of order")
    try:
        instruction = decode_instruction(obs[INSTRUCTION][0])
    except DatasetError as e:
        raise DatasetError(f"episode {episode_id!r}: {e}") from e
    reward = np.asarray(steps[REWARD])
    success = bool(steps[IS_TERMINAL][-1]) or bool(np.any(reward[-2:] > 0))
    return Episode(
        observations={RGB: obs[RGB],
                      EFFECTOR_TRANSLATION: np.asarray(obs[EFFECTOR_TRANSLATION], np.float32)},
        actions=np.asarray(steps[ACTION][:-1], np.float32),
        instruction=instruction,
        success=success,
        episode_id=episode_id,
        observation_extras={EFFECTOR_TARGET_TRANSLATION:
                            np.asarray(obs[EFFECTOR_TARGET_TRANSLATION], np.float32)},
    )


def read_languagetable(
    directory: str | os.PathLike[str],
    split: str = "train",
    image_size: tuple[int, int] | None = None,
    limit: int | None = None,
) -> Iterator[Episode]:
    """Streams a split's episodes (one decoded episode in memory at a time, plus prefetch).

    `directory` is the version directory (.../language_table/0.0.1). Images are resized to
    `image_size` = (height, width) when given, else kept as stored. `limit` caps the number of
    episodes. The path, schema, split and arguments are checked here, before the first episode.
    """
    path = epath.Path(directory)  # pathlib would fold gs://b into gs:/b
    size = _check_image_size(image_size)
    if limit is not None and (not isinstance(limit, int | np.integer) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    rlds_io.split_sizes(path)  # DatasetError unless it is an RLDS dataset directory
    builder = tfds.builder_from_directory(os.fspath(path))
    check_features(builder.info.features, path)
    stored = tuple(builder.info.features[STEPS].feature[OBSERVATION][RGB].shape[:2])
    ds = rlds_io.load_rlds(path, split)  # DatasetError if there is no such split
    if limit is not None:
        ds = ds.take(int(limit))
    resize = None if size is None or size == stored else size
    ds = ds.map(lambda ep: _stack_episode(ep, resize), num_parallel_calls=2,
                deterministic=True).prefetch(1)
    return _episodes(ds, path, split)


def _episodes(ds: tf.data.Dataset, path: epath.Path, split: str) -> Iterator[Episode]:
    it = ds.as_numpy_iterator()
    i = 0
    while True:
        try:
            steps = next(it)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise DatasetError(f"{path}: could not read episode {i} of split {split!r} "
                               f"(an episode without steps, or corrupt records): {e.message}"
                               ) from e
        yield _to_episode(steps, f"{split}-{i}")
        i += 1


# ----------------------------------------------------------------------------- fixture


def _fixture_episode(rng: np.random.Generator, index: int, n: int,
                     image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """n RLDS steps of a plausible episode: the effector follows its target, a block moves."""
    h, w, _ = image_shape
    actions = rng.uniform(-0.03, 0.03, (n, ACTION_DIM)).astype(np.float32)
    actions[-1] = 0.0  # the last step's action is meaningless; zero like EnvLogger's
    target = np.cumsum(np.concatenate([rng.uniform(-0.2, 0.2, (1, 2)), actions[:-1]]),
                       axis=0).astype(np.float32)
    effector = (target + rng.normal(0.0, 0.005, target.shape)).astype(np.float32)
    # Smooth images (JPEG-friendly, and meaningful to resize): a background gradient and a
    # coloured square that drifts with the step.
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                           np.full((h, w), 40 * (index % 6))], axis=-1).astype(np.uint8)
    rgb = np.repeat(background[None], n, axis=0)
    side = max(h // 6, 1)
    colour = rng.integers(0, 256, 3, dtype=np.uint8)
    for t in range(n):
        top = (h - side) * t // max(n - 1, 1)
        left = (w - side) * ((index + t) % 5) // 4
        rgb[t, top: top + side, left: left + side] = colour
    success = index % 2 == 0
    last = np.arange(n) == n - 1
    instruction = encode_instruction(FIXTURE_INSTRUCTIONS[index % len(FIXTURE_INSTRUCTIONS)])
    return {STEPS: {
        OBSERVATION: {RGB: rgb, EFFECTOR_TRANSLATION: effector,
                      EFFECTOR_TARGET_TRANSLATION: target,
                      INSTRUCTION: np.repeat(instruction[None], n, axis=0)},
        ACTION: actions,
        REWARD: (last & success).astype(np.float32),
        IS_FIRST: np.arange(n) == 0,
        IS_LAST: last,
        IS_TERMINAL: last & success,
    }}


def write_languagetable_fixture(
    directory: str | os.PathLike[str],
    num_episodes: int,
    steps: int | Sequence[int],
    seed: int,
    image_shape: tuple[int, int, int] = PUBLISHED_IMAGE_SHAPE,
    split: str = "train",
) -> Path:
    """Writes a synthetic LanguageTable dataset; returns its directory/language_table/0.0.1.

    The features are exactly the published ones (only `image_shape` may be made smaller, for
    fast tests). `steps` is the number of RLDS steps (T+1) of every episode, or of each one.
    Episode i has instruction FIXTURE_INSTRUCTIONS[i % 4] and succeeds (is_terminal and reward
    1 on its last step) iff i is even. Episodes are stored in order (shuffling disabled).
    """
    lengths = [int(steps)] * num_episodes if isinstance(steps, int | np.integer) else list(steps)
    if num_episodes < 1 or len(lengths) != num_episodes or min(lengths) < 1:
        raise ValueError(f"need num_episodes >= 1 and that many step counts >= 1, got "
                         f"num_episodes={num_episodes}, steps={steps!r}")
    if len(image_shape) != 3 or image_shape[-1] != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (height, width, 3), got {image_shape!r}")
    root = Path(directory).absolute()
    target = root / DATASET_NAME / DATASET_VERSION
    if target.exists() and any(target.iterdir()):
        raise DatasetError(f"cannot write a LanguageTable fixture to {target}: not empty")
    rng = np.random.default_rng(seed)

    def examples() -> Iterator[tuple[int, dict[str, Any]]]:
        for i, n in enumerate(lengths):
            yield i, _fixture_episode(rng, i, n, tuple(image_shape))

    tfds.disable_progress_bar()
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=DATASET_NAME,
        version=DATASET_VERSION,
        features=languagetable_features(tuple(image_shape)),
        split_datasets={split: examples()},
        data_dir=root,
        description="Synthetic episodes in the LanguageTable RLDS schema "
                    "(efm.data.languagetable.write_languagetable_fixture).",
        disable_shuffling=True,
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP),
    )
    return Path(os.fspath(builder.data_dir))


MAX_ACTION = 0.1  # LanguageTable's action bound (metres per step); the project's actions are in [-1, 1]


def import_languagetable(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    split: str = "train",
    image_size: tuple[int, int] | None = (72, 128),
    limit: int | None = None,
    overwrite: bool = False,
    max_clipped_fraction: float = 0.01,
) -> dict[str, Any]:
    """Converts a LanguageTable split into this project's RLDS format (streaming), ready for
    `efm subsample`: images resized to `image_size`, actions divided by `MAX_ACTION` into the
    project's [-1, 1]. Returns the dataset statistics, also stored in its metadata.

    Values that scaling leaves outside [-1, 1] are clipped and counted (`clipped` in the
    statistics); if more than `max_clipped_fraction` of the action values had to be clipped,
    the import fails naming the feature and writes nothing: a wrong action scale must not become
    a dataset of saturated actions."""
    if not 0 <= max_clipped_fraction <= 1:
        raise ValueError(f"max_clipped_fraction must be in [0, 1], got {max_clipped_fraction!r}")
    count = {"episodes": 0, "steps": 0, "successes": 0}
    clipped = {"values": 0, "total": 0, "max_abs": 0.0}
    metadata: dict[str, Any] = {"source": {"path": rlds_io.absolute(source), "format": DATASET_NAME,
                                           "split": split, "action_scale": 1.0 / MAX_ACTION,
                                           "image_size": list(image_size) if image_size else None}}

    def scaled() -> Iterator[Episode]:
        for e in read_languagetable(source, split, image_size, limit):
            scaled_actions = e.actions / MAX_ACTION
            outside = np.abs(scaled_actions) > 1.0
            clipped["values"] += int(outside.sum())
            clipped["total"] += int(scaled_actions.size)
            if scaled_actions.size:
                clipped["max_abs"] = max(clipped["max_abs"], float(np.abs(scaled_actions).max()))
            e.actions = np.clip(scaled_actions, -1.0, 1.0).astype(np.float32)
            count["episodes"] += 1
            count["steps"] += e.length
            count["successes"] += int(e.success)
            yield e
        share = clipped["values"] / max(clipped["total"], 1)
        if share > max_clipped_fraction:
            raise DatasetError(
                f"{source}: feature {ACTION!r}: {clipped['values']} of {clipped['total']} values "
                f"({share:.1%}) lie outside [-1, 1] after scaling by 1/{MAX_ACTION} (largest "
                f"{clipped['max_abs']:.3g}) and would be clipped, more than the allowed "
                f"{max_clipped_fraction:.1%}: the action scale is wrong for this data")
        metadata["stats"] = {**count, "success_rate": count["successes"] / max(count["episodes"], 1),
                             "clipped": {ACTION: {**clipped, "fraction": share}}}

    rlds_io.write_episodes(scaled(), out_dir, metadata=metadata, overwrite=overwrite)
    return metadata["stats"]
