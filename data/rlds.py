"""Episodes <-> RLDS datasets in TFDS format on disk.

RLDS is what robot-learning tools read (Open X-Embodiment, `rlds.transformations`), so every
dataset the pipeline produces (demonstrations, fractions, Self-Improvement practice) is one.
An example is an episode; its `steps` is a nested dataset with T+1 steps for T actions:

  observation          FeaturesDict of the episode's observation keys (uint8 HxWxC: Image)
  action               float32[A]; zero on the last step, which has no action
  reward               1.0 on the last step of a successful episode, else 0.0
  discount             0.0 on a terminal step, else 1.0 (dm_env convention)
  is_first, is_last    bool
  is_terminal          bool; True on the last step iff the episode is a success
  language_instruction Text
  observation_extras   FeaturesDict of Episode.observation_extras (only if there are any)
  action_extras        FeaturesDict of Episode.action_extras, zero on the last step (ditto)

and `episode_metadata` holds episode_id, instruction, success, length (= T), optimal_length
(float32) and the goal arrays as a nested `goal` FeaturesDict.

A dataset directory is a TFDS builder directory (dataset_info.json, features.json, tfrecords),
so `tfds.builder_from_directory(directory)` opens it without this module.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from efm.envs.base import Array, Episode

VERSION = "1.0.0"
METADATA_FILE = "efm_metadata.json"  # caller's dataset-level metadata, next to TFDS's files
TFDS_FILES = ("dataset_info.json", "features.json")
REQUIRED_STEP_KEYS = ("observation", "action", "is_first", "is_last")

_f = tfds.features
_DATASET_CLASS_NAME = f"{_f.Dataset.__module__}.{_f.Dataset.__name__}"
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class DatasetError(ValueError):
    """A dataset on disk (or episodes to write) is not what the caller asked for."""


@contextlib.contextmanager
def reading(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Reads of the dataset at `directory` inside it fail with a DatasetError naming the dataset,
    not TensorFlow's DataLossError, where one of its files is truncated or corrupt (a copy cut
    short, a full disk)."""
    try:
        yield
    except tf.errors.DataLossError as e:
        raise DatasetError(f"RLDS dataset {absolute(directory)}: a data file is corrupt or truncated "
                           f"({_op_message(e.message)}): write or copy the dataset again") from e


def _op_message(message: str) -> str:
    """TensorFlow's op error without the function-node prefix and [Op:...] suffix."""
    return re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:[^\]]*\].*$", "", message).strip()


# ----------------------------------------------------------------------------- features


def _leaf_feature(shape: tuple[int, ...], dtype: np.dtype) -> _f.FeatureConnector:
    """uint8 HxWxC arrays are camera images (PNG, lossless); everything else a raw Tensor."""
    if dtype == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3, 4):
        return _f.Image(shape=shape, dtype=np.uint8)
    return _f.Tensor(shape=shape, dtype=dtype)


def _array_spec(
    arrays: Mapping[str, Array], what: str, per_step: bool
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    spec = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if not isinstance(k, str) or not _KEY_RE.match(k):
            raise DatasetError(f"{what} key {k!r} is not a valid feature name ([A-Za-z0-9_.-]+)")
        if v.dtype.kind not in "biuf":
            raise DatasetError(f"{what} {k!r} has dtype {v.dtype}; only bool/int/float arrays")
        spec[k] = (tuple(v.shape[1:] if per_step else v.shape), v.dtype)
    return spec


class _Spec:
    """Shapes and dtypes every episode of a dataset shares, taken from the first episode."""

    def __init__(self, ep: Episode):
        if not ep.observations:
            raise DatasetError(f"episode {ep.episode_id!r} has no observations")
        if ep.actions.ndim != 2:
            raise DatasetError(
                f"episode {ep.episode_id!r}: actions must be [T, A], got shape {ep.actions.shape}"
            )
        self.obs = _array_spec(ep.observations, "observation", per_step=True)
        self.goal = _array_spec(ep.goal, "goal", per_step=False)
        self.obs_extras = _array_spec(ep.observation_extras, "observation_extras", per_step=True)
        self.act_extras = _array_spec(ep.action_extras, "action_extras", per_step=True)
        self.action_dim = int(ep.actions.shape[1])

    def features(self) -> _f.FeaturesDict:
        step = {
            "observation": _f.FeaturesDict({k: _leaf_feature(*s) for k, s in self.obs.items()}),
            "action": _f.Tensor(shape=(self.action_dim,), dtype=np.float32),
            "reward": _f.Scalar(dtype=np.float32),
            "discount": _f.Scalar(dtype=np.float32),
            "is_first": _f.Scalar(dtype=np.bool_),
            "is_last": _f.Scalar(dtype=np.bool_),
            "is_terminal": _f.Scalar(dtype=np.bool_),
            "language_instruction": _f.Text(),
        }
        for key, spec in (("observation_extras", self.obs_extras),
                          ("action_extras", self.act_extras)):
            if spec:
                step[key] = _f.FeaturesDict({k: _f.Tensor(shape=s, dtype=d)
                                             for k, (s, d) in spec.items()})
        metadata = {
            "episode_id": _f.Text(),
            "instruction": _f.Text(),
            "success": _f.Scalar(dtype=np.bool_),
            "length": _f.Scalar(dtype=np.int32),
            "optimal_length": _f.Scalar(dtype=np.float32),
        }
        if self.goal:
            metadata["goal"] = _f.FeaturesDict({k: _leaf_feature(*s) for k, s in self.goal.items()})
        return _f.FeaturesDict({"steps": _StackedDataset(step),
                                "episode_metadata": _f.FeaturesDict(metadata)})

    def check(self, ep: Episode) -> None:
        """Fail with the episode and key named, rather than deep inside TFDS encoding."""
        name = f"episode {ep.episode_id!r}"
        if ep.actions.ndim != 2 or ep.actions.shape[1] != self.action_dim:
            raise DatasetError(f"{name}: actions have shape {ep.actions.shape}, expected "
                               f"[T, {self.action_dim}] like the first episode")
        t = ep.length
        for what, arrays, spec, lead in (
            ("observation", ep.observations, self.obs, (t + 1,)),
            ("goal", ep.goal, self.goal, ()),
            ("observation_extras", ep.observation_extras, self.obs_extras, (t + 1,)),
            ("action_extras", ep.action_extras, self.act_extras, (t,)),
        ):
            if set(arrays) != set(spec):
                raise DatasetError(f"{name}: {what} keys {sorted(arrays)} differ from the first "
                                   f"episode's {sorted(spec)}")
            for k, (shape, dtype) in spec.items():
                v = np.asarray(arrays[k])
                if v.shape != lead + shape or v.dtype != dtype:
                    raise DatasetError(f"{name}: {what} {k!r} is {v.dtype}{list(v.shape)}, "
                                       f"expected {dtype}{list(lead + shape)}")

    def example(self, ep: Episode) -> dict[str, Any]:
        self.check(ep)
        n = ep.length + 1
        action = _pad_last(np.asarray(ep.actions, np.float32))
        first, last = np.zeros(n, bool), np.zeros(n, bool)
        first[0], last[-1] = True, True
        terminal = last & bool(ep.success)
        steps = {
            "observation": dict(ep.observations),
            "action": action,
            "reward": terminal.astype(np.float32),
            "discount": (~terminal).astype(np.float32),
            "is_first": first,
            "is_last": last,
            "is_terminal": terminal,
            "language_instruction": np.full(n, ep.instruction, dtype=object),
        }
        if self.obs_extras:
            steps["observation_extras"] = dict(ep.observation_extras)
        if self.act_extras:
            steps["action_extras"] = {k: _pad_last(np.asarray(v))
                                      for k, v in ep.action_extras.items()}
        metadata = {
            "episode_id": ep.episode_id,
            "instruction": ep.instruction,
            "success": bool(ep.success),
            "length": np.int32(ep.length),
            "optimal_length": np.float32(ep.optimal_length),
        }
        if self.goal:
            metadata["goal"] = dict(ep.goal)
        return {"steps": steps, "episode_metadata": metadata}


def _pad_last(per_action: Array) -> Array:
    """[T, ...] -> [T+1, ...] with zeros on the last step, which has no action."""
    return np.concatenate([per_action, np.zeros((1, *per_action.shape[1:]), per_action.dtype)])


def episode_features(episode: Episode) -> _f.FeaturesDict:
    """The TFDS feature spec of a dataset whose episodes look like `episode`."""
    return _Spec(episode).features()


def _is_plain_tensor(f: _f.FeatureConnector) -> bool:
    """A Tensor/Scalar/Text leaf whose per-step encoding is only a dtype/shape check."""
    if type(f) not in (_f.Tensor, _f.Scalar, _f.Text) or getattr(f, "encoder", None):
        return False
    info = f.get_serialized_info()
    return (isinstance(info, tfds.features.TensorInfo) and info.shape == f.shape
            and info.np_dtype == f.np_dtype and f.shape.count(None) == 0)


def _encode_stacked(feature: _f.FeatureConnector, value: Any) -> Any:
    if isinstance(feature, _f.FeaturesDict):
        if set(value) != set(feature.keys()):
            raise DatasetError(f"step keys {sorted(value)} differ from the features' "
                               f"{sorted(feature.keys())}")
        return {k: _encode_stacked(feature[k], value[k]) for k in feature}
    if _is_plain_tensor(feature):
        dtype = feature.np_dtype
        return _f.Tensor(shape=(None, *feature.shape), dtype=dtype).encode_example(
            np.asarray(value, dtype=object) if dtype == np.object_ else value
        )
    return [feature.encode_example(v) for v in value]  # images: PNG per frame, no way around


class _StackedDataset(_f.Dataset):
    """`tfds.features.Dataset` that encodes steps given as stacked arrays leaf by leaf.

    The stock encoder converts every step to a dict and checks every leaf in Python (about
    20 s for 5000 pointmass episodes); here each plain leaf is checked once per episode. It
    is saved as a plain `Dataset`, so readers never need this class, and the bytes written
    are the same (tested).
    """

    @property
    def _fully_qualified_class_name(self) -> str:
        return _DATASET_CLASS_NAME

    def encode_example(self, example_ds: Any) -> Any:
        if not isinstance(example_ds, Mapping):
            return super().encode_example(example_ds)
        return _encode_stacked(self.feature, example_ds)


# ----------------------------------------------------------------------------- writing


def _check_target(directory: Path, overwrite: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise DatasetError(f"cannot write a dataset to {directory}: it is a file")
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    if not overwrite:
        raise DatasetError(f"cannot write a dataset to {directory}: the directory is not empty "
                           "(--overwrite, or overwrite=True, replaces a dataset)")
    if not (directory / "dataset_info.json").is_file():
        raise DatasetError(f"refusing to overwrite {directory}: it is not empty and not a TFDS "
                           "dataset (no dataset_info.json), so it may hold something else")


def _peek(splits: Mapping[str, Iterable[Episode]]) -> tuple[Episode, dict[str, Iterator[Episode]]]:
    """The first episode (for the spec) and the splits with nothing consumed."""
    if not splits:
        raise DatasetError("no splits to write")
    out, first = {}, None
    for name, episodes in splits.items():
        it = iter(episodes)
        head = next(it, None)
        if head is None:
            raise DatasetError(f"split {name!r} has no episodes; TFDS cannot store an empty split")
        first = head if first is None else first
        out[name] = itertools.chain([head], it)
    assert first is not None
    return first, out


def write_splits(
    splits: Mapping[str, Iterable[Episode]],
    directory: str | os.PathLike[str],
    *,
    name: str = "efm_episodes",
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes one RLDS dataset with a split per entry; returns its directory.

    Episodes are consumed lazily (no list is built here) and stored in order. The dataset is
    built in a temporary sibling directory and renamed into place, so a failed write leaves
    any previous dataset intact. `metadata` (JSON-serializable) goes to efm_metadata.json; it
    is read once every episode is written, so a caller streaming episodes may fill it in as
    they pass (statistics of the whole dataset).
    """
    directory = Path(directory).absolute()
    _check_target(directory, overwrite)
    first, iters = _peek(splits)
    spec = _Spec(first)
    seen: set[str] = set()

    def examples(episodes: Iterator[Episode]) -> Iterator[tuple[int, dict[str, Any]]]:
        for i, ep in enumerate(episodes):
            if ep.episode_id in seen:
                raise DatasetError(f"duplicate episode_id {ep.episode_id!r}: ids must be unique "
                                   "across all splits (subsampling selects by id)")
            seen.add(ep.episode_id)
            yield i, spec.example(ep)

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    tfds.disable_progress_bar()  # TFDS's per-split bars are noise beside the stage's own progress
    try:
        # TFDS prints "Downloading and preparing dataset ..." on stdout, which is the CLI's
        # result (JSON) channel: its chatter goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            builder = tfds.dataset_builders.store_as_tfds_dataset(
                name=name,
                version=VERSION,
                features=spec.features(),
                split_datasets={s: examples(it) for s, it in iters.items()},
                data_dir=tmp / "build",
                description="Episodes in RLDS format, written by efm.data.rlds.",
                disable_shuffling=True,  # keep episode order: fractions and reads are reproducible
                download_config=tfds.download.DownloadConfig(
                    compute_stats=tfds.download.ComputeStatsMode.SKIP),
            )
        built = Path(os.fspath(builder.data_dir))
        (built / METADATA_FILE).write_text(json.dumps(dict(metadata or {}), indent=2, sort_keys=True))
        _move_into_place(built, directory, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _move_into_place(built: Path, directory: Path, tmp: Path) -> None:
    """Renames the finished dataset `built` to `directory`, keeping what was there in `tmp`
    until it succeeds: a failed write leaves any previous dataset intact."""
    old = tmp / "old"
    if directory.exists():  # empty, or a dataset the caller allowed us to replace
        directory.rename(old)
    try:
        built.rename(directory)
    except OSError:
        if old.exists():
            old.rename(directory)
        raise


def copy_episodes(
    source: str | os.PathLike[str],
    split: str,
    positions: Iterable[int],
    directory: str | os.PathLike[str],
    *,
    out_split: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the episodes at `positions` (indices in stored order) of `source`'s split as a
    dataset of one split, `out_split` (default `split`), in stored order, copying their records
    as they are: no frame is decoded or encoded again and one record is in memory at a time.
    The dataset reads as `write_episodes` writes them (same features, layout and metadata)."""
    builder = _open(source)
    _check_split(builder, split, source)
    directory = Path(directory).absolute()
    _check_target(directory, overwrite)
    info = builder.info.splits[split]
    keep = sorted(set(int(i) for i in positions))
    if not keep:
        raise DatasetError(f"no episodes to copy from {source}; TFDS cannot store an empty split")
    if keep[0] < 0 or keep[-1] >= info.num_examples:
        raise DatasetError(f"{source} (split {split!r}) holds episodes 0..{info.num_examples - 1}, "
                           f"not {keep[0] if keep[0] < 0 else keep[-1]}")
    out_split = out_split or split
    src = epath.Path(source)
    layout = json.loads((src / "dataset_info.json").read_text())
    wanted = np.zeros(info.num_examples, bool)
    wanted[keep] = True
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        built = tmp / "build"
        built.mkdir()
        size = 0
        records = tf.data.TFRecordDataset([os.fspath(f) for f in info.filepaths])
        shard = built / f"{layout['name']}-{out_split}.tfrecord-00000-of-00001"
        with tf.io.TFRecordWriter(os.fspath(shard)) as writer, reading(source):
            for take, record in zip(wanted, records.as_numpy_iterator(), strict=True):
                if take:
                    writer.write(record)
                    size += len(record)
        layout["splits"] = [{"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                             "name": out_split, "numBytes": str(size), "shardLengths": [str(len(keep))]}]
        (built / "dataset_info.json").write_text(json.dumps(layout, indent=2))
        (built / "features.json").write_text((src / "features.json").read_text())
        (built / METADATA_FILE).write_text(json.dumps(dict(metadata or {}), indent=2, sort_keys=True))
        _move_into_place(built, directory, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def write_episodes(
    episodes: Iterable[Episode],
    directory: str | os.PathLike[str],
    *,
    split: str = "train",
    name: str = "efm_episodes",
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes one split of episodes as an RLDS dataset; see `write_splits`."""
    return write_splits({split: episodes}, directory, name=name, metadata=metadata,
                        overwrite=overwrite)


# ----------------------------------------------------------------------------- reading


def absolute(path: str | os.PathLike[str]) -> str:
    """`path` made absolute; a URI (gs://...) is absolute already (pathlib, and epath's
    `absolute()` too, would turn gs://b into a local /cwd/gs:/b)."""
    text = os.fspath(path)
    return text if "://" in text else str(Path(text).absolute())


def _open(directory: str | os.PathLike[str]) -> tfds.core.DatasetBuilder:
    """A TFDS builder for an RLDS dataset directory (a local path or a URI such as gs://, which
    Dataflow's workers read), or a DatasetError saying what is wrong."""
    path = epath.Path(directory)  # pathlib would fold gs://b into gs:/b
    if not path.exists():
        raise DatasetError(f"RLDS dataset {path}: the directory does not exist")
    if not path.is_dir():
        raise DatasetError(f"RLDS dataset {path}: not a directory")
    missing = [f for f in TFDS_FILES if not (path / f).is_file()]
    if missing:
        nested = sorted(str(p.parent) for p in itertools.chain(
            path.glob("*/dataset_info.json"), path.glob("*/*/dataset_info.json")))
        hint = f"; datasets found below it: {nested[:5]}" if nested else ""
        raise DatasetError(f"{path} is not a TFDS dataset: missing {', '.join(missing)}{hint}")
    try:
        builder = tfds.builder_from_directory(os.fspath(path))
        features = builder.info.features
    except Exception as e:
        raise DatasetError(f"TFDS could not open the dataset at {path}: {e}") from e
    if features is None or "steps" not in features:
        keys = sorted(features.keys()) if features is not None else []
        raise DatasetError(f"{path} is not an RLDS dataset: no 'steps' feature "
                           f"(top-level features: {keys})")
    steps = features["steps"]
    if not isinstance(steps, _f.Dataset):
        raise DatasetError(f"{path} is not an RLDS dataset: 'steps' is a {type(steps).__name__}, "
                           "not a tfds.features.Dataset")
    step_keys = set(steps.feature.keys()) if isinstance(steps.feature, _f.FeaturesDict) else set()
    lacking = [k for k in REQUIRED_STEP_KEYS if k not in step_keys]
    if lacking:
        raise DatasetError(f"{path} is not an RLDS dataset: steps lack {lacking} "
                           f"(step keys: {sorted(step_keys)})")
    return builder


def _check_split(builder: tfds.core.DatasetBuilder, split: str, path: str | os.PathLike[str]) -> None:
    available = sorted(builder.info.splits.keys())
    for part in split.split("+"):
        base = part.split("[", 1)[0].strip()
        if base not in available:
            raise DatasetError(f"RLDS dataset {path} has no split {base!r} "
                               f"(splits: {available})")


def split_sizes(directory: str | os.PathLike[str]) -> dict[str, int]:
    """Number of episodes per split."""
    builder = _open(directory)
    return {k: int(v.num_examples) for k, v in builder.info.splits.items()}


def read_metadata(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The `metadata` given when the dataset was written ({} for foreign datasets)."""
    _open(directory)
    path = epath.Path(directory) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_rlds(directory: str | os.PathLike[str], split: str = "train") -> tf.data.Dataset:
    """The raw RLDS dataset: episodes with a nested `steps` tf.data.Dataset, in stored order."""
    builder = _open(directory)
    _check_split(builder, split, directory)
    return builder.as_dataset(split=split, shuffle_files=False)


def _stack_steps(episode: dict[str, Any]) -> dict[str, Any]:
    """Turns the nested steps dataset into tensors [T+1, ...] inside the tf.data graph."""
    out = dict(episode)
    out["steps"] = episode["steps"].batch(2**31 - 1).get_single_element()
    return out


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _to_episode(ex: dict[str, Any], fallback_id: str) -> Episode:
    """One numpy episode to an Episode; foreign RLDS datasets lack our metadata, so fall back."""
    steps, md = ex["steps"], ex.get("episode_metadata", {})
    obs = steps["observation"]
    obs = dict(obs) if isinstance(obs, Mapping) else {"observation": obs}
    if "instruction" in md:
        instruction = _text(md["instruction"])
    elif "language_instruction" in steps and len(steps["language_instruction"]):
        instruction = _text(steps["language_instruction"][0])
    else:
        instruction = ""
    if "success" in md:
        success = bool(md["success"])
    else:
        success = bool("is_terminal" in steps and steps["is_terminal"][-1])
    return Episode(
        observations=obs,
        actions=np.asarray(steps["action"][:-1], np.float32),
        instruction=instruction,
        goal=dict(md.get("goal", {})),
        success=success,
        episode_id=_text(md["episode_id"]) if "episode_id" in md else fallback_id,
        optimal_length=float(md["optimal_length"]) if "optimal_length" in md else float("nan"),
        observation_extras=dict(steps.get("observation_extras", {})),
        action_extras={k: v[:-1] for k, v in steps.get("action_extras", {}).items()},
    )


def _split_rows(x: tf.Tensor | tf.RaggedTensor, what: str) -> list[Array]:
    """A batched leaf to one numpy array per episode (steps are ragged across episodes)."""
    if isinstance(x, tf.RaggedTensor):
        if isinstance(x.values, tf.RaggedTensor):
            raise DatasetError(f"step feature {what!r} has a variable shape within an episode; "
                               "Episode arrays need one shape per episode")
        values, splits = x.values.numpy(), x.row_splits.numpy()
        return [values[a:b] for a, b in itertools.pairwise(splits)]
    return list(x.numpy())


def _unbatch(batch: Any, what: str = "") -> list[Any]:
    if isinstance(batch, Mapping):
        parts = {k: _unbatch(v, f"{what}/{k}".lstrip("/")) for k, v in batch.items()}
        n = len(next(iter(parts.values()))) if parts else 0
        return [{k: p[i] for k, p in parts.items()} for i in range(n)]
    return _split_rows(batch, what)


def iter_episodes(
    directory: str | os.PathLike[str], split: str = "train", *, batch_size: int = 64
) -> Iterator[Episode]:
    """Streams a split's episodes in stored order.

    Steps are stacked and `batch_size` episodes are ragged-batched inside tf.data, so Python
    touches a few tensors per batch instead of every step (5000 pointmass episodes: 2-5 s).
    Lower `batch_size` for large camera images, which are held batch_size episodes at a time.
    """
    ds = load_rlds(directory, split).map(_stack_steps, num_parallel_calls=tf.data.AUTOTUNE,
                                         deterministic=True)
    ds = ds.ragged_batch(batch_size).prefetch(2)
    i = 0
    with reading(directory):
        for batch in ds:
            for ex in _unbatch(batch):
                yield _to_episode(ex, f"{split}-{i}")
                i += 1


def _metadata_field(directory: str | os.PathLike[str], split: str, key: str) -> list[str] | None:
    """One episode_metadata text field of every episode in stored order, without decoding any
    step; None when the dataset has no such field."""
    builder = _open(directory)
    _check_split(builder, split, directory)
    md = builder.info.features["episode_metadata"] if "episode_metadata" in builder.info.features else {}  # noqa: SIM401
    if key not in md:
        return None
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"steps": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda e: e["episode_metadata"][key]).batch(4096)
    with reading(directory):
        return [_text(x) for batch in ds.as_numpy_iterator() for x in batch]


def read_episode_ids(directory: str | os.PathLike[str], split: str = "train") -> list[str]:
    """The split's episode ids in stored order. Foreign datasets without ids get
    "<split>-<index>", as `iter_episodes` names them."""
    ids = _metadata_field(directory, split, "episode_id")
    if ids is None:
        return [f"{split}-{i}" for i in range(_open(directory).info.splits[split].num_examples)]
    return ids


def read_instructions(directory: str | os.PathLike[str], split: str = "train") -> list[str]:
    """Every episode's instruction in stored order, streamed."""
    out = _metadata_field(directory, split, "instruction")
    if out is None:
        raise DatasetError(f"{directory}: episodes carry no instruction metadata")
    return out


def read_episodes(directory: str | os.PathLike[str], split: str = "train") -> list[Episode]:
    """All of a split's episodes, in stored order."""
    return list(iter_episodes(directory, split))
