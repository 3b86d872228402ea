"""benchmarks/block2block.py: the claim needs two fractions; results come with a figure."""

from __future__ import annotations

import json
from pathlib import Path

import block2block as bench
import pytest

from efm.config import default_config


def row(domain: str, fraction: float, sft: float, si: float, seed: int = 0) -> dict:
    return {"domain": domain, "data_fraction": fraction, "seed": seed, "sft": {"success_rate": sft},
            "self_improved": {"success_rate": si}, "self_improvement_episodes": 400, "dataset_episodes": 4000}


def test_the_claim_compares_the_smallest_fraction_with_the_largest() -> None:
    rows = [row("tabletop", 0.1, 0.05, 0.07), row("tabletop", 0.2, 0.30, 0.30), row("tabletop", 0.8, 0.13, 0.08),
            row("bananatable", 0.1, 0.02, 0.03)]
    claims = bench.claims(rows, 100)
    assert claims["self_improved_small_vs_sft_large"]["difference"] == pytest.approx(0.07 - 0.13)
    rates = {(s["domain"], s["data_fraction"], s["policy"]): s["success_rate"] for s in claims["success"]}
    assert rates["bananatable", 0.1, "sft"] == 0.02 and rates["bananatable", 0.1, "self_improved"] == 0.03
    assert claims["self_improvement_episodes_over_dataset"] == pytest.approx(0.1)
    one = bench.claims(rows[:1], 100)  # a single fraction is no comparison
    assert one["self_improved_small_vs_sft_large"] is None and len(one["success"]) == 2


def test_the_claim_is_judged_on_the_pooled_seeds_intervals() -> None:
    """7 vs 13 tasks of 100 is within the evaluation's noise; 14 vs 26 of 200 (two seeds each)
    is not, though the means are the same."""
    def verdict(rows: list[dict]) -> str:
        return bench.claims(rows, 100)["self_improved_small_vs_sft_large"]["a_beats_b"]

    one_seed = [row("tabletop", 0.1, 0.05, 0.07), row("tabletop", 0.8, 0.13, 0.08)]
    assert verdict(one_seed) == "inconclusive"
    four_seeds = one_seed * 4
    assert verdict(four_seeds) == "refuted"  # 28 of 400 against 52 of 400
    claims = bench.claims(four_seeds, 100)
    small = next(s for s in claims["success"] if (s["data_fraction"], s["policy"]) == (0.1, "self_improved"))
    assert (small["seeds"], small["successes"], small["episodes"]) == (4, 28, 400)
    assert small["wilson_95"][0] < 0.07 < small["wilson_95"][1]
    assert verdict([row("tabletop", 0.1, 0.05, 0.30), row("tabletop", 0.8, 0.13, 0.08)]) == "supported"


def test_self_improvements_effect_per_domain_and_fraction() -> None:
    rows = [row("tabletop", 0.1, 0.11, 0.02), row("bananatable", 0.1, 0.03, 0.04)]
    effect = {(e["domain"], e["data_fraction"]): e for e in bench.claims(rows, 100)["self_improvement"]}
    assert effect["tabletop", 0.1]["difference"] == pytest.approx(-0.09)
    assert effect["tabletop", 0.1]["a_beats_b"] == "refuted"  # 2 of 100 after against 11 before
    assert effect["bananatable", 0.1]["a_beats_b"] == "inconclusive"
    with pytest.raises(ValueError, match="not a count out of 100"):  # a rate no 100 tasks give
        bench.claims([row("tabletop", 0.1, 0.115, 0.02)], 100)


def test_results_come_with_block2blocks_figure_5(tmp_path) -> None:
    def full(r: dict) -> dict:
        return r | {"sft_episodes": int(r["data_fraction"] * 3900)}

    results = tmp_path / "b2b.json"
    out = {"results": [full(row("tabletop", 0.1, 0.05, 0.07)), full(row("tabletop", 0.8, 0.13, 0.08))]}
    bench.write_results(out, results)
    assert json.loads(results.read_text()) == out
    assert bench.plot_path(results).read_bytes()[:4] == b"\x89PNG"
    banana = tmp_path / "banana.json"  # no table rows: no figure
    bench.write_results({"results": [full(row("bananatable", 0.1, 0.02, 0.03))]}, banana)
    assert banana.is_file() and not bench.plot_path(banana).exists()


def test_previous_parts_measured_by_other_code_are_kept_and_warned_about(tmp_path, monkeypatch, capsys) -> None:
    config = json.loads(default_config("tabletop").to_json())
    parts = [{"data_fraction": 0.1, "seed": 0, "commit": "aaaaaaaaaaaa"},
             {"data_fraction": 0.8, "seed": 1, "commit": "bbbbbbbbbbbb"}]
    results = tmp_path / "b2b.json"
    results.write_text(json.dumps({"config": config, "results": [], "parts": parts}))
    monkeypatch.setattr(bench, "code_version", lambda: "bbbbbbbbbbbb")
    assert bench.load_previous(results, config)["parts"] == parts
    out = capsys.readouterr().out
    assert "seed 0, fraction 0.1 was measured at aaaaaaaaaaaa, this code is bbbbbbbbbbbb" in out
    assert "fraction 0.8" not in out  # measured by this code


def test_minutes_separate_the_transfer_domain_and_count_only_branches_run_whole() -> None:
    steps = ["dataset", "sft", "select", "self-improve", "evaluate", "self-improve-2", "evaluate-2"]
    tasks = {"dataset": 300.0, "sft": 1500.0, "self-improve": 240.0, "evaluate": 140.0,
             "self-improve-2": 260.0, "evaluate-2": 140.0}
    parts = [{"seed": 1, "data_fraction": 0.1, "seconds": 1800.0, "task_seconds": dict(tasks, dataset=0.0),
              "executed": steps[1:], "resumed": []},
             {"seed": 0, "data_fraction": 0.1, "seconds": 2700.0, "task_seconds": tasks, "executed": steps,
              "resumed": []},
             {"seed": 0, "data_fraction": 0.8, "seconds": 900.0, "task_seconds": {"self-improve": 240.0},
              "executed": ["self-improve", "evaluate"], "resumed": []},  # Stage 1 from the cache
             {"seed": 1, "data_fraction": 0.8, "seconds": 600.0, "task_seconds": tasks, "executed": steps,
              "resumed": ["sft"]}]  # an interrupted SFT resumed: not timed whole
    got = bench.minutes(parts)
    assert [(b["seed"], b["data_fraction"], b["run_whole"]) for b in got["branches"]] == [
        (0, 0.1, True), (0, 0.8, False), (1, 0.1, True), (1, 0.8, False)]
    first = got["branches"][0]
    assert (first["whole"], first["transfer"], first["block2block"]) == (45.0, 400 / 60, 45.0 - 400 / 60)
    assert got["branches_run_whole"] == 2
    assert got["whole"] == 75.0 and got["block2block"] == pytest.approx(75.0 - 2 * 400 / 60)


def _run(root: Path, name: str, seed: int, fraction: float, rounds: dict[str, list[tuple[int, float, float]]]) -> None:
    """A pipeline run's files that the practice counts read: the subsample step's output metadata
    and, per Self-Improvement step, its config's domain and rounds.json."""
    (root / name / "subsample").mkdir(parents=True)
    meta = {"seed": seed, "fraction": fraction, "count": 390}
    (root / name / "subsample" / "executor_output.json").write_text(
        json.dumps({"artifacts": {"train": {"artifacts": [{"name": "train", "metadata": meta}]}}}))
    for task, (domain, rows) in zip(("self-improve", "self-improve-2"), rounds.items(), strict=False):
        model = root / name / task / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text(json.dumps({"env": {"domain": domain}}))
        (model / "rounds.json").write_text(json.dumps({"best_round": len(rows) - 1, "rounds": [
            {"ended_episodes": n, "success_rate": detected, "ground_truth_success_rate": true}
            for n, detected, true in rows]}))


def test_practice_counts_come_from_each_branch_newest_run(tmp_path: Path) -> None:
    root = tmp_path / "pipeline_root"
    _run(root, "efm-experiment-2026-12-06-01-00-00-000000", 0, 0.1, {"tabletop": [(16, 0.0, 0.0)]})
    _run(root, "efm-experiment-2026-12-06-02-00-00-000000", 0, 0.1,  # the branch run again: this one counts
         {"tabletop": [(16, 0.25, 0.125), (12, 0.5, 0.0)], "bananatable": [(20, 0.0, 0.05)]})
    parts = [{"seed": 0, "data_fraction": 0.1}, {"seed": 1, "data_fraction": 0.1}]  # seed 1: no run left
    bench.add_practice(parts, tmp_path)
    assert parts[0]["run_name"] == "efm-experiment-2026-12-06-02-00-00-000000"
    assert parts[0]["practice"] == {
        "tabletop": {"rounds": 2, "episodes": 28, "detected": 4 + 6, "true": 2, "best_round": 1},
        "bananatable": {"rounds": 1, "episodes": 20, "detected": 0, "true": 1, "best_round": 0}}
    assert "practice" not in parts[1] and "run_name" not in parts[1]
    parts[0]["run_name"] = "efm-experiment-2026-12-06-01-00-00-000000"  # a recorded run name wins
    bench.add_practice(parts, tmp_path)
    assert parts[0]["practice"] == {"tabletop": {"rounds": 1, "episodes": 16, "detected": 0, "true": 0, "best_round": 0}}
