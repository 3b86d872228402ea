"""Anomalies: the statistics against the schema, the drift reference and the training split's
skew from its validation split; what a run accepts; the report the gate decides on."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from efm.data.rlds import DatasetError
from efm.data.validation.tables import ALL, EPISODES_TABLE, STEPS_TABLE, TABLES


class ValidationError(DatasetError):
    """The dataset does not match its domain's schema; `report` has every anomaly."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary())


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
