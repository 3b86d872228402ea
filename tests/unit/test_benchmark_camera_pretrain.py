"""The camera comparison of the table's pretrainings (benchmarks/table_camera_pretrain.py) compares
the shipped pretrainings, which differ in the camera alone, and refuses ones that differ more."""

from __future__ import annotations

import copy
import json

import table_camera_pretrain as bench


def test_the_shipped_pretrainings_differ_in_the_camera_alone() -> None:
    oblique, top_down = (json.loads((run / "pretrain.json").read_text())["config"] for run in bench.DEFAULT_RUNS)
    assert (bench.camera(oblique), bench.camera(top_down)) == ("oblique", "top_down")
    assert bench.differences(bench.recipe(top_down), bench.recipe(oblique)) == []


def test_another_recipe_is_named() -> None:
    config = json.loads((bench.DEFAULT_RUNS[0] / "pretrain.json").read_text())["config"]
    other = copy.deepcopy(config)
    other["pretrain"]["num_steps"] += 1
    other["env"]["tabletop"].pop("image_height")  # an option one of them lacks does not count
    assert bench.differences(bench.recipe(other), bench.recipe(config)) == [
        f".pretrain.num_steps: {config['pretrain']['num_steps'] + 1} != {config['pretrain']['num_steps']}"]
