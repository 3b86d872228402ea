"""The table domains through every stage (in-process, tiny): the vision-language model trains on
every task family, self-improves on Block2Block, and transfers to BananaTable."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from efm.config import debug_config, practice_config
from efm.envs.tabletop import parse_instruction
from efm.stages import (
    dataset_stage,
    evaluate_stage,
    select_stage,
    self_improve_stage,
    sft_stage,
    subsample_stage,
)


@pytest.fixture(scope="module")
def cfg():
    # 12 demonstrations step in this process (fewer than 2 x MIN_ENVS_PER_WORKER envs); Stage 2
    # runs two rounds of two episodes, the evaluation one episode per env (one GIF and strip each).
    base = debug_config("tabletop")
    return base.replace(env=dataclasses.replace(base.env, max_episode_steps=30),
                        data=dataclasses.replace(base.data, num_episodes=12, validation_episodes=4),
                        sft=dataclasses.replace(base.sft, num_steps=10, eval_every=5, checkpoint_every=5,
                                                warmup_steps=2),
                        self_improve=dataclasses.replace(base.self_improve, max_episodes=4, num_envs=2),
                        eval=dataclasses.replace(base.eval, num_episodes=2, num_envs=2, plot_episodes=1))


@pytest.fixture(scope="module")
def selected(cfg, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("table")
    dataset_stage(cfg, root / "dataset", progress=False)
    manifest = subsample_stage(cfg, root / "dataset", root / "sub", seed=0)
    train = root / "sub" / manifest["fractions"]["0.5"]["path"]
    out = sft_stage(cfg, train, root / "sub" / "validation", root / "sft", progress=False)
    assert {"val/bc_loss", "val/steps_to_go_loss", "val/instruction_loss"} <= set(out["history"][-1])
    select_stage(cfg, root / "sft", root / "select")
    return root / "select", train


@pytest.mark.parametrize("domain", ["", "bananatable"])
def test_self_improve_and_evaluate(cfg, selected, domain: str, tmp_path: Path) -> None:
    practice = practice_config(cfg, domain)
    select_dir, train = selected
    si = self_improve_stage(practice, select_dir, tmp_path / "si", progress=False)
    assert si["total_episodes"] >= cfg.self_improve.max_episodes - cfg.self_improve.num_envs
    metrics = evaluate_stage(practice, select_dir, tmp_path / "si", tmp_path / "eval", train)
    assert 0.0 <= metrics["self_improved"]["success_rate"] <= 1.0
    for name in ("dataset", "sft", "self_improved"):
        assert (tmp_path / "eval" / f"episodes_{name}.gif").stat().st_size > 0
        assert (tmp_path / "eval" / f"steps_to_go_{name}.png").stat().st_size > 0
    assert json.loads((tmp_path / "eval" / "config.json").read_text())["env"]["domain"] == practice.domain


def test_practice_on_the_table_is_block2block_only(cfg) -> None:
    from efm.domains import make_env

    env = make_env(practice_config(cfg).env, 8, seed=3)
    families = {parse_instruction(text).family for text in env.reset().instruction}
    assert families == {"block2block"}
