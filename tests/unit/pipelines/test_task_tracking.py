"""Task-side MLflow glue and durable SFT artifacts, without running a pipeline."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from efm.components import stages
from efm.components.artifacts import SYNC_MANIFEST, mirrored, sync_tree
from efm.components.tracking import (
    FAILURES,
    FAULT_ENV,
    LINEAGE,
    REUSED_RUNS,
    RUN_ID,
    STAGE_RUNS,
    TERMINATED_EXIT,
    end_experiment,
    fail_experiment,
    find_parent,
    finish_experiment,
    stage_run,
    start_experiment,
)
from efm.config import debug_config
from efm.tracking import UPSTREAM, Tracker, dataset_digest, local_artifacts, local_store


@dataclass
class FakeArtifact:
    metadata: dict[str, Any] = field(default_factory=dict)


def _dead_server() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket closes


def test_stage_run_links_parent_and_upstream_and_stamps_outputs(tmp_path: Path) -> None:
    uri, cfg = local_store(tmp_path), debug_config()
    Tracker(uri, artifact_location=local_artifacts(tmp_path))
    parent = start_experiment(cfg, uri, "kfp-run-1", "f0.5-s3")
    inputs = [FakeArtifact({RUN_ID: "aaa", FAILURES: ["x: old"]}), FakeArtifact({RUN_ID: "bbb"}),
              FakeArtifact({RUN_ID: "aaa"}), FakeArtifact()]
    out = FakeArtifact()
    with stage_run("sft", cfg, uri, parent, "kfp-run-1", "sft-2", inputs, [out], 0.5, 3) as run:
        run.log_metrics({"val/bc_loss": 1.5, "skipped": float("nan")}, step=10)
    r = MlflowClient(uri).get_run(out.metadata[RUN_ID])
    assert r.info.run_name == "sft-f0.5-s3" and r.info.status == "FINISHED"
    assert r.data.tags[UPSTREAM] == "aaa,bbb"  # unique, in input order
    assert r.data.tags["mlflow.parentRunId"] == parent
    assert {k: r.data.tags[k] for k in ("stage", "domain", "data_fraction", "seed", "kfp.run_name",
                                        "kfp.task_name")} == {
        "stage": "sft", "domain": "pointmass", "data_fraction": "0.5", "seed": "3", "kfp.run_name": "kfp-run-1",
        "kfp.task_name": "sft-2"}
    assert r.data.metrics == {"val.bc_loss": 1.5}
    assert out.metadata[FAILURES] == ["x: old"]  # inherited, nothing new


def test_a_failing_stage_marks_its_run_failed(tmp_path: Path) -> None:
    uri = local_store(tmp_path)
    out = FakeArtifact()
    with pytest.raises(RuntimeError), stage_run("sft", debug_config(), uri, "", "r", "t", [], [out]):
        raise RuntimeError("diverged")
    assert MlflowClient(uri).get_run(out.metadata[RUN_ID]).info.status == "FAILED"


_OPEN_AND_WAIT = """
import sys, time
from efm.components.tracking import stage_run
from efm.config import debug_config
class Out: metadata = {}
with stage_run("sft", debug_config(), sys.argv[1], "", "kfp-run", "sft", [], [Out()], 0.5, 0) as run:
    print(run.run_id, flush=True)
    time.sleep(60)
"""


def test_a_terminated_task_ends_its_run_killed(tmp_path: Path) -> None:
    """SIGTERM (preemption, a task timeout) ends the run; by default it skipped every finally."""
    uri = local_store(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _OPEN_AND_WAIT, uri], stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()  # type: ignore[union-attr]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == TERMINATED_EXIT
    assert run_id and MlflowClient(uri).get_run(run_id).info.status == "KILLED"


def test_a_stage_run_restores_the_sigterm_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stage_run("dataset", debug_config(), "", "", "r", "t", [], [FakeArtifact()]):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_unreachable_server_costs_nothing_but_a_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    out, ran = FakeArtifact(), []
    with stage_run("evaluate", debug_config(), _dead_server(), "p", "r", "t", [FakeArtifact({FAILURES: ["a: b"]})],
                   [out], 0.1, 0) as run:
        run.log_metrics({"x": 1.0})  # a no-op: the run could not be created
        ran.append(True)
    assert ran == [True]
    assert out.metadata[RUN_ID] == ""
    (inherited, *mine) = out.metadata[FAILURES]
    assert inherited == "a: b"
    assert mine and all(f.startswith("evaluate-f0.1-s0: get_experiment_by_name") for f in mine)


def test_tracking_off_is_silent() -> None:
    out = FakeArtifact()
    with stage_run("dataset", debug_config(), "", "", "r", "t", [], [out]) as run:
        run.log_metrics({"x": 1.0})
    assert out.metadata == {RUN_ID: "", FAILURES: []}


def test_dataset_digest_follows_content(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text('{"a": 1}')
    (tmp_path / "data.tfrecord").write_bytes(b"12345")
    before = dataset_digest(tmp_path)
    (tmp_path / "data.tfrecord").write_bytes(b"123456")
    assert dataset_digest(tmp_path) != before
    (tmp_path / "data.tfrecord").write_bytes(b"12345")
    assert dataset_digest(tmp_path) == before
    (tmp_path / "dataset_info.json").write_text('{"a": 2}')
    assert dataset_digest(tmp_path) != before


def test_sync_tree_copies_then_lists_then_prunes(tmp_path: Path) -> None:
    work, artifact = tmp_path / "work", tmp_path / "artifact"
    (work / "checkpoints" / "10").mkdir(parents=True)
    (work / "checkpoints" / "10" / "params").write_text("p10")
    (work / "checkpoints" / "20.orbax-checkpoint-tmp-1").mkdir()
    (work / "checkpoints" / "20.orbax-checkpoint-tmp-1" / "params").write_text("partial")
    sync_tree(work, artifact)
    assert json.loads((artifact / SYNC_MANIFEST).read_text()) == {"checkpoints/10/params": 3}
    assert not (artifact / "checkpoints" / "20.orbax-checkpoint-tmp-1").exists()
    (work / "checkpoints" / "10" / "params").unlink()
    (work / "history.json").write_text("[]")
    sync_tree(work, artifact)
    assert json.loads((artifact / SYNC_MANIFEST).read_text()) == {"history.json": 2}
    assert not (artifact / "checkpoints" / "10" / "params").exists()


def test_a_sync_killed_while_rewriting_leaves_a_consistent_artifact(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Self-Improvement's state.json names its round directory. Killed while the rewritten
    state.json is copied, the artifact restores the old one with its round, or the new one with
    its round, never a state.json that names an unlisted round; a same-size rewrite is copied."""
    import os
    import shutil

    work, artifact = tmp_path / "work", tmp_path / "artifact"
    (work / "round_1").mkdir(parents=True)
    (work / "round_1" / "w").write_text("w1")
    (work / "state.json").write_text('{"round_dir": "round_1"}')
    sync_tree(work, artifact)
    (work / "round_2").mkdir()
    (work / "round_2" / "w").write_text("w2")
    (work / "state.json").write_text('{"round_dir": "round_2"}')  # the same size
    os.utime(work / "state.json", ns=(2**62, 2**62))  # written after the copy, whatever the clock's resolution
    copy = shutil.copyfile

    def killed_on_rewrite(src: object, dst: object) -> object:
        if str(dst).endswith(".efm-partial"):
            raise KeyboardInterrupt
        return copy(src, dst)

    monkeypatch.setattr(shutil, "copyfile", killed_on_rewrite)
    with pytest.raises(KeyboardInterrupt):
        sync_tree(work, artifact)
    monkeypatch.setattr(shutil, "copyfile", copy)
    with mirrored(artifact) as (restored, _):
        state = json.loads((restored / "state.json").read_text())
        assert state == {"round_dir": "round_1"} and (restored / state["round_dir"] / "w").read_text() == "w1"
        assert (restored / "round_2" / "w").read_text() == "w2"  # listed before any rewrite
    sync_tree(work, artifact)
    assert json.loads((artifact / "state.json").read_text()) == {"round_dir": "round_2"}
    assert sorted(json.loads((artifact / SYNC_MANIFEST).read_text())) == ["round_1/w", "round_2/w", "state.json"]


def test_mirrored_resumes_only_what_was_completely_synced(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    with pytest.raises(KeyboardInterrupt), mirrored(artifact) as (work, sync):
        (work / "a").write_text("1")
        sync(10)
        (work / "b").write_text("2")  # never synced: the task dies first
        raise KeyboardInterrupt
    (artifact / "stray").write_text("half-copied")  # a copy the kill interrupted, not in the manifest
    with mirrored(artifact) as (work, _):
        assert sorted(p.name for p in work.iterdir()) == ["a"]
        (work / "c").write_text("3")
    assert sorted(p.name for p in artifact.iterdir()) == sorted([SYNC_MANIFEST, "a", "c"])


def test_quiet_reaches_progress_bars_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from efm.progress import QUIET_ENV, progress_bar

    monkeypatch.delenv(QUIET_ENV, raising=False)
    assert not progress_bar(range(3), total=3, desc="x", enabled=True).disable
    monkeypatch.setenv(QUIET_ENV, "1")
    assert progress_bar(range(3), total=3, desc="x", enabled=True).disable


def test_the_parent_run_logs_the_fractions_its_branches_run(tmp_path: Path) -> None:
    """`efm run --fractions` and `efm submit --fractions` log the same: the branches', not the
    config's (which no pipeline task reads, and which stays as given for the cache's sake)."""
    uri, cfg = local_store(tmp_path), debug_config()  # data.fractions (0.5,)
    Tracker(uri, artifact_location=local_artifacts(tmp_path))
    branches = stages.start_tracking.python_func(config_json=cfg.to_json(), tracking_uri=uri, branches="f0.1-s0 f0.2-s0",
                                                 fractions="0.1 0.2", kfp_run="run-1")
    as_configured = start_experiment(cfg, uri, "run-2", "f0.5-s0")
    client = MlflowClient(uri)
    assert client.get_run(branches).data.params["data.fractions"] == "(0.1, 0.2)"
    assert client.get_run(as_configured).data.params["data.fractions"] == "(0.5,)"


def test_stage_runs_find_their_parent_by_the_kfp_run_name(tmp_path: Path) -> None:
    uri, cfg = local_store(tmp_path), debug_config()
    Tracker(uri, artifact_location=local_artifacts(tmp_path))
    first = start_experiment(cfg, uri, "kfp-run-1", "f0.5-s3")
    second = start_experiment(cfg, uri, "kfp-run-2", "f0.5-s3")
    out = FakeArtifact()
    with stage_run("dataset", cfg, uri, "", "kfp-run-1", "dataset", [], [out]):
        pass
    client = MlflowClient(uri)
    assert client.get_run(out.metadata[RUN_ID]).data.tags["mlflow.parentRunId"] == first
    assert find_parent(Tracker(uri), "kfp-run-2") == second
    assert find_parent(Tracker(uri), "no-such-run") is None


def test_the_final_report_records_every_stage_run_and_which_were_reused(tmp_path: Path) -> None:
    """Run 2 executed only evaluate; dataset came from run 1's cache: both are the parent's lineage."""
    uri, cfg = local_store(tmp_path), debug_config()
    Tracker(uri, artifact_location=local_artifacts(tmp_path))
    start_experiment(cfg, uri, "run-1", "b")
    data = FakeArtifact()
    with stage_run("dataset", cfg, uri, "", "run-1", "dataset", [], [data]):
        pass
    parent2 = start_experiment(cfg, uri, "run-2", "b")
    result = FakeArtifact()
    with stage_run("evaluate", cfg, uri, "", "run-2", "evaluate", [data], [result]):
        pass
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.json").write_text(json.dumps({"results": [{RUN_ID: result.metadata[RUN_ID]}]}))
    finish_experiment(uri, parent2, str(report))
    parent = MlflowClient(uri).get_run(parent2)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[STAGE_RUNS] == f"{result.metadata[RUN_ID]},{data.metadata[RUN_ID]}"
    assert parent.data.tags[REUSED_RUNS] == data.metadata[RUN_ID]
    lineage_dir = MlflowClient(uri).download_artifacts(parent2, LINEAGE, str(tmp_path / "dl"))
    lineage = json.loads(Path(lineage_dir).read_text())
    assert [(e["stage"], e["reused"], e["kfp_run"]) for e in lineage] == [("evaluate", False, "run-2"),
                                                                         ("dataset", True, "run-1")]


def test_a_failed_pipeline_run_ends_its_parent_and_running_stages_failed(tmp_path: Path) -> None:
    uri, cfg = local_store(tmp_path), debug_config()
    Tracker(uri, artifact_location=local_artifacts(tmp_path))
    parent = start_experiment(cfg, uri, "run-1", "b")
    other = start_experiment(cfg, uri, "run-2", "b")
    tracker = Tracker(uri)
    killed = tracker.start_run("sft", {"stage": "sft"}, parent)  # a SIGKILLed task never ends its run
    assert fail_experiment(uri, "run-1") == parent
    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(killed.run_id).info.status == "FAILED"
    assert client.get_run(other).info.status == "RUNNING"
    assert fail_experiment(uri, "never-started") is None


@dataclass
class FakeFinalStatus:
    """What the exit task sees of `dsl.PipelineTaskFinalStatus`."""

    state: str
    pipeline_task_name: str = "exit-handler-1"
    error_message: str | None = None


def test_the_exit_handler_fails_the_runs_of_a_pipeline_run_that_did_not_succeed(tmp_path: Path) -> None:
    uri, cfg = local_store(tmp_path), debug_config()
    Tracker(uri, artifact_location=local_artifacts(tmp_path))
    done, failed, cancelled = (start_experiment(cfg, uri, f"run-{i}", "b") for i in range(3))
    killed = Tracker(uri).start_run("sft", {"stage": "sft"}, failed)
    assert end_experiment("SUCCEEDED", uri, "run-0") is None  # the final report finishes it
    stages.end_tracking.python_func(tracking_uri=uri, status=FakeFinalStatus("FAILED"), kfp_run="run-1")
    assert end_experiment("CANCELLED", uri, "run-2") == cancelled
    client = MlflowClient(uri)
    assert client.get_run(done).info.status == "RUNNING"
    assert [client.get_run(i).info.status for i in (failed, killed.run_id, cancelled)] == ["FAILED"] * 3
    assert end_experiment("FAILED", "", "run-3") is None  # tracking off


def test_an_injected_fault_fails_the_stage_with_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = local_store(tmp_path)
    monkeypatch.setenv(FAULT_ENV, "sft")
    out = FakeArtifact()
    with stage_run("select", debug_config(), uri, "", "r", "t", [], [out]):
        pass  # another stage: unaffected
    with pytest.raises(RuntimeError, match="fault injected"), stage_run("sft", debug_config(), uri, "", "r", "t",
                                                                         [], [out]):
        pass
    assert MlflowClient(uri).get_run(out.metadata[RUN_ID]).info.status == "FAILED"
