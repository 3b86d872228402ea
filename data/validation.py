"""Data validation of RLDS datasets with TensorFlow Data Validation (TFX's StatisticsGen,
SchemaGen and ExampleValidator roles), before any training.

An RLDS dataset is two tables for TFDV, each one Arrow row per element:

  steps     one row per RLDS step: `action`, every non-image `observation/<k>`,
            `observation_extras/<k>`, `action_extras/<k>`, `reward`, `discount`, the flags
            `is_first/is_last/is_terminal` (0/1), `language_instruction`; a camera image
            `observation/<k>` is summarised, not read per pixel, as `<k>/format` ("png",
            "jpeg"), `<k>/height`, `<k>/width`, `<k>/channels` and `<k>/bytes` (from the
            encoded headers; nothing is decoded)
  episodes  one row per episode: `length` (actions, T), `success`, `instruction`,
            `instruction_bytes`, `return`, `is_first_count`, `is_last_count`,
            `is_terminal_count`, `optimal_length` and `goal/<k>` where the data has them

Statistics are computed by TFDV on Apache Beam: the DirectRunner in-process by default, the
DataflowRunner (`ValidationConfig.runner`) for datasets that outgrow one machine; the dataset
is read shard by shard (TFDS files), so the work splits across Beam workers.

Each domain has a reviewed schema per table in `schemas/<domain>/` (kept in the repository, so
a change to a domain's data shows as a diff) with the ranges that matter (actions within the
tokenizer's range, flags boolean, episodes non-empty, an instruction present), drift
comparators against the domain's reference statistics (also in `schemas/<domain>/`), and skew
comparators for the training split against the validation split. `infer_domain_schema`
regenerates them (`efm data validate PATH --domain D --write-schema`).

An anomaly is named `<table>:<feature>:<TYPE>` (TYPE from TFDV's AnomalyInfo.Type), e.g.
`steps:action:FLOAT_TYPE_BIG_FLOAT`; `ValidationConfig.accept` lists accepted ones
(`steps:action` accepts every anomaly of that feature, `*` all), which are reported but do not
fail the gate.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from efm.data import rlds as rlds_io
from efm.data.rlds import DatasetError

STEPS_TABLE = "steps"
EPISODES_TABLE = "episodes"
TABLES = (STEPS_TABLE, EPISODES_TABLE)
SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMA_FILE = "{table}_schema.pbtxt"
REFERENCE_FILE = "{table}_reference_stats.pbtxt"

# Output files of `validate_dataset` (the step's artifact).
REPORT_JSON = "validation.json"
REPORT_HTML = "validation.html"
FACETS_HTML = "facets.html"
STATS_FILE = "{table}_stats.pb"

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
_EPISODE_INDEX = "__episode"  # helper column: a step's episode within its chunk

GCS_FUSE_PREFIX = "/gcs/"  # where Vertex mounts Cloud Storage buckets in a task


class ValidationError(DatasetError):
    """The dataset does not match its domain's schema; `report` has every anomaly."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary())


# ----------------------------------------------------------------------------- featurizing


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


def _list_column(values: np.ndarray, rows: int) -> pa.Array:
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
        index = self.steps.column(_EPISODE_INDEX).flatten().to_numpy()
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
                columns[f"{name}/{key}"] = _list_column(np.array([h[j] for h in headers], np.int64), n)
            columns[f"{name}/bytes"] = _list_column(np.array([len(d) for d in data], np.int64), n)
        elif name.rsplit("/", 1)[-1] == INSTRUCTION_CODES and values.dtype.kind in "iu":
            columns[name] = _bytes_column([_decode_codes(v) for v in values.reshape(n, -1)])
        elif values.dtype == object:
            columns[name] = _bytes_column(values.reshape(-1))
        else:
            columns[name] = _list_column(values, n)
            if name in FLAGS or name == REWARD:
                per_episode[name] = values.reshape(n, -1)[:, 0]
    columns[_EPISODE_INDEX] = _list_column(np.repeat(np.arange(b), lengths), n)
    step_batch = pa.RecordBatch.from_pydict(columns)

    ids = ([bytes(v).decode() for v in md["episode_id"].reshape(-1)] if "episode_id" in md
           else [f"{split}-{first_index + i}" for i in range(b)])
    ep: dict[str, pa.Array] = {"length": _list_column(np.asarray(lengths, np.int64) - 1, b)}
    pairs = list(itertools.pairwise(starts))
    for flag in FLAGS:
        if flag in per_episode:
            v = per_episode[flag].astype(np.int64)
            ep[f"{flag}_count"] = _list_column(np.array([v[a:z].sum() for a, z in pairs], np.int64), b)
    if REWARD in per_episode:
        ep["return"] = _list_column(np.array([per_episode[REWARD][a:z].sum() for a, z in pairs], np.float32), b)
    if "success" in md:
        ep["success"] = _list_column(md["success"].reshape(b).astype(np.int64), b)
    elif IS_TERMINAL in per_episode:
        term = per_episode[IS_TERMINAL].astype(bool)
        ep["success"] = _list_column(np.array([bool(term[z - 1]) if z > a else False for a, z in pairs]), b)
    text = _instructions(md, step_batch, starts, b)
    if text is not None:
        ep["instruction"] = _bytes_column(text)
        ep["instruction_bytes"] = _list_column(np.array([len(t) for t in text], np.int64), b)
    for name, values in md.items():
        if name in ("episode_id", "success", "instruction", "length") or values.dtype == object:
            continue
        ep[name] = _list_column(values, b)
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


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class BeamSettings:
    """Where TFDV's Beam pipeline runs. DirectRunner: in this process; DataflowRunner: Google
    Cloud Dataflow in `project`/`region`, workers in the project image (`sdk_container_image`),
    temporary files under `temp_location` (gs://)."""

    runner: str = "DirectRunner"
    direct_num_workers: int = 1
    project: str = ""
    region: str = ""
    temp_location: str = ""
    sdk_container_image: str = ""
    job_name: str = ""
    max_num_workers: int = 0
    service_account: str = ""


def beam_options(settings: BeamSettings) -> Any:
    """`PipelineOptions` for `settings`; a DataflowRunner needs project, region and a gs://
    temp_location (checked here, before anything is sent)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    if settings.runner == "DirectRunner":
        return PipelineOptions(flags=[], runner="DirectRunner", direct_num_workers=settings.direct_num_workers,
                               direct_running_mode="in_memory")
    if settings.runner != "DataflowRunner":
        raise ValueError(f"validation runner must be DirectRunner or DataflowRunner, got {settings.runner!r}")
    missing = [k for k in ("project", "region", "temp_location") if not getattr(settings, k)]
    if missing:
        raise ValueError(f"the DataflowRunner needs {', '.join(missing)} (on Vertex the pipeline "
                         "passes its project, region and pipeline root)")
    if not settings.temp_location.startswith("gs://"):
        raise ValueError(f"temp_location must be gs://..., got {settings.temp_location!r}")
    flags: dict[str, Any] = {"runner": "DataflowRunner", "project": settings.project,
                             "region": settings.region, "temp_location": settings.temp_location,
                             "staging_location": settings.temp_location.rstrip("/") + "/staging",
                             "experiments": ["use_runner_v2"], "save_main_session": False}
    for k in ("sdk_container_image", "job_name", "service_account"):
        if getattr(settings, k):
            flags["service_account_email" if k == "service_account" else k] = getattr(settings, k)
    if settings.max_num_workers:
        flags["max_num_workers"] = settings.max_num_workers
    return PipelineOptions(flags=[], **flags)


def gcs_uri(path: str) -> str:
    """Vertex mounts buckets at /gcs/BUCKET/...; Dataflow workers read gs://BUCKET/..."""
    return "gs://" + path[len(GCS_FUSE_PREFIX):] if path.startswith(GCS_FUSE_PREFIX) else path


def _stats_options(schema: Any | None) -> Any:
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(schema=schema, num_top_values=10, num_rank_histogram_buckets=20,
                             num_histogram_buckets=10, num_quantiles_histogram_buckets=10,
                             infer_type_from_schema=False)


def _read_shard(spec: tuple[str, str, int, int]) -> Iterator[Chunk]:
    directory, split, shard, shards = spec
    yield from read_chunks(directory, split, shard, shards)


_SLICES = "__slices"  # helper column: bit i set if the row belongs to named slice i
_ALL_EXAMPLES = "All Examples"  # TFDV's name of the unsliced dataset


def _table(chunk: Chunk, table: str, members: Sequence[frozenset[str]]) -> Iterator[pa.RecordBatch]:
    """The chunk's `table` with the slice membership of every row as a bitmask column."""
    bits = np.zeros(len(chunk.episode_ids), np.int64)
    for i, ids in enumerate(members):
        bits |= np.array([e in ids for e in chunk.episode_ids], np.int64) << i
    batch = chunk.steps if table == STEPS_TABLE else chunk.episodes
    if table == STEPS_TABLE:
        bits = bits[batch.column(_EPISODE_INDEX).flatten().to_numpy()]
        batch = _drop(batch, [_EPISODE_INDEX])
    if batch.num_rows:
        yield pa.RecordBatch.from_arrays([*batch.columns, _list_column(bits, len(bits))],
                                         [*batch.schema.names, _SLICES])


def _slice_rows(names: Sequence[str], batch: pa.RecordBatch) -> Iterator[tuple[str, pa.RecordBatch]]:
    """TFDV slice function: the rows of each named slice, without the helper column."""
    bits = batch.column(_SLICES).flatten().to_numpy()
    plain = _drop(batch, [_SLICES])
    for i, name in enumerate(names):
        keep = (bits >> i) & 1 == 1
        if keep.any():
            yield name, plain.filter(pa.array(keep))


def compute_statistics(
    directory: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    slices: Mapping[str, Iterable[str]] | None = None,
    settings: BeamSettings = BeamSettings(),
    split: str | None = None,
    make_pipeline: Callable[[Any], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """TFDV statistics of every table of the dataset at `directory`, in one Beam pipeline.

    Slice "all" holds every episode; `slices` maps more names to episode ids (a branch's
    training and validation splits), computed as TFDV slices of the same pass. Returns
    {table: {slice: DatasetFeatureStatisticsList}}; the binary protos are also written to
    `out_dir` (a gs:// directory with Dataflow). `make_pipeline(options)` builds the Beam
    pipeline (default `beam.Pipeline`; tests pass a fake).
    """
    import logging

    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import statistics_pb2

    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # its per-file notices are noise here
    sizes = rlds_io.split_sizes(directory)
    if split is None:
        if len(sizes) != 1:
            raise DatasetError(f"{directory} holds splits {sorted(sizes)}: name the one to validate")
        split = next(iter(sizes))
    elif split not in sizes:
        raise DatasetError(f"{directory} has no split {split!r} (splits: {sorted(sizes)})")
    names = list(slices or {})
    if len(names) > 62:
        raise ValueError(f"at most 62 slices (branch splits) per validation, got {len(names)}")
    members = [frozenset((slices or {})[n]) for n in names]
    shards = _shard_count(directory, split)
    options = beam_options(settings)
    remote = settings.runner != "DirectRunner"
    source = gcs_uri(os.fspath(directory)) if remote else os.fspath(Path(directory).absolute())
    target = gcs_uri(os.fspath(out_dir)) if remote else os.fspath(out_dir)
    if not remote:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = {t: f"{target.rstrip('/')}/{STATS_FILE.format(table=t)}" for t in TABLES}
    pipeline = (make_pipeline or (lambda o: beam.Pipeline(options=o)))(options)
    with pipeline as p:
        chunks = (p | "shards" >> beam.Create([(source, split, i, shards) for i in range(shards)])
                  | "read" >> beam.FlatMap(_read_shard))
        for table, path in paths.items():
            stats_options = _stats_options(None)
            if names:
                def slice_fn(batch: pa.RecordBatch) -> Iterator[tuple[str, pa.RecordBatch]]:
                    return _slice_rows(names, batch)  # TFDV takes plain functions only

                stats_options.experimental_slice_functions = [slice_fn]
            _ = (chunks | f"{table} rows" >> beam.FlatMap(_table, table, members)
                 | f"{table} statistics" >> tfdv.GenerateStatistics(stats_options)
                 | f"write {table}" >> tfdv.WriteStatisticsToBinaryFile(path))
    out: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
    for table, path in paths.items():
        with tf.io.gfile.GFile(path, "rb") as f:
            found = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
        by_name = {d.name: d for d in found.datasets}
        for name in [ALL, *names]:
            one = statistics_pb2.DatasetFeatureStatisticsList()
            d = by_name.get(_ALL_EXAMPLES if name == ALL else name)
            if d is None and name == ALL and len(by_name) == 1:
                d = next(iter(by_name.values()))
            if d is not None:
                one.datasets.add().CopyFrom(d)
                kept = [f for f in one.datasets[0].features if "/".join(f.path.step) != _SLICES]
                del one.datasets[0].features[:]
                one.datasets[0].features.extend(kept)
                one.datasets[0].name = name
            else:  # a slice without episodes
                one.datasets.add(name=name, num_examples=0)
            out[table][name] = one
    return out


def _shard_count(directory: str | os.PathLike[str], split: str) -> int:
    info = rlds_io._open(directory).info
    return max(1, len(info.splits[split].shard_lengths))


# ----------------------------------------------------------------------------- schemas


def schema_dir(domain: str, root: str | os.PathLike[str] | None = None) -> Path:
    return Path(root or SCHEMA_DIR) / domain


def load_schemas(domain: str, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The domain's reviewed schema per table; a DatasetError naming the file if missing."""
    import tensorflow_data_validation as tfdv

    out = {}
    for table in TABLES:
        path = schema_dir(domain, root) / SCHEMA_FILE.format(table=table)
        if not path.is_file():
            raise DatasetError(f"no schema for domain {domain!r}: {path} is missing (infer one with "
                               f"`efm data validate PATH --domain {domain} --write-schema`)")
        out[table] = tfdv.load_schema_text(str(path))
    return out


def load_reference(domain: str, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The domain's reference statistics per table (the drift baseline); {} where absent."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import statistics_pb2

    out = {}
    for table in TABLES:
        path = schema_dir(domain, root) / REFERENCE_FILE.format(table=table)
        if path.is_file():
            out[table] = text_format.Parse(path.read_text(), statistics_pb2.DatasetFeatureStatisticsList())
    return out


@dataclass(frozen=True)
class SchemaRules:
    """What a domain's schema pins beyond what TFDV infers."""

    action_max_abs: float = 1.0  # the tokenizer's range
    max_episode_steps: int = 100
    drift_threshold: float = 0.1  # Jensen-Shannon divergence (numeric) / L-inf (categorical)
    skew_threshold: float = 0.1
    # Numeric features compared by Jensen-Shannon divergence of their histograms. (Near-constant
    # 0/1 features such as success give degenerate histograms, whose divergence TFDV reports
    # as 1: the success rate is in the report instead.)
    drift_features: tuple[str, ...] = ("steps:action", "episodes:length")


def _feature(schema: Any, name: str) -> Any:
    for f in schema.feature:
        if f.name == name:
            return f
    return None


def infer_domain_schema(stats: Mapping[str, Any], rules: SchemaRules) -> dict[str, Any]:
    """The schema per table from a clean dataset's statistics, plus the domain's rules."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    schemas = {t: tfdv.infer_schema(stats[t], infer_feature_shape=True) for t in TABLES}
    steps, episodes = schemas[STEPS_TABLE], schemas[EPISODES_TABLE]
    action = _feature(steps, ACTION)
    if action is not None:
        action.float_domain.min, action.float_domain.max = -rules.action_max_abs, rules.action_max_abs
    for flag in FLAGS:
        f = _feature(steps, flag)
        if f is not None:
            f.ClearField("int_domain")
            f.bool_domain.SetInParent()
    for name, lo, hi in ((REWARD, 0.0, 1.0), (DISCOUNT, 0.0, 1.0)):
        f = _feature(steps, name)
        if f is not None:
            f.float_domain.min, f.float_domain.max = lo, hi
    for name in ("length",):
        f = _feature(episodes, name)
        if f is not None:
            f.int_domain.min, f.int_domain.max = 1, rules.max_episode_steps
    for name in ("is_first_count", "is_last_count"):
        f = _feature(episodes, name)
        if f is not None:
            f.int_domain.min = f.int_domain.max = 1
    f = _feature(episodes, "success")
    if f is not None:
        f.ClearField("int_domain")
        f.bool_domain.SetInParent()
    f = _feature(episodes, "instruction_bytes")
    if f is not None:
        f.int_domain.min = 1
    for f in episodes.feature:
        if f.name == "instruction" or f.name.startswith("goal/"):
            f.presence.min_fraction = 1.0
    # Image summaries: the format and size are fixed per domain; string domains for free text
    # (instructions) would flag every new instruction, so TFDV's inferred ones are dropped.
    for schema in (steps, episodes):
        for f in schema.feature:
            if f.name.endswith("/format"):
                continue
            if f.HasField("string_domain") or f.domain:
                f.ClearField("domain")
        keep = {f.domain for f in schema.feature if f.domain}
        for d in [d for d in schema.string_domain if d.name not in keep]:
            schema.string_domain.remove(d)
    for image in {f.name.rsplit("/", 1)[0] for f in steps.feature if f.name.endswith("/format")}:
        for key in ("height", "width", "channels"):
            f = _feature(steps, f"{image}/{key}")
            col = _numeric(stats[STEPS_TABLE], f"{image}/{key}")
            if f is not None and col is not None:
                f.int_domain.min, f.int_domain.max = int(col.min), int(col.max)
    for spec in rules.drift_features:
        table, name = spec.split(":", 1)
        f = _feature(schemas[table], name)
        if f is None:
            continue
        categorical = f.type == schema_pb2.FeatureType.BYTES
        for comparator in (f.drift_comparator, f.skew_comparator):
            threshold = rules.drift_threshold if comparator is f.drift_comparator else rules.skew_threshold
            if categorical:
                comparator.infinity_norm.threshold = threshold
            else:
                comparator.jensen_shannon_divergence.threshold = threshold
    return schemas


def _numeric(stats: Any, name: str) -> Any:
    for f in stats.datasets[0].features:
        if (f.path.step and "/".join(f.path.step) == name) or f.name == name:
            return f.num_stats if f.HasField("num_stats") else None
    return None


def write_schemas(schemas: Mapping[str, Any], stats: Mapping[str, Any], domain: str,
                  root: str | os.PathLike[str] | None = None) -> Path:
    """Writes the domain's schema and reference statistics (text protos, for review)."""
    from google.protobuf import text_format

    d = schema_dir(domain, root)
    d.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        header = (f"# TFDV schema of the {table} of domain {domain!r} (efm.data.validation), inferred from a "
                  "clean dataset by\n# `efm data validate PATH --domain "
                  f"{domain} --write-schema` and reviewed; ranges and comparators are the domain's rules.\n")
        (d / SCHEMA_FILE.format(table=table)).write_text(header + text_format.MessageToString(schemas[table]))
        (d / REFERENCE_FILE.format(table=table)).write_text(
            text_format.MessageToString(_strip_for_reference(stats[table])))
    return d


def _strip_for_reference(stats: Any) -> Any:
    """Reference statistics without the top values of free text (instructions): they are large
    and say nothing about drift."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    out = statistics_pb2.DatasetFeatureStatisticsList()
    out.CopyFrom(stats)
    for ds in out.datasets:
        for f in ds.features:
            name = "/".join(f.path.step)
            if f.HasField("string_stats") and "instruction" in name:
                f.string_stats.ClearField("top_values")
                f.string_stats.ClearField("rank_histogram")
    return out


# ----------------------------------------------------------------------------- validating


@dataclass(frozen=True)
class Anomaly:
    name: str  # <table>:<feature>:<TYPE>
    table: str
    feature: str
    type: str
    description: str
    check: str  # schema, drift (vs the domain's reference) or skew (train vs validation of a branch)
    slice: str = ALL
    accepted: bool = False


@dataclass
class ValidationReport:
    domain: str
    path: str
    anomalies: list[Anomaly] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # drift/skew checks left out (too few episodes)

    @property
    def failed(self) -> list[Anomaly]:
        return [a for a in self.anomalies if not a.accepted]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"data validation of {self.path} against the {self.domain!r} schema: "
                 + ("passed" if self.ok else f"{len(self.failed)} anomalies")]
        for a in self.anomalies:
            where = "" if a.slice == ALL else f" [{a.slice}]"
            mark = " (accepted)" if a.accepted else ""
            lines.append(f"  {a.name}{where}{mark}: {a.description}")
        lines += [f"  not checked: {s}" for s in self.skipped]
        return "\n".join(lines)

    def accepting(self, accept: Sequence[str]) -> ValidationReport:
        """The same report with the anomalies that `accept` names marked accepted."""
        marked = [dataclasses.replace(a, accepted=a.accepted or is_accepted(a.name, accept)) for a in self.anomalies]
        return dataclasses.replace(self, anomalies=marked)

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "path": self.path, "ok": self.ok, "counts": self.counts,
                "seconds": self.seconds, "skipped": self.skipped,
                "anomalies": [a.__dict__ for a in self.anomalies],
                "failed": [a.name for a in self.failed]}


def _anomalies(proto: Any, table: str, check: str, slice_name: str) -> list[Anomaly]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    out = []
    for feature, info in sorted(proto.anomaly_info.items()):
        for reason in info.reason or [None]:
            kind = anomalies_pb2.AnomalyInfo.Type.Name(reason.type) if reason else "UNKNOWN_TYPE"
            text = reason.description if reason else info.description
            out.append(Anomaly(f"{table}:{feature}:{kind}", table, feature, kind, text, check, slice_name))
    if proto.HasField("dataset_anomaly_info"):
        for reason in proto.dataset_anomaly_info.reason:
            kind = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
            out.append(Anomaly(f"{table}:*:{kind}", table, "*", kind, reason.description, check, slice_name))
    return out


def is_accepted(name: str, accept: Sequence[str]) -> bool:
    """`accept` entries: a full name, a prefix of whole parts (`steps:action`), or a glob."""
    parts = name.split(":")
    return any(fnmatchcase(name, a) or a.split(":") == parts[:len(a.split(":"))] for a in accept)


def _with_comparators_only(schema: Any, kind: str) -> Any:
    """A copy of `schema` that keeps only `kind` ("drift_comparator"/"skew_comparator"), so a
    drift/skew check reports only that and not the schema anomalies again."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    out = schema_pb2.Schema()
    out.CopyFrom(schema)
    for f in out.feature:
        for other in ("drift_comparator", "skew_comparator"):
            if other != kind:
                f.ClearField(other)
    return out


MIN_EPISODES_TO_COMPARE = 200  # drift and skew need samples whose histograms mean something


def _episodes_in(stats: Mapping[str, Mapping[str, Any]], name: str) -> int:
    return int(stats[EPISODES_TABLE][name].datasets[0].num_examples)


def validate_statistics(
    stats: Mapping[str, Mapping[str, Any]],
    schemas: Mapping[str, Any],
    reference: Mapping[str, Any] | None = None,
    branches: Mapping[str, tuple[str, str]] | None = None,
    min_episodes: int = MIN_EPISODES_TO_COMPARE,
) -> tuple[list[Anomaly], list[str]]:
    """Anomalies of slice "all" against the schemas, drift of "all" against the reference
    statistics, and skew of each branch's (train slice, validation slice); and the drift/skew
    checks skipped because a side has fewer than `min_episodes` episodes."""
    import tensorflow_data_validation as tfdv

    out: list[Anomaly] = []
    skipped: list[str] = []
    if reference and _episodes_in(stats, ALL) < min_episodes:
        skipped.append(f"drift: {_episodes_in(stats, ALL)} episodes < {min_episodes}")
        reference = None
    if branches:
        small = {label: pair for label, pair in branches.items()
                 if min(_episodes_in(stats, pair[0]), _episodes_in(stats, pair[1])) < min_episodes}
        skipped += [f"skew {label}: {_episodes_in(stats, a)} / {_episodes_in(stats, b)} episodes, fewer than "
                    f"{min_episodes}" for label, (a, b) in small.items()]
        branches = {k: v for k, v in branches.items() if k not in small}
    for table in TABLES:
        schema = schemas[table]
        out += _anomalies(tfdv.validate_statistics(stats[table][ALL], schema), table, "schema", ALL)
        if reference and table in reference:
            drift_schema = _with_comparators_only(schema, "drift_comparator")
            base = tfdv.validate_statistics(reference[table], drift_schema)  # schema noise of the baseline
            got = tfdv.validate_statistics(stats[table][ALL], drift_schema, previous_statistics=reference[table])
            known = {a.name for a in _anomalies(base, table, "drift", ALL)}
            known |= {a.name for a in _anomalies(tfdv.validate_statistics(stats[table][ALL], drift_schema),
                                                 table, "drift", ALL)}
            out += [a for a in _anomalies(got, table, "drift", ALL) if a.name not in known]
        for label, (train, validation) in (branches or {}).items():
            skew_schema = _with_comparators_only(schema, "skew_comparator")
            got = tfdv.validate_statistics(stats[table][train], skew_schema,
                                           serving_statistics=stats[table][validation])
            plain = {a.name for a in _anomalies(tfdv.validate_statistics(stats[table][train], skew_schema),
                                                table, "skew", label)}
            out += [a for a in _anomalies(got, table, "skew", label) if a.name not in plain]
    return out, skipped


def dataset_counts(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Episodes and steps per slice (from the statistics)."""
    return {name: {"episodes": int(stats[EPISODES_TABLE][name].datasets[0].num_examples),
                   "steps": int(stats[STEPS_TABLE][name].datasets[0].num_examples)}
            for name in stats[EPISODES_TABLE]}


def branch_slices(episode_ids: Sequence[str], validation_episodes: int, fractions: Sequence[float],
                  seeds: Sequence[int]) -> tuple[dict[str, list[str]], dict[str, tuple[str, str]]]:
    """The training and validation episode ids of every (fraction, seed) branch, drawn exactly
    as `efm.data.subsample` draws them; and branch label -> (train slice, validation slice)."""
    from efm.data.subsample import nested_fractions, split_validation

    slices: dict[str, list[str]] = {}
    branches: dict[str, tuple[str, str]] = {}
    for seed in seeds:
        train_ids, val_ids = split_validation(episode_ids, validation_episodes, seed)
        slices[f"validation-s{seed}"] = val_ids
        for f, ids in nested_fractions(train_ids, fractions, seed).items():
            slices[f"train-f{f:g}-s{seed}"] = ids
            branches[f"f{f:g}-s{seed}"] = (f"train-f{f:g}-s{seed}", f"validation-s{seed}")
    return slices, branches


def episode_ids(directory: str | os.PathLike[str], split: str | None = None) -> list[str]:
    """The split's episode ids in stored order, read from the metadata alone (no steps)."""
    import tensorflow_datasets as tfds

    builder = rlds_io._open(directory)
    split = split or next(iter(rlds_io.split_sizes(directory)))
    if EPISODE_METADATA not in builder.info.features or \
            "episode_id" not in builder.info.features[EPISODE_METADATA]:
        return [f"{split}-{i}" for i in range(rlds_io.split_sizes(directory)[split])]
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={STEPS: tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ep: ep[EPISODE_METADATA]["episode_id"]).batch(4096)
    return [bytes(v).decode() for b in ds.as_numpy_iterator() for v in b]


# ----------------------------------------------------------------------------- the step


def validate_dataset(
    directory: str | os.PathLike[str],
    domain: str,
    out_dir: str | os.PathLike[str],
    *,
    accept: Sequence[str] = (),
    settings: BeamSettings = BeamSettings(),
    branches: tuple[int, Sequence[float], Sequence[int]] | None = None,
    schema_root: str | os.PathLike[str] | None = None,
    drift: bool = True,
    make_pipeline: Callable[[Any], Any] | None = None,
) -> ValidationReport:
    """Statistics, anomalies, drift and skew of the dataset at `directory` against `domain`'s
    schema; writes statistics, validation.json, validation.html and facets.html to `out_dir`.

    `branches` = (validation_episodes, fractions, seeds) adds the train/validation skew of every
    branch the pipeline will subsample. Never raises for anomalies: see `ValidationReport.ok`.
    """
    import time

    t0 = time.time()
    directory = Path(directory)
    schemas = load_schemas(domain, schema_root)
    reference = load_reference(domain, schema_root) if drift else {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slices: dict[str, list[str]] = {}
    pairs: dict[str, tuple[str, str]] = {}
    if branches is not None:
        slices, pairs = branch_slices(episode_ids(directory), *branches)
    stats_dir = out if settings.runner == "DirectRunner" else settings.temp_location.rstrip("/") + "/stats"
    # No schema for the statistics: numeric features stay numeric (histograms), the same as in
    # the reference statistics, so drift compares like with like.
    stats = compute_statistics(directory, stats_dir, slices, settings, make_pipeline=make_pipeline)
    found, skipped = validate_statistics(stats, schemas, reference, pairs)
    report = ValidationReport(domain, str(directory), found, dataset_counts(stats), time.time() - t0,
                              skipped).accepting(accept)
    write_report(report, stats, reference, out)
    return report


# ----------------------------------------------------------------------------- report pages


def _feature_rows(stats: Any) -> list[dict[str, Any]]:
    rows = []
    for f in stats.datasets[0].features:
        name = "/".join(f.path.step) if f.path.step else f.name
        row: dict[str, Any] = {"feature": name}
        if f.HasField("num_stats"):
            s = f.num_stats
            row |= {"type": "INT" if f.type == 0 else "FLOAT", "count": s.common_stats.num_non_missing,
                    "missing": s.common_stats.num_missing, "values/row": s.common_stats.avg_num_values,
                    "mean": s.mean, "std": s.std_dev, "min": s.min, "max": s.max, "zeros": s.num_zeros}
            hist = [h for h in s.histograms if h.type == 0]
            if hist:
                row["histogram"] = [(b.low_value, b.high_value, b.sample_count) for b in hist[0].buckets]
        elif f.HasField("string_stats"):
            s = f.string_stats
            row |= {"type": "STRING", "count": s.common_stats.num_non_missing,
                    "missing": s.common_stats.num_missing, "unique": s.unique,
                    "avg length": s.avg_length,
                    "top": [(v.value, v.frequency) for v in s.top_values[:5]]}
        rows.append(row)
    return rows


def _plot(rows: list[dict[str, Any]], title: str) -> str:
    """Histograms of the numeric features as an inline PNG (<img>), or ""."""
    numeric = [r for r in rows if "histogram" in r]
    if not numeric:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(numeric))
    nrows = (len(numeric) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.3 * nrows), squeeze=False)
    for ax in axes.flat[len(numeric):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, numeric, strict=False):
        lo = [b[0] for b in r["histogram"]]
        width = [max(b[1] - b[0], 1e-9) for b in r["histogram"]]
        ax.bar(lo, [b[2] for b in r["histogram"]], width=width, align="edge", color="#4c72b0")
        ax.set_title(r["feature"], fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(f"{html.escape(x.decode(errors='replace') if isinstance(x, bytes) else str(x))}"
                         f" ({n})" for x, n in v)
    return html.escape(str(v))


def report_html(report: ValidationReport, stats: Mapping[str, Mapping[str, Any]]) -> str:
    """The statistics and anomalies as one self-contained page (tables and plots; no network)."""
    status = "passed" if report.ok else f"FAILED: {len(report.failed)} anomalies"
    parts = ["<html><head><meta charset='utf-8'><title>Data validation</title><style>"
             "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} td:first-child{text-align:left}"
             ".bad{color:#b00} .ok{color:#070}</style></head><body>",
             f"<h1>Data validation: {html.escape(report.domain)}</h1>",
             f"<p>{html.escape(report.path)}</p>",
             f"<p class='{'ok' if report.ok else 'bad'}'><b>{status}</b> ({report.seconds:.1f} s)</p>",
             "<h2>Anomalies</h2>"]
    if report.anomalies:
        parts.append("<table><tr><th>anomaly</th><th>check</th><th>slice</th><th>accepted</th>"
                     "<th>description</th></tr>")
        for a in report.anomalies:
            parts.append(f"<tr class='{'' if a.accepted else 'bad'}'><td>{html.escape(a.name)}</td>"
                         f"<td>{a.check}</td><td>{html.escape(a.slice)}</td><td>{'yes' if a.accepted else 'no'}"
                         f"</td><td style='text-align:left'>{html.escape(a.description)}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>none</p>")
    if report.skipped:
        parts.append("<p>Not checked: " + "; ".join(html.escape(s) for s in report.skipped) + "</p>")
    parts.append("<h2>Slices</h2><table><tr><th>slice</th><th>episodes</th><th>steps</th></tr>")
    for name, c in report.counts.items():
        parts.append(f"<tr><td>{html.escape(name)}</td><td>{c['episodes']}</td><td>{c['steps']}</td></tr>")
    parts.append("</table>")
    columns = ("type", "count", "missing", "values/row", "mean", "std", "min", "max", "zeros",
               "unique", "avg length", "top")
    for table in TABLES:
        rows = _feature_rows(stats[table][ALL])
        parts.append(f"<h2>{table} (all episodes)</h2><table><tr><th>feature</th>"
                     + "".join(f"<th>{c}</th>" for c in columns) + "</tr>")
        for r in rows:
            parts.append(f"<tr><td>{html.escape(r['feature'])}</td>"
                         + "".join(f"<td>{_fmt(r[c]) if c in r else ''}</td>" for c in columns) + "</tr>")
        parts.append("</table>")
        parts.append(_plot(rows, f"{table}: histograms"))
    parts.append("</body></html>")
    return "\n".join(parts)


def facets_html(stats: Mapping[str, Mapping[str, Any]], reference: Mapping[str, Any]) -> str:
    """TFDV's own Facets Overview page (loads its scripts from the web), steps and episodes,
    beside the domain's reference statistics where there are some."""
    from tensorflow_data_validation.utils.display_util import get_statistics_html

    pages = []
    for table in TABLES:
        kwargs: dict[str, Any] = {"lhs_name": f"{table}: this dataset"}
        if table in reference:
            kwargs |= {"rhs_statistics": reference[table], "rhs_name": f"{table}: domain reference"}
        pages.append(f"<h2>{table}</h2>" + get_statistics_html(stats[table][ALL], **kwargs))
    return "<html><head><meta charset='utf-8'></head><body>" + "\n".join(pages) + "</body></html>"


def write_report(report: ValidationReport, stats: Mapping[str, Mapping[str, Any]],
                 reference: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> None:
    out = Path(out_dir)
    (out / REPORT_JSON).write_text(json.dumps(report.to_json(), indent=1, sort_keys=True))
    (out / REPORT_HTML).write_text(report_html(report, stats))
    try:
        (out / FACETS_HTML).write_text(facets_html(stats, reference))
    except Exception as e:  # Facets is a convenience beside the offline page, never a failure
        (out / FACETS_HTML).write_text(f"<html><body>Facets page unavailable: {html.escape(str(e))}</body></html>")


def _drop(batch: pa.RecordBatch, names: Sequence[str]) -> pa.RecordBatch:
    keep = [i for i, n in enumerate(batch.schema.names) if n not in names]
    return pa.RecordBatch.from_arrays([batch.column(i) for i in keep], [batch.schema.names[i] for i in keep])


# ----------------------------------------------------------------------------- entry points


def beam_settings(cfg: Any, temp_root: str = "", job_name: str = "") -> BeamSettings:
    """BeamSettings from a `ValidationConfig`; Dataflow's temporary files go to
    `dataflow_temp_location`, else under `temp_root` (the step's gs:// artifact URI)."""
    if cfg.runner == "DirectRunner":
        return BeamSettings(direct_num_workers=cfg.direct_num_workers)
    from efm.components import EFM_IMAGE

    temp = cfg.dataflow_temp_location or (gcs_uri(temp_root).rstrip("/") + "/dataflow" if temp_root else "")
    return BeamSettings(runner=cfg.runner, project=cfg.dataflow_project, region=cfg.dataflow_region,
                        temp_location=temp, sdk_container_image=EFM_IMAGE,
                        job_name=_job_name(job_name), max_num_workers=cfg.dataflow_max_workers)


def _job_name(name: str) -> str:
    """Dataflow job names: [a-z]([-a-z0-9]*[a-z0-9])?"""
    clean = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return f"efm-validate-{clean}"[:63].rstrip("-") if clean else ""


def run_validation(cfg: Any, dataset_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                   fractions: Sequence[float] = (), seeds: Sequence[int] = (), *, temp_root: str = "",
                   job_name: str = "", schema_root: str | os.PathLike[str] | None = None,
                   make_pipeline: Callable[[Any], Any] | None = None) -> ValidationReport:
    """The pipeline's validate step: the dataset against `cfg.domain`'s schema and reference,
    plus the train/validation skew of every (fraction, seed) branch; accepted anomalies from
    `cfg.validation.accept`. Raises nothing for anomalies (see `ValidationReport.ok`)."""
    v = cfg.validation
    if not v.enabled:
        report = ValidationReport(cfg.domain, str(dataset_dir), counts={"skipped": True})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / REPORT_JSON).write_text(json.dumps(report.to_json(), indent=1))
        (Path(out_dir) / REPORT_HTML).write_text("<html><body>Data validation is off "
                                                 "(validation.enabled false).</body></html>")
        (Path(out_dir) / FACETS_HTML).write_text("<html><body>Data validation is off.</body></html>")
        return report
    branches = (cfg.data.validation_episodes, tuple(fractions), tuple(seeds)) if fractions and seeds else None
    return validate_dataset(dataset_dir, cfg.domain, out_dir, accept=v.accept,
                            settings=beam_settings(v, temp_root, job_name), branches=branches,
                            schema_root=schema_root, make_pipeline=make_pipeline)


def on_dataflow_of(cfg: Any, project: str, region: str) -> Any:
    """`cfg` whose Dataflow validation (if that is its runner) runs in `project`/`region` unless
    set: `efm submit`/`schedule` pass the pipeline's own."""
    v = cfg.validation
    if v.runner != "DataflowRunner":
        return cfg
    return cfg.replace(validation=dataclasses.replace(
        v, dataflow_project=v.dataflow_project or project, dataflow_region=v.dataflow_region or region))


def schema_rules(cfg: Any) -> SchemaRules:
    return SchemaRules(action_max_abs=cfg.tokenizer.action_max_abs, max_episode_steps=cfg.env.max_episode_steps)


def infer_and_write_schema(cfg: Any, dataset_dir: str | os.PathLike[str],
                           root: str | os.PathLike[str] | None = None) -> Path:
    """Infers `cfg.domain`'s schema from a clean dataset and writes it with the dataset's
    statistics as the drift reference (review the diff before committing it)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="efm-schema-") as tmp:
        stats = compute_statistics(dataset_dir, tmp)
    flat = {t: stats[t][ALL] for t in TABLES}
    return write_schemas(infer_domain_schema(flat, schema_rules(cfg)), flat, cfg.domain, root)
