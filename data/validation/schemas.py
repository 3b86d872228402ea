"""The reviewed per-domain schemas and drift reference statistics kept in the repository
(`data/schemas/<domain>/`), and their inference from a clean dataset."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from efm.data.rlds import DatasetError
from efm.data.validation.tables import (
    ACTION,
    DISCOUNT,
    EPISODES_TABLE,
    FLAGS,
    REWARD,
    STEPS_TABLE,
    TABLES,
)

SCHEMA_DIR = Path(__file__).parent.parent / "schemas"
SCHEMA_FILE = "{table}_schema.pbtxt"
REFERENCE_FILE = "{table}_reference_stats.pbtxt"
ALOHA_CAMERA_SCHEMA = "aloha-insertion-cameras"
# Schemas of a domain's second observation mode: the flags that select it on the command line.
MODE_FLAGS = {ALOHA_CAMERA_SCHEMA: "--domain aloha-insertion --config configs/aloha-cameras.json"}


def schema_name(cfg: Any) -> str:
    """The schema (`schemas/<name>/`) a run's datasets are checked against: the domain's, except
    Aloha with its cameras rendered (`aloha_camera_config`), whose steps also hold the two stacked
    images: `aloha-insertion-cameras`."""
    if cfg.domain == "aloha-insertion" and cfg.env.aloha.render_images:
        return ALOHA_CAMERA_SCHEMA
    return cfg.domain


def write_schema_command(name: str) -> str:
    """The command that regenerates schema `name` from a clean dataset at PATH."""
    return f"efm data validate PATH {MODE_FLAGS.get(name, f'--domain {name}')} --write-schema"


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
                               f"`{write_schema_command(domain)}`)")
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
                  f"clean dataset by\n# `{write_schema_command(domain)}` and reviewed; ranges and comparators are "
                  "the domain's rules.\n")
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
