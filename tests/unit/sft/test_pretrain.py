"""`efm pretrain`: the trainer on rendered questions, the exported params, Stage 1 starting from them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from efm.config import PretrainConfig, RunConfig, debug_config
from efm.models.efm import make_functions
from efm.models.tokenizers import make_vocabulary
from efm.models.weights import PRETRAINED_PARAMS, load_initial
from efm.sft.pretrain import SUMMARY, check_pretrainable, run_pretrain


def pretrain_config(steps: int) -> RunConfig:
    return debug_config("tabletop").replace(pretrain=PretrainConfig(
        num_steps=steps, batch_size=16, eval_every=steps // 2, warmup_steps=2, learning_rate=1e-2,
        validation_scenes=6))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pretrain")
    return out, run_pretrain(pretrain_config(30), out, progress=False)


def test_pretraining_learns_and_writes_params_and_summary(pretrained) -> None:
    out, summary = pretrained
    assert summary["final_step"] == 30 and [h["step"] for h in summary["history"]] == [15.0, 30.0]
    first, last = (h["val/locate_loss"] for h in summary["history"])
    assert last < first - 0.1  # the held-out answers get likelier (7.12 -> 6.87 nats)
    uniform = 2 * math.log(debug_config("tabletop").tokenizer.state_bins)  # two position tokens
    assert last < uniform + 0.5  # and are near the uniform answer after 30 steps, not far above it
    assert json.loads((out / SUMMARY).read_text())["final_step"] == 30
    assert [c["step"] for c in summary["localization_curve"]] == [15, 30]
    loc = summary["localization"]
    assert loc["step"] == 30 and loc["effector_cm"] > 0 and loc["blocks_cm"] > 0 and 0 <= loc["blocks_within_3cm"] <= 1


def test_stage1_starts_from_the_pretrained_params(pretrained) -> None:
    out, _ = pretrained
    cfg = debug_config("tabletop")
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, init="orbax", init_path=str(out / PRETRAINED_PARAMS)))
    fns = make_functions(cfg.model, make_vocabulary(cfg.tokenizer))
    from efm import checkpoints

    saved = checkpoints.load_params(out / PRETRAINED_PARAMS)
    scratch = jax.tree_util.tree_map(np.zeros_like, saved)
    started = load_initial(cfg.model, scratch)
    for a, b in zip(jax.tree_util.tree_leaves(started), jax.tree_util.tree_leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert fns.vocab.state is not None


def test_rerun_resumes_and_extends(pretrained, tmp_path: Path) -> None:
    out, _ = pretrained
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    summary = run_pretrain(pretrain_config(30).replace(pretrain=dataclasses.replace(
        pretrain_config(30).pretrain, num_steps=45)), copy, progress=False)
    assert [h["step"] for h in summary["history"]] == [15.0, 30.0, 45.0]
    assert [c["step"] for c in summary["localization_curve"]] == [15, 30, 45]


def test_refuses_state_models_and_other_domains() -> None:
    from efm.config import aloha_camera_config

    with pytest.raises(ValueError, match="reads no text"):
        check_pretrainable(debug_config("pointmass"))
    with pytest.raises(ValueError, match="renders table boards"):
        check_pretrainable(aloha_camera_config())
    check_pretrainable(debug_config("bananatable"))


def test_multi_object_questions_train_and_are_measured_per_object(tmp_path: Path) -> None:
    cfg = pretrain_config(4)
    cfg = cfg.replace(pretrain=dataclasses.replace(cfg.pretrain, objects_per_question=5, questions_per_scene=1))
    summary = run_pretrain(cfg, tmp_path, progress=False)
    assert summary["final_step"] == 4 and np.isfinite(summary["history"][-1]["val/locate_loss"])
    loc = summary["localization"]
    assert 0 < loc["effector_cm"] < 100 and 0 < loc["blocks_cm"] < 100


def test_grounding_loss_trains_where_names_are_found(tmp_path: Path) -> None:
    """pretrain.grounding_weight: the squared error of where each name token's query fires is
    part of the training loss and falls; refused for a variant without grounded text."""
    cfg = pretrain_config(30)
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, variant="vl-tiny-g"),
                      pretrain=dataclasses.replace(cfg.pretrain, grounding_weight=1.0))
    summary = run_pretrain(cfg, tmp_path, progress=False)
    first, last = (h["train/grounding_loss"] for h in summary["history"])
    assert np.isfinite(first) and last < first
    with pytest.raises(ValueError, match="grounding_weight"):
        check_pretrainable(pretrain_config(30).replace(
            pretrain=dataclasses.replace(pretrain_config(30).pretrain, grounding_weight=1.0)))
