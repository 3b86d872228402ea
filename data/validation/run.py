"""The validate step and the CLI's entry points: where a config meets statistics, schemas,
the gate and the report."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from efm.data import rlds
from efm.data.validation.gate import ValidationReport, dataset_counts, validate_statistics
from efm.data.validation.report import FACETS_HTML, REPORT_HTML, REPORT_JSON, write_report
from efm.data.validation.schemas import (
    SchemaRules,
    infer_domain_schema,
    load_reference,
    load_schemas,
    schema_dir,
    schema_name,
    write_schemas,
)
from efm.data.validation.statistics import BeamSettings, branch_slices, compute_statistics, gcs_uri
from efm.data.validation.tables import ALL, TABLES


def validate_dataset(
    directory: str | os.PathLike[str],
    domain: str,
    out_dir: str | os.PathLike[str],
    *,
    accept: Sequence[str] = (),
    settings: BeamSettings | None = None,
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
    settings = settings or BeamSettings()
    directory = Path(directory)
    schemas = load_schemas(domain, schema_root)
    reference = load_reference(domain, schema_root) if drift else {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slices: dict[str, list[str]] = {}
    pairs: dict[str, tuple[str, str]] = {}
    if branches is not None:
        # the ids subsample will draw the branches from, read as it reads them
        slices, pairs = branch_slices(rlds.read_episode_ids(directory), *branches)
    # Dataflow writes under the shared temp location: one folder per validation, so runs at once
    # never read each other's statistics
    stats_dir = (out if settings.runner == "DirectRunner"
                 else f"{settings.temp_location.rstrip('/')}/stats/{uuid.uuid4().hex}")
    # No schema for the statistics: numeric features stay numeric (histograms), the same as in
    # the reference statistics, so drift compares like with like.
    stats = compute_statistics(directory, stats_dir, slices, settings, make_pipeline=make_pipeline)
    found, skipped = validate_statistics(stats, schemas, reference, pairs)
    report = ValidationReport(domain, str(directory), found, dataset_counts(stats), time.time() - t0,
                              skipped).accepting(accept)
    write_report(report, stats, reference, out)
    return report


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
    """The pipeline's validate step: the dataset against `schema_name(cfg)`'s schema and reference,
    plus the train/validation skew of every (fraction, seed) branch; accepted anomalies from
    `cfg.validation.accept`. Raises nothing for anomalies (see `ValidationReport.ok`)."""
    v = cfg.validation
    if not v.enabled:
        report = ValidationReport(schema_name(cfg), str(dataset_dir), counts={"skipped": True})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / REPORT_JSON).write_text(json.dumps(report.to_json(), indent=1))
        (Path(out_dir) / REPORT_HTML).write_text("<html><body>Data validation is off "
                                                 "(validation.enabled false).</body></html>")
        (Path(out_dir) / FACETS_HTML).write_text("<html><body>Data validation is off.</body></html>")
        return report
    branches = (cfg.data.validation_episodes, tuple(fractions), tuple(seeds)) if fractions and seeds else None
    return validate_dataset(dataset_dir, schema_name(cfg), out_dir, accept=v.accept,
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
                           root: str | os.PathLike[str] | None = None, overwrite: bool = False) -> Path:
    """Infers `schema_name(cfg)`'s schema from a clean dataset and writes it with the dataset's
    statistics as the drift reference (review the diff before committing it). Refuses a dataset
    generated for another domain, and replaces a schema already there only with `overwrite`."""
    import tempfile

    made = ((rlds.read_metadata(dataset_dir).get("config") or {}).get("env") or {}).get("domain")
    if made is not None and made != cfg.domain:
        raise rlds.DatasetError(f"{dataset_dir} holds {made} demonstrations, not {cfg.domain}: "
                                f"its schema would not be the {schema_name(cfg)} schema")
    target = schema_dir(schema_name(cfg), root)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(f"{target} holds the {schema_name(cfg)} schema already (reviewed and committed): "
                         "--overwrite replaces it; review the diff before committing")

    with tempfile.TemporaryDirectory(prefix="efm-schema-") as tmp:
        stats = compute_statistics(dataset_dir, tmp)
    flat = {t: stats[t][ALL] for t in TABLES}
    return write_schemas(infer_domain_schema(flat, schema_rules(cfg)), flat, schema_name(cfg), root)
