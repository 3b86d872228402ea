"""Stage 2 variants from the Stage-1 checkpoints an `efm run` selected: Self-Improvement and the
evaluation again for every branch, with a config change applied to the branch's own config, so
a Stage-2 ablation costs no Stage 1.

The branches are found through the run's MLflow lineage (OUT/mlflow.db: each select step's run
carries its data fraction, seed and kfp task); the baseline figures come from OUT/summary.json.
One directory per branch under --out; a finished branch is skipped on a rerun (resumable), and
a branch directory made with another --change or from other checkpoints is refused.

    .venv/bin/python benchmarks/stage2_variants.py --run runs/bench-pointmass \\
        --change '{"self_improve": {"learning_rate": 0.0005, "final_learning_rate": 0.00005}}' \\
        --out runs/stage2-lr5e-4 --results benchmarks/results/stage2_variants_lr5e-4.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from resumable import made_with, part

from efm.config import RunConfig
from efm.stages import evaluate_stage, self_improve_stage

POLICY_KEYS = ("success_rate", "mean_episode_length", "optimal_length_ratio")
RATIO_TARGET = 1.3  # the pointmass claim's length target (pointmass_paper_effect.py)


def selections(run: Path) -> list[dict[str, Any]]:
    """(fraction, seed, select directory) of every branch of the run, from its MLflow runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run.resolve() / 'mlflow.db'}")
    out = []
    for experiment in client.search_experiments():
        for r in client.search_runs([experiment.experiment_id], "tags.stage = 'select'"):
            tags = r.data.tags
            model = run / "pipeline_root" / tags["kfp.run_name"] / tags["kfp.task_name"] / "model"
            if model.is_dir():
                out.append({"data_fraction": float(tags["data_fraction"]), "seed": int(tags["seed"]), "select": model})
    latest = {(b["data_fraction"], b["seed"]): b for b in sorted(out, key=lambda b: str(b["select"]))}
    return sorted(latest.values(), key=lambda b: (b["data_fraction"], b["seed"]))


def branch(select: Path, change: dict[str, Any], out: Path) -> dict[str, Any]:
    """The branch's Stage 2 again, with `change`: under `out`, whose parts are keyed by fraction and
    seed only, so the change and the checkpoints are recorded there and checked on a rerun."""
    made_with(out, {"change": change, "select": str(select.resolve())})
    cfg = RunConfig.from_json((select / "config.json").read_text()).overridden(change)
    part(out / "self_improve", lambda d: {k: v for k, v in self_improve_stage(cfg, select, d, progress=False).items()
                                          if k != "rounds"})
    ev = part(out / "evaluate", lambda d: evaluate_stage(cfg, select, out / "self_improve", d))
    return {"sft": {k: ev["sft"][k] for k in POLICY_KEYS}, "self_improved": {k: ev["self_improved"][k] for k in POLICY_KEYS}}


def summary(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Mean and sample sd (ddof=1, as the README quotes the seeds' spread; none of one run) of
    `key`'s length ratio, the lowest success and the runs over the length target."""
    ratios = [r[key]["optimal_length_ratio"] for r in rows]
    return {"mean_optimal_length_ratio": float(np.mean(ratios)),
            "std_optimal_length_ratio": float(np.std(ratios, ddof=1)) if len(ratios) > 1 else None,
            "min_success_rate": float(min(r[key]["success_rate"] for r in rows)),
            f"runs_over_{RATIO_TARGET}": int(sum(x > RATIO_TARGET for x in ratios))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="an `efm run` output directory (summary.json, mlflow.db)")
    parser.add_argument("--change", required=True, help="JSON merged over each branch's config")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    change = json.loads(args.change)
    baseline = {(r["data_fraction"], r["seed"]): r for r in json.loads((args.run / "summary.json").read_text())["results"]}
    t0, rows = time.time(), []
    for b in selections(args.run):
        key = (b["data_fraction"], b["seed"])
        if key not in baseline:
            continue
        variant = branch(b["select"], change, args.out / f"f{key[0]:g}-s{key[1]}")
        rows.append({"data_fraction": key[0], "seed": key[1], "baseline": baseline[key]["self_improved"],
                     "variant": variant["self_improved"], "sft": variant["sft"]})
        print(f"fraction {key[0]:g} seed {key[1]}: length ratio {rows[-1]['baseline']['optimal_length_ratio']:.3f} "
              f"-> {rows[-1]['variant']['optimal_length_ratio']:.3f}, success "
              f"{rows[-1]['baseline']['success_rate']:.2f} -> {rows[-1]['variant']['success_rate']:.2f}", flush=True)
    result = {"run": str(args.run), "change": change, "seconds": time.time() - t0, "branches": rows,
              "baseline": summary(rows, "baseline"), "variant": summary(rows, "variant")}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("baseline", "variant")}, indent=1))


if __name__ == "__main__":
    main()
