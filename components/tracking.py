"""MLflow from inside a KFP task: the stage's child run, with lineage carried by artifacts.

Every output artifact records the id of the MLflow run that produced it (`RUN_ID` in its
metadata), so a task finds the runs it consumed (`efm.upstream_run_ids`) from its inputs alone,
cached tasks included: a cached artifact still names the run that really made it. Tracking
calls that failed (an unreachable server) travel the same way (`FAILURES`), so the evaluate
row and the pipeline's summary report everything that could not be logged upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from efm.config import RunConfig
from efm.tracking import StageRun, Tracker

RUN_ID = "mlflow_run_id"
FAILURES = "mlflow_failures"
EXPERIMENT_STAGE = "experiment"


class ArtifactLike(Protocol):
    """What a task sees of a KFP artifact (kfp.dsl.Artifact and its subclasses)."""

    metadata: dict[str, Any]


def branch_label(fraction: float, seed: int) -> str:
    """"f0.1-s7": names one (data fraction, seed) branch in task and run names."""
    return f"f{fraction:g}-s{seed}"


def registered_model_name(domain: str, fraction: float, seed: int) -> str:
    """One registered model per branch; its aliases name the checkpoints (policy-sft, ...)."""
    return f"efm-{domain}-{branch_label(fraction, seed)}"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def upstream_run_ids(inputs: Sequence[ArtifactLike]) -> list[str]:
    return _unique(str(a.metadata.get(RUN_ID, "")) for a in inputs)


def inherited_failures(inputs: Sequence[ArtifactLike]) -> list[str]:
    return _unique(f for a in inputs for f in a.metadata.get(FAILURES, []))


def start_experiment(cfg: RunConfig, tracking_uri: str, kfp_run: str, branches: str) -> str:
    """The pipeline run's parent MLflow run; its id, or "" if tracking is off or failed."""
    tracker = Tracker(tracking_uri or None)
    run = tracker.start_run(kfp_run or "experiment", {"stage": EXPERIMENT_STAGE, "domain": cfg.domain,
                                                      "kfp.run_name": kfp_run, "branches": branches})
    run.log_params(cfg.flat())
    for failure in tracker.failures:
        print(f"MLflow: could not log: {failure}")
    return run.run_id or ""


def finish_experiment(tracking_uri: str, parent_run_id: str, report_dir: str) -> None:
    """Logs the report to the parent run and marks it finished."""
    tracker = Tracker(tracking_uri or None)
    parent = StageRun(tracker, parent_run_id or None)
    parent.log_artifacts(report_dir)
    tracker.end_run(parent)
    for failure in tracker.failures:
        print(f"MLflow: could not log: {failure}")


@contextmanager
def stage_run(stage: str, cfg: RunConfig, tracking_uri: str, parent_run_id: str, kfp_run: str, kfp_task: str,
              inputs: Sequence[ArtifactLike], outputs: Sequence[ArtifactLike],
              fraction: float | None = None, seed: int | None = None) -> Iterator[StageRun]:
    """The stage's child run: tagged with stage, domain, branch, KFP names and upstream runs,
    with the config as params. On exit the outputs' metadata get the run id and the failures
    (inherited plus this task's)."""
    tracker = Tracker(tracking_uri or None)
    tags: dict[str, Any] = {"stage": stage, "domain": cfg.domain, "kfp.run_name": kfp_run, "kfp.task_name": kfp_task}
    name = stage
    if fraction is not None and seed is not None:
        tags |= {"data_fraction": f"{fraction:g}", "seed": seed}
        name = f"{stage}-{branch_label(fraction, seed)}"
    run = tracker.start_run(name, tags, parent_run_id or None, upstream_run_ids(inputs))
    run.log_params(cfg.flat())
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        tracker.end_run(run, status)
        failures = _unique([*inherited_failures(inputs), *(f"{name}: {f}" for f in tracker.failures)])
        for artifact in outputs:
            artifact.metadata[RUN_ID] = run.run_id or ""
            artifact.metadata[FAILURES] = failures
        for failure in tracker.failures:
            print(f"MLflow: could not log: {failure}")
