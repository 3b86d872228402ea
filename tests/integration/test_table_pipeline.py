"""The table's pipeline path: with model.init="pretrain" (the table's default) `efm run` runs one
pretrain step and every branch's SFT starts from its weights, with the lineage in MLflow."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from efm import checkpoints
from efm.config import RunConfig, debug_config
from efm.pipelines.local import run_local
from efm.sft.trainer import restore_params
from efm.stages import sft_stage
from efm.tracking import UPSTREAM


def tiny_table() -> RunConfig:
    base = debug_config("tabletop")
    return base.replace(env=dataclasses.replace(base.env, max_episode_steps=30),
                        data=dataclasses.replace(base.data, num_episodes=12, validation_episodes=4),
                        model=dataclasses.replace(base.model, init="pretrain"),
                        sft=dataclasses.replace(base.sft, num_steps=4, eval_every=2, checkpoint_every=2, warmup_steps=1),
                        self_improve=dataclasses.replace(base.self_improve, max_episodes=2, num_envs=2,
                                                         transfer_domains=()),
                        eval=dataclasses.replace(base.eval, num_episodes=2, num_envs=2, plot_episodes=1))


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("table-pipeline")
    return out, run_local(tiny_table(), out, seeds=[0], progress=False)


def test_sft_starts_from_the_pretrain_step(table_run) -> None:
    out, summary = table_run
    root = out / "pipeline_root" / summary["kfp"]["run_name"]
    assert "pretrain" in summary["kfp"]["executed"]
    pretrained = root / "pretrain" / "model"
    assert json.loads((pretrained / "pretrain.json").read_text())["final_step"] == 4
    assert (pretrained / "localization.png").is_file()
    sft = root / "sft-pretrained" / "model"
    sft_cfg = json.loads((sft / "config.json").read_text())
    assert sft_cfg["model"]["init"] == "pretrain" and sft_cfg["model"]["init_path"] == str(pretrained)
    # it really started there: two Adam steps (learning rate 1e-3) from the pretrained weights,
    # where a fresh initialisation differs from them by far more than that
    start = jax.tree_util.tree_leaves(checkpoints.load_params(pretrained / "params"))
    after = jax.tree_util.tree_leaves(restore_params(sft, 2))
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(start, after, strict=True)) < 0.01
    assert summary["results"][0]["domain"] == "tabletop"


def test_mlflow_links_sft_to_its_pretraining(table_run) -> None:
    out, summary = table_run
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (result,) = summary["results"]
    exp = client.get_run(result["mlflow_run_id"]).info.experiment_id
    (pre,) = client.search_runs([exp], "tags.stage = 'pretrain'")
    (sft,) = client.search_runs([exp], "tags.stage = 'sft'")
    assert pre.info.run_id in sft.data.tags[UPSTREAM].split(",")
    assert {"localization.effector_cm", "localization.blocks_cm"} <= set(pre.data.metrics)
    assert "localization.png" in {a.path for a in client.list_artifacts(pre.info.run_id)}


def test_a_later_run_starts_from_the_earlier_pretraining(table_run, tmp_path: Path) -> None:
    """model.init_path naming an `efm pretrain` output (the Block2Block benchmark's branches,
    run in pieces, share one): its pipeline has no pretrain step (tests/unit/pipelines) and its
    SFT, the `sft` component's stage on the config alone, starts from those weights. Run here
    on the first run's data rather than as a second pipeline (ten minutes of CI)."""
    out, summary = table_run
    root = out / "pipeline_root" / summary["kfp"]["run_name"]
    pretrained = root / "pretrain" / "model"
    base = tiny_table()
    later = base.replace(model=dataclasses.replace(base.model, init_path=str(pretrained)))
    sft_stage(later, root / "subsample" / "train", root / "subsample" / "validation", tmp_path / "sft", progress=False)
    start = jax.tree_util.tree_leaves(checkpoints.load_params(pretrained / "params"))
    after = jax.tree_util.tree_leaves(restore_params(tmp_path / "sft", 2))
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(start, after, strict=True)) < 0.01
