"""A task cache for kfp's local runner, which has none in kfp 2.13.

KFP backends (Vertex AI, Kubeflow) skip a task whose component and inputs match an earlier
execution's and hand its outputs on; `kfp.local` 2.13 executes every task every time. This
module gives local runs the same behaviour: `LocalTaskCache.installed()` wraps
`kfp.local.task_dispatcher.run_single_task_implementation` (the one call kfp's DAG
orchestrator makes per container task), and for tasks compiled with caching on it keys each
execution by the component spec (which holds the component's source), the executor (image,
command) and the task's arguments: parameter values as given, input artifacts by URI and
metadata. The arguments are those kfp passes before placeholders are resolved, so the KFP run
and task names (`dsl.PIPELINE_JOB_NAME_PLACEHOLDER`, ...) do not change the key. A hit returns
the earlier outputs, artifacts included, which keep pointing to the earlier run's files under
the pipeline root, without starting a process; downstream tasks then see the same inputs and
hit too. Entries whose artifact files are gone from disk are ignored.

A task that started but did not finish (it failed, or the run was interrupted) is resumed by
the next run with the same key as a KFP retry would be: that run's task starts with what the
unfinished attempt left in its task root (a stage that checkpoints as it goes, mirrored to its
artifact, continues from its last checkpoint; `components.artifacts`).

Like the backends' cache this trusts the component: a change in library code that a component
calls does not change the key (`efm run --no-cache` reruns everything, `--rerun STEP` the named
steps, whose new outputs replace the cached ones and make every step downstream run again), but
for the simulation's:
the steps that first run it (dataset, pretrain) take its source digest as an input
(`efm.envs.simulation_version`), so other physics regenerates them and everything downstream.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp.local import executor_input_utils, status, task_dispatcher

ENTRY_SUFFIX = ".pkl"
ATTEMPT_SUFFIX = ".attempt"  # names the task root of an execution that started and did not finish


def step_name(task: str) -> str:
    """A task's step: kfp numbers the second and later tasks of a step (self-improve-2)."""
    return re.sub(r"-\d+$", "", task)


def _plain(value: Any) -> Any:
    """Arguments as JSON-able data: artifacts by type, URI and metadata."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "uri") and hasattr(value, "schema_title"):
        return {"artifact": value.schema_title, "uri": value.uri, "metadata": value.metadata}
    return value


def task_key(component_spec: Any, executor_spec: Any, arguments: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(component_spec.SerializeToString(deterministic=True))
    h.update(executor_spec.SerializeToString(deterministic=True))
    h.update(json.dumps({k: _plain(v) for k, v in arguments.items()}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _artifacts(outputs: Mapping[str, Any]) -> list[Any]:
    items: list[Any] = []
    for v in outputs.values():
        items.extend(v if isinstance(v, list) else [v])
    return [a for a in items if hasattr(a, "uri") and hasattr(a, "schema_title")]


def _written(outputs: Mapping[str, Any]) -> list[str]:
    """The output artifacts' files or directories (a Metrics artifact may have none: its values
    are metadata)."""
    return [a.path for a in _artifacts(outputs) if Path(a.path).exists()]


@dataclass
class LocalTaskCache:
    """`directory` holds one entry per cached execution; `cacheable` names the components whose
    tasks were compiled with caching on (None: every one); the steps in `rerun` execute even where
    an entry matches, and their outputs replace it. After a run, `executed` and
    `cached` list its tasks, `resumed` those executed from an unfinished attempt's files,
    `seconds` the wall time of each executed task, and `run_name` is kfp's name for it (the
    KFP run name)."""

    directory: Path
    cacheable: frozenset[str] | None = None
    enabled: bool = True
    rerun: frozenset[str] = frozenset()
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    run_name: str | None = None

    @classmethod
    def for_pipeline(cls, pipeline: Any, directory: str | Path, enabled: bool = True,
                     rerun: Collection[str] = ()) -> LocalTaskCache:
        """The components of `pipeline` (a compiled @dsl.pipeline) whose tasks enable caching.
        Raises ValueError, before anything runs, for a step in `rerun` the pipeline lacks."""
        tasks = pipeline.pipeline_spec.root.dag.tasks
        steps = {step_name(t) for t in tasks}
        unknown = sorted(set(rerun) - steps)
        if unknown:
            raise ValueError(f"rerun: no step {', '.join(unknown)} in this pipeline; its steps: {', '.join(sorted(steps))}")
        return cls(Path(directory), frozenset(t.component_ref.name for t in tasks.values()
                                              if t.caching_options.enable_cache), enabled, frozenset(rerun))

    def _lookup(self, key: str) -> dict[str, Any] | None:
        path = self.directory / f"{key}{ENTRY_SUFFIX}"
        if not path.is_file():
            return None
        try:
            entry = pickle.loads(path.read_bytes())
        except Exception:  # a torn or foreign file is a miss, not an error
            return None
        return entry if all(Path(p).exists() for p in entry["paths"]) else None

    def _store(self, key: str, entry: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f"{key}.tmp"
        tmp.write_bytes(pickle.dumps(entry))
        tmp.replace(self.directory / f"{key}{ENTRY_SUFFIX}")

    def _resume(self, key: str, task_root: Path) -> bool:
        """Seeds `task_root` with what the last unfinished attempt of `key` left, if anything,
        and records `task_root` as the attempt now under way."""
        attempt = self.directory / f"{key}{ATTEMPT_SUFFIX}"
        previous = Path(attempt.read_text()) if attempt.is_file() else None
        resumed = previous is not None and previous != task_root and previous.is_dir()
        if resumed:
            shutil.copytree(previous, task_root, dirs_exist_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        attempt.write_text(str(task_root))
        return resumed

    @contextmanager
    def installed(self) -> Iterator[LocalTaskCache]:
        """kfp.local consults this cache for the tasks it runs meanwhile."""
        original = task_dispatcher.run_single_task_implementation

        def run_task(**kwargs: Any) -> tuple[dict[str, Any], status.Status]:
            self.run_name = kwargs["pipeline_resource_name"]
            name = executor_input_utils.get_local_task_resource_name(kwargs["component_name"])
            use = self.enabled and (self.cacheable is None or kwargs["component_name"] in self.cacheable)
            key = task_key(kwargs["component_spec"], kwargs["executor_spec"], kwargs["arguments"]) if use else ""
            entry = self._lookup(key) if use and step_name(name) not in self.rerun else None
            if entry is not None:
                print(f"kfp.local: {name}: cached, outputs of run {entry['run']}", flush=True)
                self.cached.append(name)
                return entry["outputs"], status.Status.SUCCESS
            if use:
                task_root = Path(executor_input_utils.construct_local_task_root(
                    kwargs["pipeline_root"], self.run_name, name))
                if self._resume(key, task_root):
                    print(f"kfp.local: {name}: resuming an unfinished attempt", flush=True)
                    self.resumed.append(name)
            start = time.monotonic()
            outputs, task_status = original(**kwargs)
            self.seconds[name] = time.monotonic() - start
            self.executed.append(name)
            if use and task_status == status.Status.SUCCESS:
                self._store(key, {"outputs": outputs, "paths": _written(outputs), "run": self.run_name, "task": name})
                (self.directory / f"{key}{ATTEMPT_SUFFIX}").unlink(missing_ok=True)
            return outputs, task_status

        task_dispatcher.run_single_task_implementation = run_task
        try:
            yield self
        finally:
            task_dispatcher.run_single_task_implementation = original
