"""One KFP v2 lightweight component per pipeline stage, plus the report.

Each body imports inside itself (kfp ships only the function's source to the task), validates
the config, makes one call to a library stage in `efm.stages`, and writes typed outputs.
Stages write to local scratch that is then copied into the artifact path
(`efm.components.artifacts.staged`). `install_kfp_package=False`: the image already has kfp
and the project, and local runs use the current environment (no pip at task time).

No `from __future__ import annotations` here: kfp reads the annotations as types.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from efm.components import EFM_IMAGE


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def dataset(config_json: str, episodes: Output[Dataset]):
    """Demonstrations as an RLDS dataset; the artifact path is the dataset directory."""
    from efm.components.artifacts import staged
    from efm.config import RunConfig
    from efm.stages import dataset_stage

    cfg = RunConfig.from_json(config_json)
    with staged(episodes.path) as work:
        stats = dataset_stage(cfg, work, progress=False)
    episodes.metadata.update({k: v for k, v in stats.items() if isinstance(v, int | float | str)})


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def subsample(config_json: str, episodes: Input[Dataset], fraction: float, seed: int,
              train: Output[Dataset], validation: Output[Dataset]):
    """One data fraction's training episodes and the validation split, for one seed.

    Only `fraction` is written: every fraction is a prefix of one permutation drawn from
    `seed` alone, and validation comes from its own stream, so branches with other fractions
    and the same seed still get nested subsets and the same validation episodes.
    """
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from efm.components.artifacts import publish
    from efm.config import RunConfig
    from efm.data.subsample import fraction_dirname
    from efm.stages import subsample_stage

    cfg = RunConfig.from_json(config_json)
    cfg = cfg.replace(data=replace(cfg.data, fractions=(fraction,)))
    with tempfile.TemporaryDirectory(prefix="efm-subsample-") as tmp:
        manifest = subsample_stage(cfg, episodes.path, tmp, seed)
        publish(Path(tmp) / fraction_dirname(fraction), train.path)
        publish(Path(tmp) / manifest["validation"]["path"], validation.path)
    entry = manifest["fractions"][f"{fraction:g}"]
    train.metadata.update({"fraction": fraction, "seed": seed, "count": entry["count"]})
    validation.metadata.update({"seed": seed, "count": manifest["validation"]["count"]})


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def sft(config_json: str, train: Input[Dataset], validation: Input[Dataset], seed: int,
        model: Output[Model], metrics: Output[Metrics]):
    """Stage 1; the model artifact is the SFT workdir (checkpoints and history.json)."""
    from efm.components.artifacts import staged
    from efm.config import RunConfig
    from efm.stages import seeded, sft_stage

    cfg = seeded(RunConfig.from_json(config_json), seed)
    with staged(model.path) as work:
        out = sft_stage(cfg, train.path, validation.path, work, progress=False)
    final = out["history"][-1]
    for k, v in final.items():
        if k.startswith("val/"):
            metrics.log_metric(k.replace("/", "."), float(v))
    metrics.log_metric("final_step", float(out["final_step"]))
    model.metadata.update({"final_step": out["final_step"], "train_episodes": out["train_episodes"]})


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def select(config_json: str, sft_model: Input[Model], model: Output[Model]):
    """Policy and reward checkpoints by validation loss: policy/, reward/ and selection.json."""
    from efm.components.artifacts import staged
    from efm.config import RunConfig
    from efm.stages import select_stage

    cfg = RunConfig.from_json(config_json)
    with staged(model.path) as work:
        selection = select_stage(cfg, sft_model.path, work)
    model.metadata.update({f"{role}.{k}": v for role, row in selection.items() for k, v in row.items()})


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def self_improve(config_json: str, selected: Input[Model], seed: int, model: Output[Model],
                 metrics: Output[Metrics]):
    """Stage 2 (Algorithm 1); the model artifact holds policy/ (the kept round) and rounds.json."""
    from efm.components.artifacts import staged
    from efm.config import RunConfig
    from efm.stages import seeded, self_improve_stage

    cfg = seeded(RunConfig.from_json(config_json), seed)
    with staged(model.path) as work:
        out = self_improve_stage(cfg, selected.path, work, progress=False)
    best = out["rounds"][out["best_round"]]
    metrics.log_metric("total_episodes", float(out["total_episodes"]))
    metrics.log_metric("rounds", float(len(out["rounds"])))
    metrics.log_metric("best_round", float(out["best_round"]))
    for k in ("success_rate", "ground_truth_success_rate", "mean_episode_length"):
        metrics.log_metric(f"best_round.{k}", float(best[k]))
    model.metadata.update({"total_episodes": out["total_episodes"], "best_round": out["best_round"]})


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def evaluate(config_json: str, episodes: Input[Dataset], train: Input[Dataset], selected: Input[Model],
             improved: Input[Model], fraction: float, seed: int, metrics: Output[Metrics],
             page: Output[HTML], evaluation: Output[Artifact], result: Output[Artifact]):
    """SFT against Self-Improved on ground truth. `evaluation`: metrics.json and plots;
    `result`: this branch's summary row (JSON), which the report steps collect."""
    import json
    from pathlib import Path

    from efm.components.artifacts import staged
    from efm.config import RunConfig
    from efm.evaluation.report import branch_result, evaluation_page
    from efm.stages import TRAJECTORIES, evaluate_stage, seeded

    cfg = seeded(RunConfig.from_json(config_json), seed)
    with staged(evaluation.path) as work:
        ev = evaluate_stage(cfg, selected.path, improved.path, work, train.path)
    row = branch_result(cfg.domain, fraction, seed, episodes.path, train.path, improved.path, ev)
    Path(result.path).write_text(json.dumps(row, indent=1, sort_keys=True))
    for name in ("sft", "self_improved", "success_detector"):
        for k, v in row[name].items():
            if v is not None:
                metrics.log_metric(f"{name}.{k}", float(v))
    plot = Path(evaluation.path) / TRAJECTORIES
    Path(page.path).write_text(evaluation_page(row, plot if plot.is_file() else None))


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def report(result: Input[Artifact], summary: Output[Artifact], page: Output[HTML]):
    """The first report step: a report of one branch (summary.json, report.md, Figure 5)."""
    from efm.evaluation.report import update_report

    update_report(result.path, summary.path, page.path)


@dsl.component(install_kfp_package=False, base_image=EFM_IMAGE)
def report_append(previous: Input[Artifact], result: Input[Artifact], summary: Output[Artifact],
                  page: Output[HTML]):
    """A later report step: the previous step's report plus one more branch."""
    from efm.evaluation.report import update_report

    update_report(result.path, summary.path, page.path, previous_dir=previous.path)
