"""MLflow from inside a KFP task: the stage's child run, with lineage carried by artifacts.

Every output artifact records the id of the MLflow run that produced it (`RUN_ID` in its
metadata), so a task finds the runs it consumed (`efm.upstream_run_ids`) from its inputs alone,
cached tasks included: a cached artifact still names the run that really made it. Tracking
calls that failed (an unreachable server) travel the same way (`FAILURES`), so the evaluate
row and the pipeline's summary report everything that could not be logged upstream.

Stage tasks take nothing that changes from one pipeline run to the next, so that the
pipeline's cache can reuse them: a stage run finds its parent (the pipeline run's MLflow run,
opened by `start_experiment`) by the KFP run name tag, not by an input. The final report step
(`finish_experiment`) records on the parent every stage run its results came from, those
reused from the cache included (`efm.stage_run_ids`, `efm.reused_run_ids`, lineage.json), and a
failed pipeline run ends its parent as FAILED (`fail_experiment`: called by `efm run` locally, by
the exit handler's `end_experiment` on Vertex). A task ended by SIGTERM ends its own run KILLED.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from efm.config import STAGE_SECTIONS, RunConfig
from efm.tracking import PARENT, UPSTREAM, StageRun, Tracker

RUN_ID = "mlflow_run_id"
FAILURES = "mlflow_failures"
EXPERIMENT_STAGE = "experiment"
KFP_RUN = "kfp.run_name"
STAGE_RUNS = "efm.stage_run_ids"  # on the parent: every stage run its results came from
REUSED_RUNS = "efm.reused_run_ids"  # on the parent: those of them made by an earlier pipeline run (cached)
LINEAGE = "lineage.json"  # on the parent: one entry per stage run (stage, name, reused, upstream)
FAULT_ENV = "EFM_FAIL_STAGE"  # tests: the stage named here raises once its run is open
TERMINATED_EXIT = 128 + signal.SIGTERM  # a shell's exit status for a process ended by SIGTERM


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


def start_experiment(cfg: RunConfig, tracking_uri: str, kfp_run: str, branches: str,
                     fractions: Sequence[float] | None = None) -> str:
    """The pipeline run's parent MLflow run; its id, or "" if tracking is off or failed.

    Its params are the config with `data.fractions` the `fractions` the branches run (None: the
    config's). The pipeline's tasks ignore the config's own fractions, and it is not rewritten
    before it reaches them: their cache keys stay the same whichever branches a run has."""
    tracker = Tracker(tracking_uri or None)
    run = tracker.start_run(kfp_run or "experiment", {"stage": EXPERIMENT_STAGE, "domain": cfg.domain,
                                                      KFP_RUN: kfp_run, "branches": branches})
    if fractions is not None:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, fractions=tuple(fractions)))
    run.log_params(cfg.flat())
    for failure in tracker.failures:
        print(f"MLflow: could not log: {failure}")
    return run.run_id or ""


def find_parent(tracker: Tracker, kfp_run: str) -> str | None:
    """The id of the parent run of KFP run `kfp_run` (the newest, should a name repeat)."""
    if not kfp_run:
        return None
    found = tracker.find_runs({"stage": EXPERIMENT_STAGE, KFP_RUN: kfp_run}, max_results=1)
    return found[0].info.run_id if found else None


def stage_lineage(tracker: Tracker, parent_run_id: str, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every stage run reachable from `run_ids` through `efm.upstream_run_ids`, nearest first:
    run id, stage, name, upstream ids, and whether an earlier pipeline run made it (`reused`:
    its task was taken from the cache, so it hangs under that run's parent)."""
    entries: list[dict[str, Any]] = []
    queue, seen = list(run_ids), set()
    while queue:
        run_id = queue.pop(0)
        if not run_id or run_id in seen:
            continue
        seen.add(run_id)
        run = tracker.call("get_run", run_id)
        if run is None:
            continue
        tags = run.data.tags
        upstream = [i for i in tags.get(UPSTREAM, "").split(",") if i]
        entries.append({"run_id": run_id, "stage": tags.get("stage", ""), "name": run.info.run_name,
                        "kfp_run": tags.get(KFP_RUN, ""), "reused": tags.get(PARENT) != parent_run_id,
                        "upstream": upstream})
        queue.extend(upstream)
    return entries


def finish_experiment(tracking_uri: str, parent_run_id: str, report_dir: str) -> None:
    """Logs the report and the lineage of its results to the parent run and marks it finished."""
    tracker = Tracker(tracking_uri or None)
    parent = StageRun(tracker, parent_run_id or None)
    parent.log_artifacts(report_dir)
    if parent.run_id and not tracker.failures:  # an unreachable store would fail every lookup
        results = json.loads((Path(report_dir) / "summary.json").read_text())["results"]
        lineage = stage_lineage(tracker, parent.run_id, [str(r.get(RUN_ID, "")) for r in results])
        tracker.call("set_tag", parent.run_id, STAGE_RUNS, ",".join(e["run_id"] for e in lineage))
        tracker.call("set_tag", parent.run_id, REUSED_RUNS, ",".join(e["run_id"] for e in lineage if e["reused"]))
        with tempfile.TemporaryDirectory(prefix="efm-lineage-") as tmp:
            (Path(tmp) / LINEAGE).write_text(json.dumps(lineage, indent=1))
            parent.log_artifacts(tmp, LINEAGE)
    tracker.end_run(parent)
    for failure in tracker.failures:
        print(f"MLflow: could not log: {failure}")


def fail_experiment(tracking_uri: str, kfp_run: str) -> str | None:
    """Ends the parent run of KFP run `kfp_run`, and any of its stage runs still running (a
    killed task), as FAILED. Returns the parent's id (None if there is none)."""
    tracker = Tracker(tracking_uri or None)
    parent_id = find_parent(tracker, kfp_run)
    if parent_id:
        for child in tracker.find_runs({PARENT: parent_id}, status="RUNNING"):
            tracker.end_run(child.info.run_id, "FAILED")
        tracker.end_run(parent_id, "FAILED")
    for failure in tracker.failures:
        print(f"MLflow: could not log: {failure}")
    return parent_id


def end_experiment(state: str, tracking_uri: str, kfp_run: str) -> str | None:
    """The exit handler's step (vertex target): a pipeline run whose tasks did not all succeed
    (`state` FAILED or CANCELLED, from `dsl.PipelineTaskFinalStatus`) fails its parent run as
    `fail_experiment` does; a succeeded one was finished by the final report step. Returns the
    id of the parent it failed, if any."""
    if state == "SUCCEEDED":
        return None
    print(f"pipeline run {kfp_run!r} ended {state}: its MLflow runs end FAILED")
    return fail_experiment(tracking_uri, kfp_run)


class Terminated(SystemExit):
    """SIGTERM (a preempted node, a task timeout, a cancelled run) arrived while a stage run was open."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(TERMINATED_EXIT)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While open, SIGTERM raises `Terminated` so that `finally` blocks run (by default it ends
    the process at once); the previous handler is restored on exit. Python delivers signals to
    the main thread only, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stage_run(stage: str, cfg: RunConfig, tracking_uri: str, parent_run_id: str, kfp_run: str, kfp_task: str,
              inputs: Sequence[ArtifactLike], outputs: Sequence[ArtifactLike],
              fraction: float | None = None, seed: int | None = None) -> Iterator[StageRun]:
    """The stage's child run: tagged with stage, domain, branch, KFP names and upstream runs,
    with the config as params. On exit the outputs' metadata get the run id and the failures
    (inherited plus this task's). A task ended by SIGTERM ends its run KILLED and exits 143.

    `parent_run_id` "" (what the stage components pass, so that their inputs stay the same from
    one pipeline run to the next and the cache can reuse them) finds the parent by `kfp_run`.
    """
    tracker = Tracker(tracking_uri or None)
    parent_run_id = parent_run_id or find_parent(tracker, kfp_run) or ""
    tags: dict[str, Any] = {"stage": stage, "domain": cfg.domain, KFP_RUN: kfp_run, "kfp.task_name": kfp_task}
    name = stage
    if fraction is not None and seed is not None:
        tags |= {"data_fraction": f"{fraction:g}", "seed": seed}
        name = f"{stage}-{branch_label(fraction, seed)}"
    run = tracker.start_run(name, tags, parent_run_id or None, upstream_run_ids(inputs))
    run.log_params(cfg.flat(STAGE_SECTIONS.get(stage)))  # a step given a view: what it reads
    status = "FAILED"
    try:
        with sigterm_raises():
            if os.environ.get(FAULT_ENV) == stage:
                raise RuntimeError(f"fault injected into stage {stage!r} ({FAULT_ENV})")
            yield run
        status = "FINISHED"
    except Terminated:
        status = "KILLED"
        raise
    finally:
        tracker.end_run(run, status)
        failures = _unique([*inherited_failures(inputs), *(f"{name}: {f}" for f in tracker.failures)])
        for artifact in outputs:
            artifact.metadata[RUN_ID] = run.run_id or ""
            artifact.metadata[FAILURES] = failures
        for failure in tracker.failures:
            print(f"MLflow: could not log: {failure}")
