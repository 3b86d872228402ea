"""The paper's pointmass effect (Section 3, Figure 4) over data fractions and seeds.

Runs the experiment pipeline under kfp local, as `efm run` does (dataset -> subsample -> SFT ->
select -> Self-Improvement -> evaluate -> report), with the default config, then prints a table and checks the claims: SFT imitates
the detours (optimal_length_ratio >= 1.6), and Self-Improvement without ground-truth reward
reaches success >= 0.95 and optimal_length_ratio <= 1.3 with at most 10% extra episodes.

    .venv/bin/python benchmarks/pointmass_paper_effect.py --out runs/bench-pointmass
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from efm.cli import load_config
from efm.evaluation.report import markdown_table
from efm.pipelines.local import run_local

RESULTS = Path(__file__).parent / "results" / "pointmass_paper_effect.json"


def checks(r: dict) -> dict[str, bool]:
    return {
        "sft_imitates_detours": r["sft"]["optimal_length_ratio"] >= 1.6,
        "si_success": r["self_improved"]["success_rate"] >= 0.95,
        "si_near_optimal": r["self_improved"]["optimal_length_ratio"] <= 1.3,
        "si_budget": r["self_improvement_episodes"] <= 0.1 * r["dataset_episodes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-pointmass")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", help="JSON overriding the defaults, as for efm --config")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    cfg = load_config("pointmass", args.config)
    cfg = cfg.replace(data=replace(cfg.data, fractions=tuple(args.fractions)))
    t0 = time.time()
    summary = run_local(cfg, args.out, args.fractions, args.seeds)
    results = [{**r, "checks": checks(r)} for r in summary["results"]]
    out = {"seconds": time.time() - t0, "config": json.loads(cfg.to_json()), "results": results,
           "all_checks_pass": all(all(r["checks"].values()) for r in results)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=1))
    print(markdown_table(results))
    for r in results:
        failed = [k for k, ok in r["checks"].items() if not ok]
        print(f"fraction {r['data_fraction']:g} seed {r['seed']}: " + (f"FAILED {failed}" if failed else "all checks pass"))
    print(f"\nall checks pass: {out['all_checks_pass']}  ({out['seconds'] / 60:.1f} min; {args.results})")


if __name__ == "__main__":
    main()
