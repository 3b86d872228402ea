"""benchmarks/block2block.py: the claim needs two fractions; results come with a figure."""

from __future__ import annotations

import json

import block2block as bench


def row(domain: str, fraction: float, sft: float, si: float) -> dict:
    return {"domain": domain, "data_fraction": fraction, "seed": 0, "sft": {"success_rate": sft},
            "self_improved": {"success_rate": si}, "self_improvement_episodes": 400, "dataset_episodes": 4000}


def test_the_claim_compares_the_smallest_fraction_with_the_largest() -> None:
    rows = [row("tabletop", 0.1, 0.05, 0.07), row("tabletop", 0.8, 0.13, 0.08), row("bananatable", 0.1, 0.02, 0.03)]
    claims = bench.claims(rows)
    assert (claims["sft_small"], claims["self_improved_small"], claims["sft_large"]) == (0.05, 0.07, 0.13)
    assert claims["self_improved_small_beats_sft_large"] is False
    assert (claims["bananatable_sft"], claims["bananatable_self_improved"]) == (0.02, 0.03)
    one = bench.claims(rows[:1])  # a single fraction is no comparison
    assert one["sft_large"] is None and one["self_improved_small_beats_sft_large"] is None


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
