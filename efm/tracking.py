"""MLflow tracking: a parent run per pipeline run, a child run per stage and branch.

Runs are created through `MlflowClient` with explicit ids (no global active run), so any
process can log to any run: a KFP task opens the child run of its stage under the parent run
the pipeline's first task created. Tracking never stops training: a failed call is recorded
in `Tracker.failures` and logged as a warning instead of raised.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# mlflow (with pandas) takes seconds to import, and every pipeline step imports this module:
# it is imported only where a store is in use (Tracker with a tracking URI, StageRun with a
# run), so steps that track nothing (Vertex runs without --tracking-uri) do not pay for it.

log = logging.getLogger(__name__)

EXPERIMENT = "efm"
PARENT = "mlflow.parentRunId"
UPSTREAM = "efm.upstream_run_ids"  # comma-separated ids of the runs whose outputs a run consumed
DATA_CONTEXT = "mlflow.data.context"  # what a dataset input was used for: training, validation, ...
_MAX_PARAM = 500  # MLflow's param value limit (characters)
# An unreachable server should cost seconds per call, not MLflow's default minutes of retries.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def local_store(root: str | Path) -> str:
    """The default store: a SQLite database under the run root."""
    return f"sqlite:///{(Path(root) / 'mlflow.db').absolute()}"


def local_artifacts(root: str | Path) -> str:
    """Where the default store's experiment keeps its artifacts: beside the database."""
    return (Path(root).absolute() / "mlartifacts").as_uri()


def dataset_digest(directory: str | Path) -> str:
    """A content fingerprint of a dataset directory, cheap at any size: its small metadata
    files (TFDS records shard lengths and byte counts there) hashed whole, and every other
    file by relative name and size."""
    root = Path(directory)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode())
        h.update(path.read_bytes() if path.suffix == ".json" else str(path.stat().st_size).encode())
    return h.hexdigest()[:16]


class StageRun:
    """One MLflow run; also the `(metrics, step)` logger the library functions accept.

    With `run_id` None (tracking off, or the run could not be created) every call is a no-op.
    """

    def __init__(self, tracker: Tracker, run_id: str | None):
        self._tracker = tracker
        self.run_id = run_id

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.log_metrics(metrics, step)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.run_id is None:
            return None
        return self._tracker.call(method, self.run_id, *args, **kwargs)

    def log_metrics(self, metrics: dict[str, Any], step: int = 0) -> None:
        """Finite numbers only; "/" becomes "." so names match across stages and runs."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, int | float) and math.isfinite(float(v))]
        if items:
            self._call("log_batch", metrics=items)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("log_batch", params=items[i:i + 100])

    def log_artifacts(self, directory: str | Path, pattern: str = "*", artifact_path: str | None = None) -> None:
        """The files directly in `directory` that match `pattern`."""
        for path in sorted(Path(directory).glob(pattern)):
            if path.is_file():
                self._call("log_artifact", str(path), artifact_path)

    def log_dataset(self, directory: str | Path, uri: str, name: str, context: str) -> None:
        """A dataset this run read (`uri`: where it lives, e.g. gs://...), with its digest."""
        if self.run_id is None:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # local paths match two equivalent registered sources
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
            source = resolve_dataset_source(uri)
        dataset = MetaDataset(source, name=name, digest=dataset_digest(directory))
        entry = DatasetInput(dataset._to_mlflow_entity(), [InputTag(DATA_CONTEXT, context)])
        self._call("log_inputs", datasets=[entry])

    def register_model(self, name: str, alias: str, checkpoint: str | Path, uri: str,
                       tags: dict[str, Any] | None = None) -> str | None:
        """A new version of registered model `name` for this checkpoint, under `alias`.

        A checkpoint at a URI the tracking server can reach (gs://...) is registered where it
        is; a local one is first copied into this run's artifacts (a server may be elsewhere).
        Returns the version, or None if it could not be registered.
        """
        if self.run_id is None:
            return None
        source = uri
        if "://" not in uri:
            self._call("log_artifacts", str(checkpoint), alias)
            source = f"runs:/{self.run_id}/{alias}"
        self._tracker.ensure_registered_model(name)
        version = self._tracker.call("create_model_version", name, source, run_id=self.run_id,
                                     tags={k: str(v) for k, v in (tags or {}).items()})
        if version is None:
            return None
        self._tracker.call("set_registered_model_alias", name, alias, version.version)
        return str(version.version)


class Tracker:
    """An MLflow store (None: tracking off) and one experiment in it."""

    def __init__(self, tracking_uri: str | None, experiment: str = EXPERIMENT,
                 artifact_location: str | None = None):
        """`artifact_location` (new experiments only) keeps a local store's artifacts beside it."""
        self.tracking_uri = tracking_uri
        self.failures: list[str] = []
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        if not tracking_uri:
            return
        for k, v in _HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri)
        exp = self.call("get_experiment_by_name", experiment)
        if self.failures:  # the store is unreachable: this process tracks nothing (and says so)
            return
        self._experiment_id = exp.experiment_id if exp else self.call(
            "create_experiment", experiment, artifact_location=artifact_location)
        if self._experiment_id is None:  # a concurrent task may have created it meanwhile
            exp = self.call("get_experiment_by_name", experiment)
            self._experiment_id = exp.experiment_id if exp else None

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`MlflowClient.<method>(...)`, or None (recorded in `failures`) if it fails."""
        if self._client is None:
            return None
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except Exception as e:
            self.failures.append(f"{method}: {type(e).__name__}: {str(e)[:300]}")
            log.warning("MLflow %s failed (%s); training goes on", method, e)
            return None

    def ensure_registered_model(self, name: str) -> None:
        if self._client is None:
            return
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                self.failures.append(f"create_registered_model: {e}")
        except Exception as e:
            self.failures.append(f"create_registered_model: {type(e).__name__}: {e}")

    def start_run(self, name: str, tags: dict[str, Any], parent_id: str | None = None,
                  upstream_ids: list[str] | None = None) -> StageRun:
        """A new run (a child of `parent_id` if given); finish it with `end_run`."""
        all_tags = {k: str(v) for k, v in tags.items()}
        if parent_id:
            all_tags[PARENT] = parent_id
        if upstream_ids:
            all_tags[UPSTREAM] = ",".join(upstream_ids)
        created = None
        if self._experiment_id is not None:
            created = self.call("create_run", self._experiment_id, run_name=name, tags=all_tags)
        return StageRun(self, created.info.run_id if created else None)

    def find_runs(self, tags: dict[str, str], status: str | None = None, max_results: int = 1000) -> list[Any]:
        """This experiment's runs carrying every tag in `tags` (and `status`, e.g. "RUNNING"),
        newest first; [] when tracking is off or the search failed."""
        if self._experiment_id is None:
            return []
        clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        if status:
            clauses.append(f"attributes.status = '{status}'")
        found = self.call("search_runs", [self._experiment_id], " and ".join(clauses), max_results=max_results,
                          order_by=["attributes.start_time DESC"])
        return list(found or [])

    def end_run(self, run: StageRun | str | None, status: str = "FINISHED") -> None:
        run_id = run.run_id if isinstance(run, StageRun) else run
        if run_id:
            self.call("set_terminated", run_id, status)
