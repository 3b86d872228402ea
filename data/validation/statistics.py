"""Statistics of the two tables with TFDV on Apache Beam (DirectRunner in-process, or
Dataflow), sliced by episode sets: every episode, and each pipeline branch's train and
validation episodes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from efm.data import rlds as rlds_io
from efm.data.rlds import DatasetError
from efm.data.validation.tables import (
    ALL,
    EPISODE_INDEX,
    STEPS_TABLE,
    TABLES,
    Chunk,
    list_column,
    read_chunks,
)

GCS_FUSE_PREFIX = "/gcs/"  # where Vertex mounts Cloud Storage buckets in a task


STATS_FILE = "{table}_stats.pb"


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
        bits = bits[batch.column(EPISODE_INDEX).flatten().to_numpy()]
        batch = _drop(batch, [EPISODE_INDEX])
    if batch.num_rows:
        yield pa.RecordBatch.from_arrays([*batch.columns, list_column(bits, len(bits))],
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
    try:
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
    except RuntimeError as e:  # the runner re-raises a worker's error as text
        if "DataLossError" not in str(e):
            raise
        raise DatasetError(f"RLDS dataset {rlds_io.absolute(directory)}: a data file is corrupt or truncated: "
                           "write or copy the dataset again") from e
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


def _drop(batch: pa.RecordBatch, names: Sequence[str]) -> pa.RecordBatch:
    keep = [i for i, n in enumerate(batch.schema.names) if n not in names]
    return pa.RecordBatch.from_arrays([batch.column(i) for i in keep], [batch.schema.names[i] for i in keep])


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
