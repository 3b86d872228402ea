"""RLDS datasets as TFDV's two Arrow tables (steps, episodes), read chunk by chunk from the
TFDS shards; camera images summarised from their encoded headers, never decoded."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from efm.data import rlds as rlds_io
from efm.data.rlds import DatasetError

STEPS_TABLE = "steps"
EPISODES_TABLE = "episodes"
TABLES = (STEPS_TABLE, EPISODES_TABLE)


# RLDS keys.
STEPS = "steps"
EPISODE_METADATA = "episode_metadata"
OBSERVATION = "observation"
ACTION = "action"
REWARD = "reward"
DISCOUNT = "discount"
IS_FIRST, IS_LAST, IS_TERMINAL = "is_first", "is_last", "is_terminal"
FLAGS = (IS_FIRST, IS_LAST, IS_TERMINAL)
LANGUAGE_INSTRUCTION = "language_instruction"
INSTRUCTION_CODES = "instruction"  # LanguageTable: observation/instruction int32[512] codes
IMAGE_SUMMARY = ("format", "height", "width", "channels", "bytes")

ALL = "all"  # the slice of every episode
EPISODE_INDEX = "__episode"  # helper column: a step's episode within its chunk


def _png_or_jpeg_header(data: bytes) -> tuple[str, int, int, int]:
    """(format, height, width, channels) from an encoded image's header; -1 where unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 26:
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(data[25], -1)
        return "png", height, width, channels
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return ("jpeg", int.from_bytes(data[i + 5:i + 7], "big"),
                        int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9])
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        return "jpeg", -1, -1, -1
    return "unknown", -1, -1, -1


def list_column(values: np.ndarray, rows: int) -> pa.Array:
    """[rows, ...] values as a list<...> column, one list per row (TFDV's Arrow layout)."""
    flat = values.reshape(rows, -1) if rows else values.reshape(0, 0)
    width = flat.shape[1] if flat.ndim == 2 else 0
    if flat.dtype == np.bool_ or flat.dtype.kind in "iu":
        flat = flat.astype(np.int64)
    elif flat.dtype.kind == "f":
        flat = flat.astype(np.float32)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1)))


def _bytes_column(values: Sequence[bytes] | np.ndarray) -> pa.Array:
    """One bytes value per row, as a list<binary> column."""
    flat = pa.array(values if isinstance(values, np.ndarray) else list(values), type=pa.binary())
    return pa.ListArray.from_arrays(pa.array(np.arange(len(flat) + 1, dtype=np.int32)), flat)


def _decode_codes(codes: np.ndarray) -> bytes:
    body = codes[codes != 0]
    return bytes(np.clip(body, 0, 255).astype(np.uint8).tobytes())


@dataclass
class Chunk:
    """A few episodes as the two Arrow tables, with their ids (to select branch splits)."""

    episode_ids: list[str]
    steps: pa.RecordBatch
    episodes: pa.RecordBatch

    def select(self, keep: np.ndarray) -> Chunk:
        """The episodes where `keep` (bool per episode) and their steps."""
        index = self.steps.column(EPISODE_INDEX).flatten().to_numpy()
        return Chunk([i for i, k in zip(self.episode_ids, keep, strict=True) if k],
                     self.steps.filter(pa.array(keep[index])), self.episodes.filter(pa.array(keep)))


def chunk_from_arrays(steps: Mapping[str, tuple[np.ndarray, np.ndarray]], md: Mapping[str, np.ndarray],
                      images: set[str], first_index: int, split: str) -> Chunk:
    """Episodes as a `Chunk`. `steps`: feature path -> (values [N, ...] over all steps of the
    episodes, steps per episode [B]); `md`: episode metadata path -> values [B, ...]; image
    features hold encoded bytes."""
    lengths = steps[IS_LAST][1] if IS_LAST in steps else next(iter(steps.values()))[1]
    b = len(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(starts[-1])
    columns: dict[str, pa.Array] = {}
    per_episode: dict[str, np.ndarray] = {}
    for name, (values, _) in steps.items():
        if name in images:
            data = list(values.reshape(-1))
            headers = [_png_or_jpeg_header(d) for d in data]
            columns[f"{name}/format"] = _bytes_column([h[0].encode() for h in headers])
            for j, key in enumerate(("height", "width", "channels"), start=1):
                columns[f"{name}/{key}"] = list_column(np.array([h[j] for h in headers], np.int64), n)
            columns[f"{name}/bytes"] = list_column(np.array([len(d) for d in data], np.int64), n)
        elif name.rsplit("/", 1)[-1] == INSTRUCTION_CODES and values.dtype.kind in "iu":
            columns[name] = _bytes_column([_decode_codes(v) for v in values.reshape(n, -1)])
        elif values.dtype == object:
            columns[name] = _bytes_column(values.reshape(-1))
        else:
            columns[name] = list_column(values, n)
            if name in FLAGS or name == REWARD:
                per_episode[name] = values.reshape(n, -1)[:, 0]
    columns[EPISODE_INDEX] = list_column(np.repeat(np.arange(b), lengths), n)
    step_batch = pa.RecordBatch.from_pydict(columns)

    ids = ([bytes(v).decode() for v in md["episode_id"].reshape(-1)] if "episode_id" in md
           else [f"{split}-{first_index + i}" for i in range(b)])
    ep: dict[str, pa.Array] = {"length": list_column(np.asarray(lengths, np.int64) - 1, b)}
    pairs = list(itertools.pairwise(starts))
    for flag in FLAGS:
        if flag in per_episode:
            v = per_episode[flag].astype(np.int64)
            ep[f"{flag}_count"] = list_column(np.array([v[a:z].sum() for a, z in pairs], np.int64), b)
    if REWARD in per_episode:
        ep["return"] = list_column(np.array([per_episode[REWARD][a:z].sum() for a, z in pairs], np.float32), b)
    if "success" in md:
        ep["success"] = list_column(md["success"].reshape(b).astype(np.int64), b)
    elif IS_TERMINAL in per_episode:
        term = per_episode[IS_TERMINAL].astype(bool)
        ep["success"] = list_column(np.array([bool(term[z - 1]) if z > a else False for a, z in pairs]), b)
    text = _instructions(md, step_batch, starts, b)
    if text is not None:
        ep["instruction"] = _bytes_column(text)
        ep["instruction_bytes"] = list_column(np.array([len(t) for t in text], np.int64), b)
    for name, values in md.items():
        if name in ("episode_id", "success", "instruction", "length") or values.dtype == object:
            continue
        ep[name] = list_column(values, b)
    return Chunk(ids, step_batch, pa.RecordBatch.from_pydict(ep))


def _instructions(md: Mapping[str, Any], steps: pa.RecordBatch, starts: np.ndarray, b: int
                  ) -> list[bytes] | None:
    if "instruction" in md:
        return [bytes(v) for v in md["instruction"].reshape(-1)]
    for name in (LANGUAGE_INSTRUCTION, f"{OBSERVATION}/{INSTRUCTION_CODES}"):
        if name in steps.schema.names:
            col = steps.column(name).flatten().to_pylist()
            return [col[a] if z > a else b"" for a, z in itertools.pairwise(starts)]
    return None


def _flat_info(info: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in info.items():
        if isinstance(v, Mapping):
            yield from _flat_info(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def image_features(directory: str | os.PathLike[str]) -> set[str]:
    """Step feature paths ("observation/rgb") that are encoded images."""
    import tensorflow_datasets as tfds

    features = rlds_io._open(directory).info.features[STEPS].feature

    def walk(f: Any, prefix: str) -> Iterator[str]:
        if isinstance(f, tfds.features.FeaturesDict):
            for k, v in f.items():
                yield from walk(v, f"{prefix}{k}/")
        elif isinstance(f, tfds.features.Image | tfds.features.Video):
            yield prefix.rstrip("/")

    return set(walk(features, ""))


def _parse_spec(directory: str | os.PathLike[str]) -> dict[str, tuple[str, Any, tuple[int, ...]]]:
    """Serialized key -> (table, tf dtype, per-element shape) of a TFDS RLDS dataset."""
    import tensorflow as tf

    info = rlds_io._open(directory).info.features.get_serialized_info()
    spec = {}
    for key, t in _flat_info(info):
        if key.startswith(f"{STEPS}/"):
            table, shape = STEPS, tuple(t.shape[1:])
        else:
            table, shape = EPISODE_METADATA, tuple(t.shape)
        if any(d is None for d in shape):
            raise DatasetError(f"{directory}: feature {key!r} has a variable shape {t.shape}; "
                               "validation needs fixed per-step shapes")
        dtype = (tf.string if t.dtype == tf.string else tf.float32 if t.dtype.is_floating else tf.int64)
        spec[key] = (table, dtype, shape)
    return spec


def read_chunks(directory: str | os.PathLike[str], split: str, shard: int = 0, shards: int = 1,
                batch_size: int = 256) -> Iterator[Chunk]:
    """Shard `shard` of `shards` of a split (contiguous TFDS files) as Chunks of `batch_size`
    episodes. The records are parsed in bulk (tf.io.parse_example); images stay encoded."""
    import tensorflow as tf

    builder = rlds_io._open(directory)
    files = [os.fspath(f) for f in builder.info.splits[split].filepaths]
    counts = list(builder.info.splits[split].shard_lengths) or [0] * len(files)
    per = -(-len(files) // shards)
    mine = files[shard * per:(shard + 1) * per]
    first = int(sum(counts[:shard * per]))
    if not mine:
        return
    images = image_features(directory)
    spec = _parse_spec(directory)
    features = {k: tf.io.RaggedFeature(dtype) for k, (_, dtype, _) in spec.items()}
    ds = tf.data.TFRecordDataset(mine).batch(batch_size).map(
        lambda x: tf.io.parse_example(x, features)).prefetch(1)
    for parsed in ds:
        steps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        md: dict[str, np.ndarray] = {}
        for key, (table, _, shape) in spec.items():
            x = parsed[key]
            values, counts_ = x.flat_values.numpy(), np.diff(x.row_splits.numpy())
            width = int(np.prod(shape)) if shape else 1
            if table == STEPS:
                steps[key[len(STEPS) + 1:]] = (values.reshape(-1, *shape), counts_ // max(width, 1))
            else:
                md[key[len(EPISODE_METADATA) + 1:]] = values.reshape(-1, *shape)
        chunk = chunk_from_arrays(steps, md, images, first, split)
        first += len(chunk.episode_ids)
        yield chunk
