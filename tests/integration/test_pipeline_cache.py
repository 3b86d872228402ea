"""`efm run --debug` three times into one directory, with MLflow tracking on:

1. a fault injected into subsample: the run fails, its parent MLflow run ends FAILED;
2. no fault: dataset comes from the cache, the rest executes, the parent finishes;
3. again: every stage comes from the cache; the parent still shows the whole lineage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from efm.cli import main
from efm.components.tracking import FAULT_ENV, REUSED_RUNS, STAGE_RUNS
from efm.tracking import PARENT

SEED = 7
STAGE_TASKS = ["dataset", "validate", "subsample", "sft", "select", "self-improve", "evaluate"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cache")
    out, cwd = root / "out", root / "cwd"
    cwd.mkdir()
    argv = ["run", "--debug", "--quiet", "--seeds", str(SEED), "--out", str(out)]
    result: dict[str, Any] = {"out": out, "seconds": []}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv(FAULT_ENV, "subsample")
        with pytest.raises(RuntimeError, match="FAILURE"):
            main(argv)
        mp.delenv(FAULT_ENV)
        for _ in range(2):
            t0 = time.time()
            assert main(argv) == 0
            result["seconds"].append(time.time() - t0)
            result.setdefault("summaries", []).append(json.loads((out / "summary.json").read_text()))
    return result


def _client(out: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{out / 'mlflow.db'}")


def _parents(client: MlflowClient) -> list[Any]:
    exp = client.get_experiment_by_name("efm")
    return client.search_runs([exp.experiment_id], "tags.stage = 'experiment'", order_by=["attributes.start_time ASC"])


def test_a_failed_run_ends_its_parent_failed(runs: dict[str, Any]) -> None:
    client = _client(runs["out"])
    failed = _parents(client)[0]
    assert failed.info.status == "FAILED"
    children = client.search_runs([failed.info.experiment_id], f"tags.`{PARENT}` = '{failed.info.run_id}'")
    assert {r.data.tags["stage"]: r.info.status for r in children} == {
        "dataset": "FINISHED", "validate": "FINISHED", "subsample": "FAILED"}


def test_later_runs_reuse_what_earlier_runs_executed(runs: dict[str, Any]) -> None:
    second, third = (s["kfp"] for s in runs["summaries"])
    assert second["cached"] == ["dataset", "validate"]  # the failed run's dataset, validated
    assert sorted(second["executed"]) == sorted(["start-tracking", *STAGE_TASKS[2:], "report"])
    assert sorted(third["cached"]) == sorted(STAGE_TASKS)
    assert third["executed"] == ["start-tracking", "report"]
    run_root = runs["out"] / "pipeline_root" / third["run_name"]
    assert sorted(p.name for p in run_root.iterdir()) == ["report", "start-tracking"]  # nothing regenerated
    first_result, again = (s["results"] for s in runs["summaries"])
    assert first_result == again  # the same artifacts, so the same evaluation row
    print(f"efm run --debug: {runs['seconds'][0]:.0f} s, then from the cache {runs['seconds'][1]:.0f} s")


def test_the_cached_run_shows_the_whole_lineage_under_its_parent(runs: dict[str, Any]) -> None:
    client = _client(runs["out"])
    _, second, third = _parents(client)
    for parent in (second, third):
        assert parent.info.status == "FINISHED"
        assert {"report.md", "summary.json", "lineage.json"} <= {a.path for a in client.list_artifacts(
            parent.info.run_id)}
    stage_runs = second.data.tags[STAGE_RUNS].split(",")
    assert sorted(client.get_run(i).data.tags["stage"] for i in stage_runs) == sorted(
        ["dataset", "subsample", "sft", "select", "self_improve", "evaluate"])
    # The second run executed all but the dataset: that one hangs under the failed run's parent.
    (reused,) = second.data.tags[REUSED_RUNS].split(",")
    assert client.get_run(reused).data.tags["stage"] == "dataset"
    # The third executed no stage: its parent links the second run's stage runs, all reused.
    assert set(third.data.tags[STAGE_RUNS].split(",")) == set(stage_runs)
    assert set(third.data.tags[REUSED_RUNS].split(",")) == set(stage_runs)
    assert runs["summaries"][1]["results"][0]["mlflow_run_id"] in stage_runs
