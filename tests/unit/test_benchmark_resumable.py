"""The long benchmarks' resumption and merging (benchmarks/resumable.py): rows measured in other
invocations are kept only when measured the same way, and a finished part never runs again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
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


def test_made_with_records_settings_and_refuses_others_naming_both(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "branch"
    resumable.made_with(folder, {"change": {"lr": 0.001}, "seed": 0})
    resumable.made_with(folder, {"change": {"lr": 0.001}, "seed": 0})  # the same: resumes
    with pytest.raises(SystemExit, match=r"change\.lr: 0\.001 \(this invocation: 0\.002\); seed: 0 \(this invocation: 1\)"):
        resumable.made_with(folder, {"change": {"lr": 0.002}, "seed": 1})
    with pytest.raises(SystemExit, match=r"change\.lr: 0\.001 \(this invocation: unset\)"):
        resumable.made_with(folder, {"change": {}, "seed": 0})
    before = tmp_path / "old"  # made before settings were recorded: taken as these, said so
    (before / "part").mkdir(parents=True)
    resumable.made_with(before, {"seed": 0})
    assert "no record of its settings" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        resumable.made_with(before, {"seed": 1})


def test_config_changes_are_what_differs_from_the_domains_defaults() -> None:
    cfg = default_config("pointmass")
    assert resumable.config_changes("pointmass", cfg) == {}
    steps = cfg.sft.num_steps + 1
    assert resumable.config_changes("pointmass", cfg.overridden({"sft": {"num_steps": steps}})) == {
        "sft.num_steps": steps}


def test_a_part_read_back_from_other_code_is_warned_about(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(resumable, "code_version", lambda: "aaaaaaaaaaaa")
    assert resumable.part(tmp_path / "a", lambda d: {"value": 1})["commit"] == "aaaaaaaaaaaa"
    resumable.part(tmp_path / "a", lambda d: {"value": 2})
    assert "warning" not in capsys.readouterr().out
    monkeypatch.setattr(resumable, "code_version", lambda: "bbbbbbbbbbbb")
    assert resumable.part(tmp_path / "a", lambda d: {"value": 3})["value"] == 1  # read, not an error
    assert "measured at aaaaaaaaaaaa, this code is bbbbbbbbbbbb" in capsys.readouterr().out
