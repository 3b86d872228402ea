"""The pipeline against a real `mlflow server` on loopback, which goes away mid-run: training
goes on, and the summary reports what could not be logged."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from efm.components.tracking import registered_model_name
from efm.config import debug_config
from efm.pipelines.local import run_local

SEED = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(root: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "server-artifacts"), "--workers", "1"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    _stop(server)
    raise RuntimeError("mlflow server did not start")


def _stop(server: subprocess.Popen) -> None:
    """The server and its workers (its own process group)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, int, subprocess.Popen]]:
    port = _free_port()
    proc = _start_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}", tmp_path, port, proc
    _stop(proc)


def test_pipeline_logs_to_a_real_server_and_survives_losing_it(
        server: tuple[str, Path, int, subprocess.Popen], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, root, port, proc = server
    monkeypatch.chdir(tmp_path)
    name = registered_model_name("pointmass", 0.5, SEED)
    killed = threading.Event()

    def kill_after_select() -> None:
        """Stops the server once select registered its checkpoints: later stages log to nothing."""
        client = MlflowClient(uri)
        deadline = time.time() + 900
        while time.time() < deadline:
            try:
                client.get_model_version_by_alias(name, "reward-sft")
                break
            except Exception:
                time.sleep(0.5)
        _stop(proc)
        killed.set()

    watcher = threading.Thread(target=kill_after_select, daemon=True)
    watcher.start()
    summary = run_local(debug_config(), tmp_path / "out", fractions=[0.5], seeds=[SEED], tracking_uri=uri)
    watcher.join(timeout=60)
    assert killed.is_set()

    # Training went on: the whole branch was evaluated.
    (row,) = summary["results"]
    assert row["self_improvement_episodes"] == debug_config().self_improve.max_episodes
    assert 0.0 <= row["self_improved"]["success_rate"] <= 1.0
    # ... and the stages after the server went away said what they could not log.
    failed_stages = {f.split(":")[0] for f in row["tracking_failures"]}
    assert {f"self_improve-f0.5-s{SEED}", f"evaluate-f0.5-s{SEED}"} <= failed_stages
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["results"][0]["tracking_failures"]

    # What was logged before is on the server: runs with lineage, registered checkpoints.
    restarted = _start_server(root, port)
    try:
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("efm").experiment_id])
        stages = {r.data.tags["stage"]: r for r in runs}
        assert {"experiment", "dataset", "subsample", "sft", "select"} <= set(stages)
        assert stages["sft"].data.tags["mlflow.parentRunId"] == stages["experiment"].info.run_id
        assert stages["sft"].data.tags["efm.upstream_run_ids"] == stages["subsample"].info.run_id
        assert [m.step for m in client.get_metric_history(stages["sft"].info.run_id, "val.bc_loss")]
        policy = client.get_model_version_by_alias(name, "policy-sft")
        assert policy.run_id == stages["select"].info.run_id
        files = client.list_artifacts(policy.run_id, "policy-sft")  # uploaded through the server
        assert files
    finally:
        _stop(restarted)
