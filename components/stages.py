"""One KFP v2 lightweight component per pipeline stage, plus the report.

Each body imports inside itself (kfp ships only the function's source to the task), validates
the config, opens the stage's MLflow child run (`efm.components.tracking.stage_run`), makes
one call to a library stage in `efm.stages`, and writes typed outputs. Stages write to local
scratch that is then copied into the artifact path (`efm.components.artifacts`).
`install_kfp_package=False`: the image already has kfp and the project, and local runs use the
current environment (no pip at task time).

Every component takes `tracking_uri` ("" for no tracking) and learns its KFP run and task
names from placeholders (spelled out in each signature: kfp ships the function's source alone,
without module-level names). Stage components take no other per-run input, so a new pipeline
run can reuse them from the cache: their MLflow run finds its parent by the KFP run name
(`stage_run(..., parent_run_id="", kfp_run, ...)`). Only the report steps, which are never
cached, take the parent's id (`parent_run_id`, the output of start_tracking).

No `from __future__ import annotations` here: kfp reads the annotations as types.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from efm.components import EFM_IMAGE


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def start_tracking(config_json: str, tracking_uri: str, branches: str, fractions: str,
                   kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER) -> str:
    """Opens the pipeline run's parent MLflow run, its params the config with the branches'
    `fractions` (space-separated); returns its id ("" without tracking)."""
    from efm.components.tracking import start_experiment
    from efm.config import RunConfig

    return start_experiment(RunConfig.from_json(config_json), tracking_uri, kfp_run, branches,
                            [float(f) for f in fractions.split()])


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def end_tracking(tracking_uri: str, status: dsl.PipelineTaskFinalStatus,
                 kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER):
    """The exit handler (vertex target): a run that did not succeed ends its parent MLflow run,
    and the stage runs left running, FAILED. Takes no task's output: it runs whatever failed."""
    from efm.components.tracking import end_experiment

    end_experiment(status.state, tracking_uri, kfp_run)


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def stage_configs(config_json: str) -> NamedTuple("StageConfigs", [("data", str), ("validate", str),
                                                                   ("pretrain", str), ("stage1", str)]):
    """The config as the steps that read part of it read it (`efm.config.stage_view`): `data`
    for dataset and subsample, `validate` for the gate, `pretrain`, and `stage1` for sft and
    select. Their cache keys then hold only what they read."""
    from collections import namedtuple

    from efm.config import RunConfig, stage_view

    cfg = RunConfig.from_json(config_json)
    return namedtuple("StageConfigs", ["data", "validate", "pretrain", "stage1"])(
        *(stage_view(cfg, s).to_json() for s in ("dataset", "validate", "pretrain", "sft")))


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def dataset(config_json: str, simulation: str, tracking_uri: str, episodes: Output[Dataset],
            kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER, kfp_task: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER):
    """Demonstrations as an RLDS dataset; the artifact path is the dataset directory.
    `simulation` (`efm.envs.simulation_version()`) names the simulation's code: an input, so that
    the cache does not hand on a dataset of other physics; recorded with the dataset."""
    from efm.components.artifacts import staged
    from efm.components.tracking import stage_run
    from efm.config import RunConfig
    from efm.stages import dataset_stage

    cfg = RunConfig.from_json(config_json)
    with stage_run("dataset", cfg, tracking_uri, "", kfp_run, kfp_task, [], [episodes]) as run:
        run.log_params({"simulation": simulation})
        with staged(episodes.path) as work:
            stats = dataset_stage(cfg, work)
        run.log_metrics({f"dataset.{k}": v for k, v in stats.items()})
        run.log_artifacts(episodes.path, "*.gif")  # camera domains: the first demonstrations
    episodes.metadata.update({k: v for k, v in stats.items() if isinstance(v, int | float | str)})
    episodes.metadata["simulation"] = simulation


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def validate(config_json: str, episodes: Input[Dataset], fractions: str, seeds: str, tracking_uri: str,
             statistics: Output[Artifact], page: Output[HTML], facets: Output[HTML],
             metrics: Output[Metrics], kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
             kfp_task: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER):
    """The data gate (TFDV): statistics, schema anomalies, drift against the domain's reference
    and the train/validation skew of every branch (`fractions`, `seeds`: space-separated).
    Fails, before any subsampling or training, with the report in the log, in `statistics`
    (validation.json, stats protos), `page` (tables and plots) and MLflow; `facets` is TFDV's
    own page. Anomalies in `validation.accept` are reported but pass."""
    import shutil
    from pathlib import Path

    from efm.components.tracking import stage_run
    from efm.config import RunConfig
    from efm.data.validation import FACETS_HTML, REPORT_HTML, ValidationError, run_validation

    cfg = RunConfig.from_json(config_json)
    with stage_run("validate", cfg, tracking_uri, "", kfp_run, kfp_task, [episodes], [statistics]) as run:
        report = run_validation(cfg, episodes.path, statistics.path, [float(f) for f in fractions.split()],
                                [int(s) for s in seeds.split()], temp_root=statistics.uri, job_name=kfp_run)
        print(report.summary())
        shutil.copyfile(Path(statistics.path) / REPORT_HTML, page.path)
        shutil.copyfile(Path(statistics.path) / FACETS_HTML, facets.path)
        scores = {"validation.anomalies": len(report.failed), "validation.accepted": len(report.anomalies) - len(report.failed),
                  "validation.seconds": report.seconds}
        run.log_metrics(scores)
        run.log_params({"validation.accepted_anomalies": ",".join(a.name for a in report.anomalies if a.accepted)})
        run.log_artifacts(statistics.path, "*.html")
        run.log_artifacts(statistics.path, "*.json")
        for k, v in scores.items():
            metrics.log_metric(k, float(v))
        statistics.metadata.update({"ok": report.ok, "anomalies": [a.name for a in report.failed],
                                    "accepted": [a.name for a in report.anomalies if a.accepted]})
        if not report.ok:
            raise ValidationError(report)


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def subsample(config_json: str, episodes: Input[Dataset], fraction: float, seed: int, tracking_uri: str,
              train: Output[Dataset], validation: Output[Dataset],
              kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER, kfp_task: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER):
    """One data fraction's training episodes and the validation split, for one seed.

    Only `fraction` is written: every fraction is a prefix of one permutation drawn from
    `seed` alone, and validation comes from its own stream, so branches with other fractions
    and the same seed still get nested subsets and the same validation episodes.
    """
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from efm.components.artifacts import publish
    from efm.components.tracking import stage_run
    from efm.config import RunConfig
    from efm.data.subsample import fraction_dirname, fraction_key
    from efm.stages import seeded, subsample_stage

    cfg = seeded(RunConfig.from_json(config_json), seed)
    cfg = cfg.replace(data=replace(cfg.data, fractions=(fraction,)))
    with stage_run("subsample", cfg, tracking_uri, "", kfp_run, kfp_task, [episodes],
                   [train, validation], fraction, seed) as run:
        run.log_dataset(episodes.path, episodes.uri, "demonstrations", "source")
        with tempfile.TemporaryDirectory(prefix="efm-subsample-") as tmp:
            manifest = subsample_stage(cfg, episodes.path, tmp, seed)
            publish(Path(tmp) / fraction_dirname(fraction), train.path)
            publish(Path(tmp) / manifest["validation"]["path"], validation.path)
        entry = manifest["fractions"][fraction_key(fraction)]
        run.log_metrics({"train_episodes": entry["count"], "validation_episodes": manifest["validation"]["count"]})
    train.metadata.update({"fraction": fraction, "seed": seed, "count": entry["count"]})
    validation.metadata.update({"seed": seed, "count": manifest["validation"]["count"]})


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def pretrain(config_json: str, simulation: str, tracking_uri: str, model: Output[Model], metrics: Output[Metrics],
             kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER, kfp_task: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER):
    """The towers pretrained on questions about rendered table boards (`efm pretrain`), once
    per pipeline: every branch's SFT starts from it (model.init="pretrain"). The model artifact
    is the pretraining workdir, mirrored as SFT's is, so a restarted task resumes. `simulation`
    as for `dataset`: the boards are the simulation's renders."""
    from efm.components.artifacts import mirrored
    from efm.components.tracking import stage_run
    from efm.config import RunConfig
    from efm.stages import pretrain_stage

    cfg = RunConfig.from_json(config_json)
    with stage_run("pretrain", cfg, tracking_uri, "", kfp_run, kfp_task, [], [model, metrics]) as run:
        run.log_params({"simulation": simulation})
        with mirrored(model.path) as (work, sync):
            out = pretrain_stage(cfg, work, log=run, on_checkpoint=sync)
        found = {f"localization.{k}": float(v) for k, v in out["localization"].items() if k != "step"}
        run.log_metrics(found)
        run.log_artifacts(model.path, "*.png")
    for k, v in {**found, "final_step": out["final_step"]}.items():
        metrics.log_metric(k, float(v))
    model.metadata.update({"final_step": out["final_step"], "simulation": simulation})


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def sft(config_json: str, train: Input[Dataset], validation: Input[Dataset], fraction: float, seed: int,
        tracking_uri: str, model: Output[Model], metrics: Output[Metrics],
        kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER, kfp_task: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER):
    """Stage 1; the model artifact is the SFT workdir (checkpoints and history.json).

    Checkpoints are copied to the artifact as training goes (`mirrored`), so a restarted task
    (retry, preemption) resumes from the last one and ends with the same result.
    """
    from efm.components.training import run_sft_task

    run_sft_task(config_json, train, validation, fraction, seed, tracking_uri, model, metrics, kfp_run, kfp_task)


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def sft_pretrained(config_json: str, train: Input[Dataset], validation: Input[Dataset], pretrained: Input[Model],
                   fraction: float, seed: int, tracking_uri: str, model: Output[Model], metrics: Output[Metrics],
                   kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                   kfp_task: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER):
    """Stage 1 as `sft`, starting from the pipeline's pretrain step (model.init="pretrain")."""
    from efm.components.training import run_sft_task

    run_sft_task(config_json, train, validation, fraction, seed, tracking_uri, model, metrics, kfp_run, kfp_task,
                 pretrained=pretrained)


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def select(config_json: str, sft_model: Input[Model], fraction: float, seed: int, tracking_uri: str,
           model: Output[Model], kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER, kfp_task: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER):
    """Policy and reward checkpoints by validation loss (policy/, reward/, selection.json),
    registered as versions of the branch's model with aliases policy-sft and reward-sft."""
    from pathlib import Path

    from efm.components.artifacts import staged
    from efm.components.tracking import registered_model_name, stage_run
    from efm.config import RunConfig
    from efm.stages import seeded, select_stage

    cfg = seeded(RunConfig.from_json(config_json), seed)
    with stage_run("select", cfg, tracking_uri, "", kfp_run, kfp_task, [sft_model], [model],
                   fraction, seed) as run:
        with staged(model.path) as work:
            selection = select_stage(cfg, sft_model.path, work)
        run.log_metrics({f"{role}.{k}": v for role, row in selection.items() for k, v in row.items()})
        for role, row in selection.items():
            run.register_model(registered_model_name(cfg.domain, fraction, seed), f"{role}-sft",
                               Path(model.path) / role, f"{model.uri}/{role}", tags=row)
    model.metadata.update({f"{role}.{k}": v for role, row in selection.items() for k, v in row.items()})


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def self_improve(config_json: str, selected: Input[Model], fraction: float, seed: int, tracking_uri: str,
                 model: Output[Model], metrics: Output[Metrics], practice_domain: str = "", actors: int = 0,
                 ray_address: str = "",
                 kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER, kfp_task: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER):
    """Stage 2 (Algorithm 1); the model artifact holds policy/ (the kept round) and rounds.json,
    registered as the branch model's policy-self-improved version. `practice_domain`: practise
    in a transfer domain (BananaTable) from the same checkpoints. `actors` K > 0: a Ray fleet
    of K actors, embedded in the task or on the cluster at `ray_address`. Each completed round
    is mirrored to the artifact, so a restarted task resumes from the last one."""
    from pathlib import Path

    from efm.components.artifacts import mirrored
    from efm.components.tracking import registered_model_name, stage_run
    from efm.config import RunConfig, practice_config
    from efm.self_improve.builder import with_fleet
    from efm.sft.select import POLICY
    from efm.stages import seeded, self_improve_stage

    cfg = with_fleet(practice_config(seeded(RunConfig.from_json(config_json), seed), practice_domain), actors,
                     ray_address)
    with stage_run("self_improve", cfg, tracking_uri, "", kfp_run, kfp_task, [selected],
                   [model, metrics], fraction, seed) as run:
        with mirrored(model.path) as (work, sync):
            out = self_improve_stage(cfg, selected.path, work, log=run, on_round=sync)
        best = out["rounds"][out["best_round"]]
        summary = {"total_episodes": out["total_episodes"], "rounds": len(out["rounds"]),
                   "best_round": out["best_round"],
                   **{f"best_round.{k}": best[k] for k in ("success_rate", "ground_truth_success_rate",
                                                             "mean_episode_length")}}
        run.log_metrics(summary)
        run.log_artifacts(model.path, "*.png")
        run.register_model(registered_model_name(cfg.domain, fraction, seed), "policy-self-improved",
                           Path(model.path) / POLICY, f"{model.uri}/{POLICY}",
                           tags={"round": out["best_round"], "total_episodes": out["total_episodes"]})
    for k, v in summary.items():
        metrics.log_metric(k, float(v))
    model.metadata.update({"total_episodes": out["total_episodes"], "best_round": out["best_round"]})


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def evaluate(config_json: str, episodes: Input[Dataset], train: Input[Dataset], selected: Input[Model],
             improved: Input[Model], fraction: float, seed: int, tracking_uri: str,
             metrics: Output[Metrics], page: Output[HTML], evaluation: Output[Artifact],
             result: Output[Artifact], practice_domain: str = "", kfp_run: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER, kfp_task: str = dsl.PIPELINE_TASK_NAME_PLACEHOLDER):
    """SFT against Self-Improved on ground truth. `evaluation`: metrics.json and plots;
    `result`: this branch's summary row (JSON) with its MLflow run and tracking failures,
    which the report steps collect."""
    import json
    from pathlib import Path

    from efm.components.artifacts import staged
    from efm.components.tracking import FAILURES, RUN_ID, stage_run
    from efm.config import RunConfig, practice_config
    from efm.evaluation.report import branch_result, evaluation_page
    from efm.stages import TRAJECTORIES, evaluate_stage, seeded

    cfg = practice_config(seeded(RunConfig.from_json(config_json), seed), practice_domain)
    with stage_run("evaluate", cfg, tracking_uri, "", kfp_run, kfp_task,
                   [selected, improved, train, episodes], [evaluation, result], fraction, seed) as run:
        with staged(evaluation.path) as work:
            ev = evaluate_stage(cfg, selected.path, improved.path, work, train.path)
        row = branch_result(cfg.domain, fraction, seed, episodes.path, train.path, improved.path, ev)
        # Everything the evaluation measured of each policy (with the stages reached and the
        # env's counters, beyond the summary's keys), for comparing runs in the MLflow UI.
        scores = {f"{name}.{k}": v for name in ("sft", "self_improved") for k, v in ev[name].items()}
        scores |= {f"success_detector.{k}": v for k, v in row["success_detector"].items() if v is not None}
        run.log_metrics(scores)
        run.log_artifacts(evaluation.path, "*.png")
    row |= {"mlflow_run_id": result.metadata[RUN_ID], "tracking_failures": result.metadata[FAILURES]}
    Path(result.path).write_text(json.dumps(row, indent=1, sort_keys=True))
    for k, v in scores.items():
        metrics.log_metric(k, float(v))
    plot = Path(evaluation.path) / TRAJECTORIES
    Path(page.path).write_text(evaluation_page(row, plot if plot.is_file() else None))


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def report(result: Input[Artifact], tracking_uri: str, parent_run_id: str, final: bool,
           summary: Output[Artifact], page: Output[HTML]):
    """The first report step: a report of one branch (summary.json, report.md, Figure 5).
    The `final` step logs the report to the parent run and finishes it."""
    from efm.components.tracking import finish_experiment
    from efm.evaluation.report import update_report

    update_report(result.path, summary.path, page.path)
    if final:
        finish_experiment(tracking_uri, parent_run_id, summary.path)


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def report_append(previous: Input[Artifact], result: Input[Artifact], tracking_uri: str, parent_run_id: str,
                  final: bool, summary: Output[Artifact], page: Output[HTML]):
    """A later report step: the previous step's report plus one more branch."""
    from efm.components.tracking import finish_experiment
    from efm.evaluation.report import update_report

    update_report(result.path, summary.path, page.path, previous_dir=previous.path)
    if final:
        finish_experiment(tracking_uri, parent_run_id, summary.path)
