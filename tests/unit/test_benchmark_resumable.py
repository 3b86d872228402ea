"""The long benchmarks' resumption and merging (benchmarks/resumable.py): rows measured in other
invocations are kept only when measured the same way, and a finished part never runs again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import resumable

from efm.config import default_config


def test_merge_replaces_rows_of_the_same_branch_and_keeps_the_others() -> None:
    def key(r: dict) -> tuple:
        return r["fraction"], r["seed"]

    previous = [{"fraction": 0.8, "seed": 0, "v": 1}, {"fraction": 0.1, "seed": 0, "v": 2}]
    new = [{"fraction": 0.8, "seed": 0, "v": 3}, {"fraction": 0.1, "seed": 1, "v": 4}]
    assert resumable.merge(previous, new, key) == [
        {"fraction": 0.1, "seed": 0, "v": 2}, {"fraction": 0.1, "seed": 1, "v": 4}, {"fraction": 0.8, "seed": 0, "v": 3}]


def test_recipe_ignores_the_branches_run_and_what_defaults_fill_in() -> None:
    config = json.loads(default_config("tabletop").to_json())
    other_fractions = {**config, "data": {**config["data"], "fractions": [0.2]}}
    recorded_before_a_field_existed = {**config, "sft": {k: v for k, v in config["sft"].items() if k != "fsdp"}}
    other_steps = {**config, "sft": {**config["sft"], "num_steps": 7}}
    base = resumable.recipe("tabletop", config)
    assert resumable.recipe("tabletop", other_fractions) == base
    assert resumable.recipe("tabletop", recorded_before_a_field_existed) == base
    assert resumable.recipe("tabletop", other_steps) != base
    moved = {**config, "model": {**config["model"], "init_path": "elsewhere"}}
    assert resumable.recipe("tabletop", moved) != base
    assert resumable.recipe("tabletop", moved, drop=(("model", "init_path"),)) == resumable.recipe(
        "tabletop", config, drop=(("model", "init_path"),))


def test_a_finished_part_is_read_not_run_again(tmp_path: Path) -> None:
    runs = []

    def run(directory: Path) -> dict:
        runs.append(directory)
        return {"value": len(runs)}

    first = resumable.part(tmp_path / "a", run)
    again = resumable.part(tmp_path / "a", run)
    assert first["value"] == again["value"] == 1 and len(runs) == 1
    assert "seconds" in again


def test_code_version_names_the_checkout_commit() -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=resumable.REPO, capture_output=True, text=True).stdout
    version = resumable.code_version()
    assert head and head.startswith(version.removesuffix("-dirty")) and len(version.removesuffix("-dirty")) == 12
