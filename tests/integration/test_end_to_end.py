"""`efm run --debug` end to end through the CLI (kfp local), single stages from its directories,
CLI errors, and the local task cache with MLflow tracking on.

One module fixture runs `efm run --debug` three times into one directory:

1. a fault injected into subsample: the run fails, its parent MLflow run ends FAILED;
2. no fault: dataset (and its validation gate) come from the cache, the rest executes, the
   parent finishes: the end-to-end checks read this run's artifacts and lineage;
3. again: every stage comes from the cache; the parent still shows the whole lineage.

(The second run's artifacts are those of a run that executed everything: the same config, seed
and inputs; one set of runs serves both the end-to-end and the cache checks.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from efm.cli import main, ui_command
from efm.components.tracking import FAULT_ENV, REUSED_RUNS, STAGE_RUNS
from efm.config import debug_config
from efm.envs import simulation_version
from efm.tracking import PARENT, UPSTREAM

SEED = 7
POLICY_KEYS = {"success_rate", "mean_episode_length", "optimal_length_ratio"}
STAGE_TASKS = ["dataset", "validate", "subsample", "sft", "select", "self-improve", "evaluate"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`efm run` (the kfp local pipeline) on the debug config, one fraction and one seed, three
    times into one directory: failing in subsample, then completing, then from the cache. The
    failed run had other training and practice settings (what the data steps do not read)."""
    root = tmp_path_factory.mktemp("e2e")
    out, cwd = root / "out", root / "cwd"
    cwd.mkdir()
    argv = ["run", "--debug", "--quiet", "--seeds", str(SEED), "--out", str(out)]
    other = json.dumps({"sft": {"learning_rate": 3e-4}, "self_improve": {"gamma": 0.95}})
    result: dict[str, Any] = {"out": out, "cwd": cwd, "seconds": []}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # anything written outside --out lands here, not in the repository
        mp.setenv(FAULT_ENV, "subsample")
        with pytest.raises(RuntimeError, match="FAILURE"):
            main([*argv, "--config", other])
        mp.delenv(FAULT_ENV)
        for _ in range(2):
            t0 = time.time()
            assert main(argv) == 0
            result["seconds"].append(time.time() - t0)
            result.setdefault("summaries", []).append(json.loads((out / "summary.json").read_text()))
    return result


@pytest.fixture(scope="module")
def run_dir(runs: dict[str, Any]) -> dict[str, Path]:
    """The directories of the run that completed (the second): its stages' outputs, and the
    dataset the failed first run generated and the second took from the cache."""
    out = runs["out"]
    run_root = out / "pipeline_root" / runs["summaries"][0]["kfp"]["run_name"]
    (first_root,) = (p for p in (out / "pipeline_root").iterdir() if (p / "dataset").is_dir())
    return {"out": out, "cwd": runs["cwd"], "run_root": run_root, "dataset": first_root / "dataset" / "episodes",
            "train": run_root / "subsample" / "train", "sft": run_root / "sft" / "model",
            "select": run_root / "select" / "model", "self_improve": run_root / "self-improve" / "model",
            "evaluate": run_root / "evaluate" / "evaluation"}


def test_summary_results_contract(run_dir: dict[str, Path]) -> None:
    cfg = debug_config()
    summary = json.loads((run_dir["out"] / "summary.json").read_text())
    assert summary["tracking_uri"] == f"sqlite:///{run_dir['out'] / 'mlflow.db'}"
    assert (run_dir["out"] / "success_vs_episodes.png").read_bytes()[:4] == b"\x89PNG"
    (result,) = summary["results"]
    assert {"domain", "data_fraction", "seed", "dataset_episodes", "self_improvement_episodes",
            "self_improvement_env_steps", "sft",
            "self_improved", "success_detector", "mlflow_run_id"} <= set(result)
    assert result["domain"] == "pointmass"
    assert result["data_fraction"] == cfg.data.fractions[0]
    assert result["seed"] == SEED
    assert result["dataset_episodes"] == cfg.data.num_episodes
    assert result["sft_episodes"] == int((cfg.data.num_episodes - cfg.data.validation_episodes)
                                         * cfg.data.fractions[0])
    assert result["self_improvement_episodes"] == cfg.self_improve.max_episodes
    assert result["self_improvement_env_steps"] > 0  # executed steps, reported beside the episodes
    assert result["tracking_failures"] == []
    for policy in ("sft", "self_improved"):
        m = result[policy]
        assert set(m) == POLICY_KEYS
        assert 0.0 <= m["success_rate"] <= 1.0
        assert 0 < m["mean_episode_length"] <= cfg.env.max_episode_steps
        assert m["optimal_length_ratio"] >= 1.0  # nothing beats the straight line
    assert set(result["success_detector"]) == {"precision", "recall"}
    for v in result["success_detector"].values():
        assert v is None or 0.0 <= v <= 1.0
    assert json.loads((run_dir["run_root"] / "evaluate" / "result").read_text()) == result
    assert "data:image/png;base64," in (run_dir["run_root"] / "evaluate" / "page").read_text()


def test_dataset_is_rlds_readable_by_tfds(run_dir: dict[str, Path]) -> None:
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(run_dir["dataset"]))
    assert sum(s.num_examples for s in builder.info.splits.values()) == debug_config().data.num_episodes
    assert {"steps", "episode_metadata"} <= set(builder.info.features.keys())
    (episode,) = tfds.as_numpy(builder.as_dataset(split="train").take(1))
    steps = list(episode["steps"])  # as_numpy already made the nested dataset an iterable of dicts
    assert len(steps) == int(episode["episode_metadata"]["length"]) + 1
    assert steps[0]["is_first"] and steps[-1]["is_last"]
    assert steps[0]["observation"]["position"].shape == (2,)


def test_stage_artifacts(run_dir: dict[str, Path]) -> None:
    history = json.loads((run_dir["sft"] / "history.json").read_text())
    assert history[-1]["step"] == debug_config().sft.num_steps
    ckpts = {int(p.name) for p in (run_dir["sft"] / "checkpoints").iterdir() if p.name.isdigit()}
    assert debug_config().sft.num_steps in ckpts
    assert ckpts <= {int(h["step"]) for h in history}

    selection = json.loads((run_dir["select"] / "selection.json").read_text())
    assert set(selection) == {"policy", "reward"}
    for role in ("policy", "reward"):
        assert selection[role]["step"] in ckpts
        assert (run_dir["select"] / role).is_dir()
    best_bc = min(history, key=lambda h: h["val/bc_loss"])["step"]
    assert selection["policy"]["step"] == best_bc

    rounds = json.loads((run_dir["self_improve"] / "rounds.json").read_text())
    assert rounds["total_episodes"] == debug_config().self_improve.max_episodes
    assert rounds["rounds"] and 0 <= rounds["best_round"] < len(rounds["rounds"])
    assert rounds["rounds"][-1]["total_episodes"] == rounds["total_episodes"]
    assert (run_dir["self_improve"] / "policy").is_dir()

    png = run_dir["evaluate"] / "trajectories.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir["evaluate"] / "metrics.json").read_text())
    for policy in ("sft", "self_improved"):
        assert set(metrics[policy]) >= POLICY_KEYS
    for stage in ("sft", "select", "self_improve", "evaluate"):
        assert json.loads((run_dir[stage] / "config.json").read_text())["sft"]["seed"] == SEED


def _client(run_dir: dict[str, Path]) -> MlflowClient:
    return MlflowClient(f"sqlite:///{run_dir['out'] / 'mlflow.db'}")


def test_mlflow_lineage_walks_from_evaluate_back_to_dataset(run_dir: dict[str, Path]) -> None:
    client = _client(run_dir)
    (result,) = json.loads((run_dir["out"] / "summary.json").read_text())["results"]
    evaluate = client.get_run(result["mlflow_run_id"])
    # Follow the first upstream run at each step: the chain the artifacts took.
    chain, run = [], evaluate
    while True:
        chain.append(run)
        upstream = [i for i in run.data.tags.get(UPSTREAM, "").split(",") if i]
        if not upstream:
            break
        run = client.get_run(upstream[0])
    assert [r.data.tags["stage"] for r in chain] == ["evaluate", "select", "sft", "subsample", "dataset"]
    # evaluate consumed select and self_improve (and the data); self_improve consumed select
    ups = {client.get_run(i).data.tags["stage"] for i in evaluate.data.tags[UPSTREAM].split(",")}
    assert ups == {"select", "self_improve", "subsample", "dataset"}

    parent = client.get_run(evaluate.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["stage"] == "experiment"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["kfp.run_name"] == run_dir["run_root"].name
    assert {"report.md", "summary.json", "success_vs_episodes.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    # Every stage run hangs under the parent of the pipeline run that executed it: this run's
    # from subsample on; the dataset and its gate under the failed first run's (taken from the
    # cache here, and linked as reused).
    first = client.get_run(chain[-1].data.tags["mlflow.parentRunId"])
    assert first.data.tags["stage"] == "experiment" and first.info.run_id != parent.info.run_id
    assert parent.data.tags[REUSED_RUNS] == chain[-1].info.run_id
    stages, executed_in = {}, {}
    for p in (first, parent):
        for r in client.search_runs([p.info.experiment_id], f"tags.mlflow.parentRunId = '{p.info.run_id}'"):
            if r.info.status == "FINISHED" or p is parent:
                stages[r.data.tags["stage"]], executed_in[r.data.tags["stage"]] = r, p
    assert {s for s, p in executed_in.items() if p is first} == {"dataset", "validate"}
    assert set(stages) == {"dataset", "validate", "subsample", "sft", "select", "self_improve", "evaluate"}
    for stage, r in stages.items():
        assert r.info.status == "FINISHED"
        assert r.data.tags["domain"] == "pointmass"
        assert r.data.tags["kfp.run_name"] == executed_in[stage].data.tags["kfp.run_name"]
        assert r.data.tags["kfp.task_name"] == stage.replace("_", "-")
        if stage not in ("dataset", "validate"):
            assert (r.data.tags["data_fraction"], r.data.tags["seed"]) == ("0.5", str(SEED))
        if stage in ("dataset", "validate", "subsample"):  # the config sections it read
            assert {k.split(".")[0] for k in r.data.params} == {"env", "data", "tokenizer"} | (
                {"validation"} if stage == "validate" else set()) | ({"simulation"} if stage == "dataset" else set())
        else:
            assert r.data.params["sft.seed"] == str(SEED)
    # the dataset names the simulation that made it
    assert stages["dataset"].data.params["simulation"] == simulation_version()
    # the data gate ran on the dataset and left its report in MLflow
    gate = stages["validate"]
    assert gate.data.tags["efm.upstream_run_ids"] == stages["dataset"].info.run_id
    assert gate.data.metrics["validation.anomalies"] == 0
    assert {"validation.html", "validation.json"} <= {a.path for a in client.list_artifacts(gate.info.run_id)}


def test_mlflow_records_datasets_models_and_comparable_metrics(run_dir: dict[str, Path]) -> None:
    from efm import checkpoints
    from efm.tracking import dataset_digest

    cfg = debug_config()
    client = _client(run_dir)
    (result,) = json.loads((run_dir["out"] / "summary.json").read_text())["results"]
    runs = {r.data.tags["stage"]: r for r in client.search_runs(  # one finished run per stage
        [client.get_experiment_by_name("efm").experiment_id], "tags.stage != 'experiment' and attributes.status = 'FINISHED'")}
    assert len(runs) == 7

    inputs = {i.dataset.name: i for i in runs["sft"].inputs.dataset_inputs}
    assert set(inputs) == {f"train-f0.5-s{SEED}", f"validation-s{SEED}"}
    assert inputs[f"train-f0.5-s{SEED}"].dataset.digest == dataset_digest(run_dir["train"])
    assert {t.value for t in inputs[f"train-f0.5-s{SEED}"].tags} == {"training"}
    (source,) = runs["subsample"].inputs.dataset_inputs
    assert source.dataset.digest == dataset_digest(run_dir["dataset"])

    name = f"efm-pointmass-f0.5-s{SEED}"
    model = client.get_registered_model(name)
    assert set(model.aliases) == {"policy-sft", "reward-sft", "policy-self-improved"}
    improved = client.get_model_version_by_alias(name, "policy-self-improved")
    assert improved.run_id == runs["self_improve"].info.run_id
    assert client.get_model_version_by_alias(name, "policy-sft").run_id == runs["select"].info.run_id
    downloaded = mlflow.artifacts.download_artifacts(improved.source, tracking_uri=client.tracking_uri)
    registered = checkpoints.load_params(downloaded)
    produced = checkpoints.load_params(run_dir["self_improve"] / "policy")
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, registered, produced))

    curves = {k: client.get_metric_history(runs["sft"].info.run_id, k) for k in ("val.bc_loss", "val.steps_to_go_loss")}
    for history in curves.values():
        assert [m.step for m in history] == list(range(cfg.sft.eval_every, cfg.sft.num_steps + 1, cfg.sft.eval_every))
    rounds = json.loads((run_dir["self_improve"] / "rounds.json").read_text())["rounds"]
    per_round = client.get_metric_history(runs["self_improve"].info.run_id, "self_improve.success_rate")
    assert [m.value for m in sorted(per_round, key=lambda m: m.step)] == [r["success_rate"] for r in rounds]
    scores = runs["evaluate"].data.metrics
    for policy in ("sft", "self_improved"):
        for k in POLICY_KEYS:
            assert scores[f"{policy}.{k}"] == pytest.approx(result[policy][k])


def test_evaluate_stage_reruns_alone_from_directories(run_dir: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "evaluate"
    rc = main(["evaluate", "--debug", "--quiet", "--config", json.dumps({"sft": {"seed": SEED}, "self_improve": {"seed": SEED}}),
               "--select", str(run_dir["select"]), "--self-improve", str(run_dir["self_improve"]), "--out", str(out)])
    assert rc == 0
    assert (out / "trajectories.png").read_bytes()[:4] == b"\x89PNG"
    # Seeded evaluation of the same checkpoints: the same numbers as inside `efm run`.
    assert json.loads((out / "metrics.json").read_text()) == json.loads(
        (run_dir["evaluate"] / "metrics.json").read_text())


def test_select_stage_reruns_alone_from_directories(run_dir: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["select", "--debug", "--quiet", "--sft", str(run_dir["sft"]), "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "selection.json").read_text()) == json.loads(
        (run_dir["select"] / "selection.json").read_text())


def test_stage_refuses_an_output_directory_of_another_config(run_dir: dict[str, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    before = (run_dir["select"] / "selection.json").read_bytes()
    rc = main(["select", "--debug", "--quiet", "--config", '{"select": {"policy_rule": "last"}}',
               "--sft", str(run_dir["sft"]), "--out", str(run_dir["select"])])
    assert rc == 2
    assert "different config" in capsys.readouterr().err
    assert (run_dir["select"] / "selection.json").read_bytes() == before  # nothing lost


def test_run_writes_nothing_outside_out(run_dir: dict[str, Path]) -> None:
    assert list(run_dir["cwd"].iterdir()) == []


# ----------------------------------------------------------------------------- CLI errors


def test_missing_dataset_path_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_dataset"
    assert main(["subsample", "--debug", "--dataset", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "efm subsample: error" in err and str(missing) in err
    assert not (tmp_path / "o").exists()


def test_missing_stage_directories_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing_here"
    assert main(["evaluate", "--debug", "--select", str(missing), "--out", str(tmp_path / "e")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["select", "--debug", "--sft", str(missing), "--out", str(tmp_path / "s")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_non_dataset_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["sft", "--debug", "--quiet", "--train", str(empty), "--validation", str(empty),
               "--out", str(tmp_path / "sft")])
    assert rc == 2
    assert str(empty) in capsys.readouterr().err


@pytest.mark.parametrize(("config", "needle"), [
    ("{not json", "--config"),
    ('{"sft": {"bogus": 1}}', "bogus"),
    ('{"self_improve": {"gamma": 0}}', "self_improve.gamma"),
    ('{"sft": 3}', "sft"),
])
def test_bad_config_exits_2(config: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["select", "--debug", "--config", config, "--sft", str(tmp_path), "--out", str(tmp_path / "s")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "efm select: error" in err and needle in err


def test_config_file_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.json"
    path.write_text('{"self_improve": {"gamma": 2.0}}')
    assert main(["select", "--config", str(path), "--sft", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "self_improve.gamma" in capsys.readouterr().err


def test_long_inline_config_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = debug_config()
    config = json.dumps({"sft": {"num_steps": cfg.sft.num_steps, "batch_size": cfg.sft.batch_size,
                                 "eval_every": cfg.sft.eval_every, "checkpoint_every": cfg.sft.checkpoint_every,
                                 "learning_rate": cfg.sft.learning_rate, "warmup_steps": cfg.sft.warmup_steps},
                         "self_improve": {"gamma": 0.95, "loss_scale": 0.05, "batch_size": 16},
                         "eval": {"num_episodes": 8, "num_envs": 4, "plot_episodes": 3}})
    assert len(config) > 255 and "/" not in config
    missing = tmp_path / "no_sft"
    # The config parses; the command then fails cleanly on the missing directory.
    assert main(["select", "--debug", "--config", config, "--sft", str(missing), "--out", str(tmp_path / "s")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_tabletop_dataset_is_rlds_with_a_preview_gif(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from efm.data.inspect import inspect_dataset

    out = tmp_path / "dataset"
    assert main(["dataset", "--domain", "tabletop", "--episodes", "3", "--quiet", "--config",
                 '{"data": {"validation_episodes": 1}}', "--out", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["episodes"] == 3 and stats["domain"] == "tabletop"
    info = inspect_dataset(out)
    assert info["total_episodes"] == 3
    assert info["features"]["steps"]["feature"]["features"]["observation"]["features"]["rgb"]["shape"] == [72, 128, 3]
    assert (out / "demonstrations.gif").read_bytes()[:6] == b"GIF89a"


@pytest.mark.parametrize("command", [["run", "--out", "OUT"], ["compile", "--out", "OUT/p.yaml"]])
def test_domains_the_model_cannot_learn_are_refused_before_any_work(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A text-goal domain with a model that reads no text is refused before anything runs."""
    args = [a.replace("OUT", str(tmp_path / "o")) for a in command]
    state_model = ('{"model": {"variant": "mlp-tiny"}, "tokenizer": {"text_tokens": 0}, '
                   '"sft": {"objectives": ["bc", "steps_to_go"], "batch_size": 32}}')
    assert main([*args, "--domain", "bananatable", "--debug", "--config", state_model]) == 2
    assert "model.variant='mlp-tiny'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_ui_serves_the_run_store(run_dir: dict[str, Path]) -> None:
    """`efm ui --out` starts the MLflow UI on loopback over the run's database."""
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = ui_command(str(run_dir["out"]), None, port)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1].endswith(f"{run_dir['out'].name}/mlflow.db")
    assert cmd[cmd.index("--workers") + 1] == "1"
    log = run_dir["out"].parent / "ui.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        # Up to 5 minutes while the server lives: importing mlflow's server on a 2-core machine
        # whose other core runs a pipeline took 70 s; a server that exits fails at once.
        deadline, status = time.time() + 300, None
        while time.time() < deadline and status is None and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    status = r.status
            except OSError:
                time.sleep(1)
        assert status == 200, f"exit code {server.poll()}; its log:\n{log.read_text()[-3000:]}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # its workers can be slow to stop on a loaded machine
            server.kill()
            server.wait(timeout=30)


def test_ui_without_a_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ui", "--out", str(tmp_path)]) == 2
    assert "mlflow.db" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the task cache


def _store(out: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{out / 'mlflow.db'}")


def _parents(client: MlflowClient) -> list[Any]:
    exp = client.get_experiment_by_name("efm")
    return client.search_runs([exp.experiment_id], "tags.stage = 'experiment'", order_by=["attributes.start_time ASC"])


def test_a_failed_run_ends_its_parent_failed(runs: dict[str, Any]) -> None:
    client = _store(runs["out"])
    failed = _parents(client)[0]
    assert failed.info.status == "FAILED"
    children = client.search_runs([failed.info.experiment_id], f"tags.`{PARENT}` = '{failed.info.run_id}'")
    assert {r.data.tags["stage"]: r.info.status for r in children} == {
        "dataset": "FINISHED", "validate": "FINISHED", "subsample": "FAILED"}


def test_later_runs_reuse_what_earlier_runs_executed(runs: dict[str, Any]) -> None:
    second, third = (s["kfp"] for s in runs["summaries"])
    # The failed run's dataset, validated, though it trained with other settings: the data
    # steps' cache keys hold only what they read (stage-configs runs again on the new config).
    assert second["cached"] == ["dataset", "validate"]
    assert sorted(second["executed"]) == sorted(["start-tracking", "stage-configs", *STAGE_TASKS[2:], "report"])
    assert sorted(third["cached"]) == sorted(["stage-configs", *STAGE_TASKS])
    assert third["executed"] == ["start-tracking", "report"]
    run_root = runs["out"] / "pipeline_root" / third["run_name"]
    assert sorted(p.name for p in run_root.iterdir()) == ["report", "start-tracking"]  # nothing regenerated
    first_result, again = (s["results"] for s in runs["summaries"])
    assert first_result == again  # the same artifacts, so the same evaluation row
    print(f"efm run --debug: {runs['seconds'][0]:.0f} s, then from the cache {runs['seconds'][1]:.0f} s")


def test_the_cached_run_shows_the_whole_lineage_under_its_parent(runs: dict[str, Any]) -> None:
    client = _store(runs["out"])
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


def test_starting_from_pretraining_is_checked_before_any_work(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """model.init="pretrain": refused for a config that cannot pretrain (a state model on
    pointmass) before the pipeline starts; outside the pipeline `efm sft` needs the pretrain
    output's directory, and names the missing one."""
    assert main(["run", "--debug", "--quiet", "--out", str(tmp_path / "o"), "--config",
                 '{"model": {"init": "pretrain"}}']) == 2
    assert "reads no text" in capsys.readouterr().err and not (tmp_path / "o").exists()
    data = tmp_path / "data"
    data.mkdir()
    argv = ["sft", "--domain", "tabletop", "--debug", "--quiet", "--train", str(data), "--validation", str(data),
            "--out", str(tmp_path / "sft")]
    assert main([*argv, "--config", '{"model": {"init": "pretrain"}}']) == 2
    assert "model.init_path" in capsys.readouterr().err
    missing = tmp_path / "no-pretrain"
    assert main([*argv, "--config", json.dumps({"model": {"init": "pretrain", "init_path": str(missing)}})]) == 2
    assert str(missing) in capsys.readouterr().err and not (tmp_path / "sft").exists()
