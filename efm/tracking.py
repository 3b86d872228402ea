"""MLflow tracking: a parent run per experiment, a child run per stage and branch.

Runs are created through `MlflowClient` with explicit ids (no global active run), so stages
can log from anywhere. Tracking never stops training: a failed call is counted and reported
(`Tracker.failures`) instead of raised.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
UPSTREAM = "efm.upstream_run_ids"
_MAX_PARAM = 500  # MLflow's param value limit (characters)


def local_store(root: str | Path) -> str:
    """The default store: a SQLite database under the run root."""
    return f"sqlite:///{(Path(root) / 'mlflow.db').absolute()}"


def local_tracker(root: str | Path) -> Tracker:
    """A tracker on the default store, with its artifacts in root/mlartifacts."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    return Tracker(local_store(root), artifact_location=(root / "mlartifacts").as_uri())


class StageRun:
    """One MLflow run; also the `(metrics, step)` logger the library functions accept."""

    def __init__(self, tracker: Tracker, run_id: str | None):
        self._tracker = tracker
        self.run_id = run_id

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.log_metrics(metrics, step)

    def log_metrics(self, metrics: dict[str, Any], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, int | float) and math.isfinite(float(v))]
        self._tracker._call("log_batch", self.run_id, metrics=items)

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:_MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._tracker._call("log_batch", self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._tracker._call("log_batch", self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, directory: str | Path, pattern: str = "*") -> None:
        for path in sorted(Path(directory).glob(pattern)):
            if path.is_file():
                self._tracker._call("log_artifact", self.run_id, str(path))


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str = "efm", artifact_location: str | None = None):
        """`artifact_location` (new experiments only) keeps a local store's artifacts beside it."""
        self.tracking_uri = tracking_uri
        self.failures: list[str] = []
        self._client = MlflowClient(tracking_uri)
        exp = self._call("get_experiment_by_name", experiment)
        self._experiment_id = exp.experiment_id if exp else self._call(
            "create_experiment", experiment, artifact_location=artifact_location)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method not in ("get_experiment_by_name", "create_experiment") and args and args[0] is None:
            return None  # the run could not be created: nothing to log to
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except Exception as e:
            self.failures.append(f"{method}: {type(e).__name__}: {e}")
            log.warning("MLflow %s failed (%s); training goes on", method, e)
            return None

    @contextmanager
    def run(self, name: str, tags: dict[str, Any], parent: StageRun | None = None,
            upstream: list[StageRun] | None = None) -> Iterator[StageRun]:
        all_tags = {**tags}
        if parent is not None and parent.run_id:
            all_tags["mlflow.parentRunId"] = parent.run_id
        if upstream:
            all_tags[UPSTREAM] = ",".join(r.run_id for r in upstream if r.run_id)
        created = self._call("create_run", self._experiment_id, run_name=name,
                             tags={k: str(v) for k, v in all_tags.items()})
        run = StageRun(self, created.info.run_id if created else None)
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        finally:
            self._call("set_terminated", run.run_id, status)
