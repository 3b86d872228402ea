"""The KFP pipeline: it compiles to a strict PipelineSpec, the report functions build the right
summary, and one local kfp run of the debug config writes summary.json with the results contract."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from efm.components import EFM_IMAGE
from efm.components.artifacts import publish, staged
from efm.data.subsample import nested_fractions, split_validation
from efm.evaluation.report import (
    PLOT,
    SUMMARY,
    TABLE,
    TABLE_HEADER,
    evaluation_page,
    markdown_table,
    merge_results,
    result_row,
    update_report,
    write_report,
)
from efm.pipelines.experiment import RETRIES, compile_pipeline, make_experiment_pipeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES_PER_BRANCH = 6  # subsample, sft, select, self_improve, evaluate, report


def _compiled(tmp_path: Path, fractions: list[float], seeds: list[int]) -> tuple[dict, pipeline_spec_pb2.PipelineSpec]:
    path = compile_pipeline(tmp_path / "pipeline.yaml", fractions, seeds)
    raw = yaml.safe_load(path.read_text())
    return raw, json_format.ParseDict(raw, pipeline_spec_pb2.PipelineSpec())  # strict: unknown fields fail


@pytest.mark.parametrize(("fractions", "seeds"), [([0.5], [7]), ([0.1, 0.2], [0, 1])])
def test_pipeline_compiles_to_a_strict_spec_with_one_branch_per_fraction_and_seed(
        tmp_path: Path, fractions: list[float], seeds: list[int]) -> None:
    raw, spec = _compiled(tmp_path, fractions, seeds)
    tasks = spec.root.dag.tasks
    branches = len(fractions) * len(seeds)
    assert len(tasks) == 4 + STAGES_PER_BRANCH * branches  # + start-tracking, stage-configs, dataset and validate
    assert list(spec.root.input_definitions.parameters) == ["config_json", "tracking_uri"]
    # The data and Stage-1 steps take the config as they read it, from stage-configs; the others
    # the whole config.
    for key, t in tasks.items():
        config = t.inputs.parameters.get("config_json")
        view = config.task_output_parameter if config is not None else None
        if key == "dataset" or key.startswith("subsample"):
            assert (view.producer_task, view.output_parameter_key) == ("stage-configs", "data")
        elif key == "validate":
            assert (view.producer_task, view.output_parameter_key) == ("stage-configs", "validate")
        elif key.startswith(("sft", "select")):
            assert (view.producer_task, view.output_parameter_key) == ("stage-configs", "stage1")
        elif config is not None:
            assert config.component_input_parameter == "config_json"
    for key, t in tasks.items():
        if key in ("start-tracking", "stage-configs"):
            continue
        assert t.inputs.parameters["tracking_uri"].component_input_parameter == "tracking_uri"
        if key.startswith("report"):  # never cached: they finish the parent run that start-tracking opens
            parent = t.inputs.parameters["parent_run_id"].task_output_parameter
            assert parent.producer_task == "start-tracking"
        else:  # cached stages: no input changes from run to run (the parent is found by the KFP run name)
            assert "parent_run_id" not in t.inputs.parameters
            assert all(p.task_output_parameter.producer_task in ("", "stage-configs")
                       for p in t.inputs.parameters.values())
    assert "start-tracking" in tasks["dataset"].dependent_tasks  # the parent run exists before any stage
    start = tasks["start-tracking"].inputs.parameters  # the parent run logs the branches' fractions
    assert start["fractions"].runtime_value.constant.string_value == " ".join(str(f) for f in fractions)
    names = {t.task_info.name for t in tasks.values()}
    for f in fractions:
        for s in seeds:
            assert {f"{stage}-f{f:g}-s{s}" for stage in ("subsample", "sft", "select", "self-improve",
                                                           "evaluate", "report")} <= names
    for key, t in tasks.items():  # retries and caching are set explicitly on every task
        assert t.retry_policy.max_retry_count >= 1
        # a new parent run per pipeline run, finished by the report with the lineage
        assert t.caching_options.enable_cache == (key != "start-tracking" and not key.startswith("report"))
    assert {t.retry_policy.max_retry_count for t in tasks.values()} <= set(RETRIES.values())
    images = {e["container"]["image"] for e in raw["deploymentSpec"]["executors"].values()}
    assert images == {EFM_IMAGE}
    # no task installs anything at start
    assert not any("pip install" in " ".join(e["container"]["command"])
                   for e in raw["deploymentSpec"]["executors"].values())
    # the report is a chain through every branch; its last step is the pipeline's output
    (selector,) = spec.root.dag.outputs.artifacts["Output"].artifact_selectors
    last = tasks[selector.producer_subtask]
    assert last.task_info.name == f"report-f{fractions[-1]:g}-s{seeds[-1]}"
    steps, task = 1, last
    while "previous" in task.inputs.artifacts:
        task = tasks[task.inputs.artifacts["previous"].task_output_artifact.producer_task]
        steps += 1
    assert steps == branches
    # the data gate runs after the dataset and before every branch (so before any training)
    key = {t.task_info.name: k for k, t in tasks.items()}
    gate = tasks[key["validate"]]
    assert gate.inputs.artifacts["episodes"].task_output_artifact.producer_task == key["dataset"]
    assert gate.inputs.parameters["seeds"].runtime_value.constant.string_value == " ".join(map(str, seeds))
    for f in fractions:
        for s in seeds:
            assert key["validate"] in tasks[key[f"subsample-f{f:g}-s{s}"]].dependent_tasks


def test_invalid_fan_out_is_rejected() -> None:
    for fractions, seeds in (([], [0]), ([0.5], []), ([1.5], [0]), ([0.5, 0.5], [0]), ([0.5], [1, 1])):
        with pytest.raises(ValueError):
            make_experiment_pipeline(fractions, seeds)


def test_one_fraction_subsample_is_the_same_as_within_all_fractions() -> None:
    """The subsample component writes only its branch's fraction; nesting across branches
    holds because a fraction's subset does not depend on which other fractions are drawn."""
    ids = [f"ep-{i}" for i in range(100)]
    train, _ = split_validation(ids, 10, seed=7)
    together = nested_fractions(train, (0.1, 0.2, 0.8), seed=7)
    for f in (0.1, 0.2, 0.8):
        assert nested_fractions(train, (f,), seed=7)[f] == together[f]


def _row(fraction: float, seed: int, sft: float, si: float, precision: float | None) -> dict:
    ev = {"sft": {"success_rate": sft, "mean_episode_length": 40.0, "optimal_length_ratio": 1.6,
                  "mean_optimal_length": 25.0},
          "self_improved": {"success_rate": si, "mean_episode_length": 30.0, "optimal_length_ratio": 1.2,
                            "mean_optimal_length": 25.0},
          "success_detector": {"precision": precision, "recall": 0.9},
          "sft_success_detector": {"precision": 0.5, "recall": 0.5}}
    return result_row("pointmass", fraction, seed, 220, int(fraction * 200), 20, 310, ev)


def test_report_functions_build_summary_table_and_plot(tmp_path: Path) -> None:
    a, b = _row(0.1, 0, 0.4, 0.7, 0.8), _row(0.2, 0, 0.6, 0.9, None)
    assert set(a) == {"domain", "data_fraction", "seed", "dataset_episodes", "sft_episodes",
                      "self_improvement_episodes", "self_improvement_env_steps", "sft", "self_improved",
                      "success_detector"}
    assert a["sft"] == {"success_rate": 0.4, "mean_episode_length": 40.0, "optimal_length_ratio": 1.6}
    assert a["success_detector"] == {"precision": 0.8, "recall": 0.9}

    rows = merge_results(merge_results([], b), a)
    assert rows == [a, b]  # sorted by fraction
    assert merge_results(rows, {**a, "self_improvement_episodes": 99})[0]["self_improvement_episodes"] == 99
    assert len(merge_results(rows, a)) == 2  # a retried step replaces its row

    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + 2 and table[0].count("|") == len(TABLE_HEADER) + 1
    assert table[2] == "| pointmass | 0.1 | 0 | 20 | 20 | 310 | 40 | 0.40 | 0.70 | 1.60 | 1.20 | 0.80 | 0.90 |"
    assert "| n/a |" in table[3]  # an undefined precision

    summary = write_report(rows, tmp_path / "report")
    assert summary == {"results": rows}
    assert json.loads((tmp_path / "report" / SUMMARY).read_text()) == {"results": rows}
    assert (tmp_path / "report" / TABLE).read_text() == markdown_table(rows)
    assert (tmp_path / "report" / PLOT).read_bytes().startswith(PNG_MAGIC)


def test_report_chain_accumulates_rows_and_embeds_the_plot(tmp_path: Path) -> None:
    rows = [_row(0.1, 0, 0.4, 0.7, 0.8), _row(0.1, 1, 0.5, 0.8, 0.9), _row(0.2, 0, 0.6, 0.9, None)]
    previous = None
    for i, row in enumerate(rows):
        (tmp_path / f"result{i}").write_text(json.dumps(row))
        update_report(tmp_path / f"result{i}", tmp_path / f"summary{i}", tmp_path / f"page{i}.html", previous)
        previous = tmp_path / f"summary{i}"
    final = json.loads((tmp_path / "summary2" / SUMMARY).read_text())
    assert final == {"results": rows}
    page = (tmp_path / "page2.html").read_text()
    encoded = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(encoded).startswith(PNG_MAGIC)
    assert page.count("<tr>") == 1 + len(rows)


def test_evaluation_page_without_a_trajectory_plot(tmp_path: Path) -> None:
    page = evaluation_page(_row(0.5, 7, 0.4, 0.7, None), None)
    assert "fraction 0.5, seed 7" in page and "<img" not in page


def test_staged_output_replaces_an_earlier_attempt(tmp_path: Path) -> None:
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "stale").write_text("from a failed attempt")
    with staged(target) as work:
        work.mkdir()
        (work / "a.txt").write_text("a")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with pytest.raises(RuntimeError), staged(target) as work:
        work.mkdir()
        (work / "b.txt").write_text("b")
        raise RuntimeError("stage failed")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]  # a failure publishes nothing
    publish(target, tmp_path / "copy")
    assert (tmp_path / "copy" / "a.txt").read_text() == "a"


def test_pretraining_is_one_step_that_every_branch_starts_from(tmp_path: Path) -> None:
    """model.init="pretrain" (the table's default) adds one pretrain task, after start-tracking
    and independent of the data (its config the view of what it reads); every branch's SFT takes
    its model as `pretrained`. Without it (pointmass), or given an earlier pretraining's output
    (model.init_path), there is no such task and SFT has no such input."""
    from efm.cli import load_config
    from efm.config import default_config
    from efm.pipelines.experiment import GraphShape

    shape = GraphShape.of(default_config("tabletop"))
    assert shape == GraphShape(transfer_domains=("bananatable",), pretrain=True)
    assert GraphShape.of(default_config("pointmass")) == GraphShape()
    earlier = load_config("tabletop", '{"model": {"init_path": "runs/pretrain"}}')  # an `efm pretrain` output
    assert GraphShape.of(earlier) == GraphShape(transfer_domains=("bananatable",), pretrain=False)
    path = compile_pipeline(tmp_path / "p.yaml", [0.1, 0.2], [0], shape=GraphShape(pretrain=True))
    spec = json_format.ParseDict(yaml.safe_load(path.read_text()), pipeline_spec_pb2.PipelineSpec())
    tasks = spec.root.dag.tasks
    key = {t.task_info.name: k for k, t in tasks.items()}
    pre = tasks[key["pretrain"]]
    assert set(pre.dependent_tasks) == {key["start-tracking"], key["stage-configs"]} and not pre.inputs.artifacts
    view = pre.inputs.parameters["config_json"].task_output_parameter  # the config as pretraining reads it
    assert (view.producer_task, view.output_parameter_key) == (key["stage-configs"], "pretrain")
    assert pre.caching_options.enable_cache and pre.retry_policy.max_retry_count == RETRIES["pretrain"]
    for f in (0.1, 0.2):
        sft = tasks[key[f"sft-f{f:g}-s0"]]
        assert sft.inputs.artifacts["pretrained"].task_output_artifact.producer_task == key["pretrain"]
        assert spec.components[sft.component_ref.name].input_definitions.artifacts.keys() == {
            "train", "validation", "pretrained"}
    plain = json_format.ParseDict(yaml.safe_load(compile_pipeline(tmp_path / "q.yaml", [0.1], [0]).read_text()),
                                  pipeline_spec_pb2.PipelineSpec())
    assert "pretrain" not in {t.task_info.name for t in plain.root.dag.tasks.values()}
    assert all("pretrained" not in t.inputs.artifacts for t in plain.root.dag.tasks.values())


def test_a_run_from_a_missing_pretraining_is_refused_before_any_step(tmp_path: Path) -> None:
    """With no pretrain step to make them, the starting weights must exist when the run starts,
    not be found missing by SFT after the dataset step's minutes."""
    from efm.cli import load_config
    from efm.pipelines.local import run_local

    cfg = load_config("tabletop", json.dumps({"model": {"init_path": str(tmp_path / "nowhere")}}))
    with pytest.raises(FileNotFoundError, match="nowhere/params does not exist"):
        run_local(cfg, tmp_path / "out", [0.1], [0])
    assert not (tmp_path / "out").exists()


def test_the_steps_that_first_run_the_simulation_take_its_code_digest(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache keys on a task's inputs, not on library code: dataset and pretrain take the
    simulation's source digest as a constant input, so other physics misses the cache there
    (and downstream, whose inputs are their artifacts) instead of reusing data made before."""
    from efm.pipelines import experiment
    from efm.pipelines.experiment import GraphShape

    for version in ("a" * 16, "b" * 16):
        monkeypatch.setattr(experiment, "simulation_version", lambda v=version: v)
        path = compile_pipeline(tmp_path / f"{version}.yaml", [0.1], [0], shape=GraphShape(pretrain=True))
        spec = json_format.ParseDict(yaml.safe_load(path.read_text()), pipeline_spec_pb2.PipelineSpec())
        tasks = {t.task_info.name: t for t in spec.root.dag.tasks.values()}
        for name in ("dataset", "pretrain"):
            assert tasks[name].inputs.parameters["simulation"].runtime_value.constant.string_value == version
        assert all("simulation" not in t.inputs.parameters for n, t in tasks.items() if n not in ("dataset", "pretrain"))


def test_the_source_digest_follows_the_sources_and_only_them(tmp_path: Path) -> None:
    from efm.envs import simulation_version, source_digest

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    first = source_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("not code")
    assert source_digest(tmp_path) == first
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    assert source_digest(tmp_path) != first
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    assert source_digest(tmp_path) == first
    (tmp_path / "sub" / "b.py").rename(tmp_path / "b.py")  # same bytes, another module
    assert source_digest(tmp_path) != first
    assert len(simulation_version()) == 16 and int(simulation_version(), 16) >= 0
